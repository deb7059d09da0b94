"""Hostile images through each driver in a guest: mount, walk, modify, unmount, fsck, and the
containment verdict (a FUSE driver may fail any way it likes, but never hurt the kernel)."""

from __future__ import annotations

import concurrent.futures
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from pytest_fuselab.errors import GuestError
from pytest_fuselab.guest.protocol import JudgeAnswer, JudgeSpec, StepRecord
from pytest_fuselab.judge import partitions, splats
from pytest_fuselab.judge.drivers import DRIVERS, Driver
from pytest_fuselab.judge.health import Health, check
from pytest_fuselab.lab import Lab
from pytest_fuselab.reproducers import Extracted
from pytest_fuselab.vm.guest import Disk, Guest
from pytest_fuselab.vm.machine import Runstate

MNT = "/mnt/hostile"  # each driver mounts at MNT-<driver>
MAX_DISKS = 56  # hot-plugged disks per guest before it is replaced (PCI slots: qemu.bridge_args)
DEADLINES = {"mount": 60, "walk": 120, "modify": 60, "unmount": 60, "fsck": 120}
STOP = "|".join(pattern.pattern for pattern, _ in splats.STARTS)  # a splat ends a batch
T = TypeVar("T")
UNJUDGED = "unjudged"  # the batch stopped before this driver: judge it on a fresh guest


Step = StepRecord  # one step of a verdict, as the guest's judge sent it (or the host's "judge" step)


@dataclass
class Verdict:
    image: str
    driver: str
    verdict: str  # contained | breach (FUSE) ; clean | finding (kernel) ; skipped
    steps: list[Step] = field(default_factory=list)
    splats: list[str] = field(default_factory=list)
    server: str = "-"  # the FUSE server's fate
    guest: str = "answers"
    stuck_mount: bool = False  # the mount could only be detached lazily
    evidence: str = ""  # splat excerpts and what else the lab saw, for reports
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def decide(self, driver: Driver, health: Health) -> None:
        self.splats, self.evidence = health.titles(), health.explain()
        self.guest = "lost" if health.lost else "answers"
        if driver.fuse:
            self.verdict = "breach" if (health.damaged or self.stuck_mount) else "contained"
        else:
            self.verdict = "finding" if health.damaged else "clean"


def mountpoint(driver: Driver) -> str:
    return f"{MNT}-{driver.name}"


def not_ext4(extracted: Extracted) -> bool:
    return bool(extracted.fstype) and not extracted.fstype.startswith("ext")


def skipped(extracted: Extracted, name: str, drivers: list[Driver]) -> list[Verdict]:
    return [Verdict(name, d.name, "skipped", [Step("mount", -1, f"not an ext2/3/4 image ({extracted.fstype})", 0.0)])
            for d in drivers]


def judge(guest: Guest, disk_file: Path, name: str, extracted: Extracted, driver: Driver) -> Verdict:
    """Run one image through one driver on a fresh disk of `guest` (written to `disk_file`: the
    image in a partition, as in a batch) and say what happened."""
    if not_ext4(extracted):
        return skipped(extracted, name, [driver])[0]
    start = time.monotonic()
    partitions.write_disk(disk_file, extracted.image, 1)  # bytes only: the host never parses or mounts it
    disks = guest.attach_partitions(disk_file, 1)
    plugged = time.monotonic() - start
    verdict = judge_drivers(guest, disks, name, extracted, [driver])[0]
    verdict.seconds = round(verdict.seconds + plugged, 2)
    return verdict


def judge_drivers(guest: Guest, disks: list[Disk], name: str, extracted: Extracted,
                  drivers: list[Driver], together: bool = False) -> list[Verdict]:
    """Each driver on its own fresh copy of one image (disks[i], plugged into `guest`), all in
    one call of the guest's judge, one after the other or `together` (at once).  Drivers the judge cannot
    vouch for are left UNJUDGED: one after the other, those after a splat (their kernel was
    already hurt); together, all of them when anything went wrong (no one to blame).  Callers
    skip images that are not ext2/3/4 before plugging disks for them."""
    start, since = time.monotonic(), guest.console_offset()
    spec = JudgeSpec(deadlines=dict(DEADLINES), stop=STOP, together=together, drivers=[
        d.judge_spec(disk.path, mountpoint(d), "" if d.fuse else extracted.mount_options)  # syzbot's options are
        for d, disk in zip(drivers, disks, strict=True)])                                   # kernel mount options
    answer, failure = _ask(guest, spec)
    if answer is None:
        return _unanswered(guest, since, name, drivers, failure, time.monotonic() - start)
    records = answer.verdicts
    verdicts = [Verdict(name, d.name, UNJUDGED) for d in drivers]
    if answer.together and (answer.hurt or any(r.error for r in records) or guest.splats(since)):
        guest.machine.state = Runstate.CRASHED
        return verdicts
    attributed = set()
    for v, d, record in zip(verdicts, drivers, records, strict=False):  # the answer's names match (_ask)
        v.steps = list(record.steps)
        v.server, v.stuck_mount, v.seconds = record.server, record.stuck_mount, record.seconds
        health = Health(splats=splats.scan(record.kmsg), stuck=record.stuck)
        attributed |= {s.title for s in health.splats}
        v.decide(d, health)
    late = [s for s in guest.splats(since) if s.title not in attributed]  # printed after the judge read the log
    if late and records:
        i = len(records) - 1
        v = verdicts[i]
        v.decide(drivers[i], Health(splats=splats.scan(records[i].kmsg) + late, stuck=records[i].stuck))
    if any(v.splats for v in verdicts):
        guest.machine.state = Runstate.CRASHED  # never handed out again
    busy = max((v.seconds for v in verdicts), default=0.0) if together else sum(v.seconds for v in verdicts)
    overhead = (time.monotonic() - start - busy) / (1 if together else max(1, len(records)))
    for v in verdicts[:len(records)]:
        v.seconds = round(v.seconds + overhead, 2)  # the judge's start and end, shared out
    return verdicts


def _ask(guest: Guest, spec: JudgeSpec) -> tuple[JudgeAnswer | None, str]:
    """The judge's answer to `spec`, checked (protocol.JudgeAnswer), or None and why there is none."""
    most = sum(DEADLINES.values()) * (1 if spec.together else len(spec.drivers))  # the steps' deadlines bound it
    try:
        answer = guest.judge(spec, timeout=most + 60)
    except GuestError as exc:  # the guest went away, or its answer broke the protocol
        return None, f"the guest's judge gave no verdict: {exc}"
    if answer is None:
        return None, f"the guest's judge failed: no answer within {most + 60} s (killed)"
    if answer.error:
        return None, f"the guest's judge failed: {answer.error[-300:]}"
    erred = next((r for r in answer.verdicts if r.error), None)
    if erred is not None and not answer.together:  # together, a driver's failure leaves them all unjudged
        return None, f"the guest's judge failed on {erred.name}: {erred.error[-300:]}"
    return answer, ""


def _unanswered(guest: Guest, since: int, name: str, drivers: list[Driver], failure: str,
                seconds: float) -> list[Verdict]:
    """The judge never answered: with one driver, the guest's health is its verdict; with
    several, none can be blamed, so all are left for fresh guests one by one."""
    health = check(guest, since)
    guest.machine.state = Runstate.CRASHED
    if len(drivers) > 1:
        return [Verdict(name, d.name, UNJUDGED) for d in drivers]
    v = Verdict(name, drivers[0].name, "breach", [Step("judge", -1, failure[-300:], round(seconds, 2))],
                seconds=round(seconds, 2))
    v.decide(drivers[0], health)
    if not health.damaged:  # a judge that cannot finish is a failure to contain, shown with its words
        v.verdict = "breach" if drivers[0].fuse else "finding"
        v.evidence = failure
    return [v]


def usable_drivers(lab: Lab) -> list[str]:
    """Every driver the lab's stack can run (fuse4fs-service only with a service stack)."""
    from pytest_fuselab import capabilities

    caps = capabilities.of(lab)
    return [name for name, d in DRIVERS.items() if not d.needs or caps.has(d.needs)]


class ImageRunner:
    """Many images through one guest at a time; a damaged guest is replaced before the next.
    Each image is one disk (a partition per driver), plugged while the image before it is judged."""

    def __init__(self, lab: Lab, workdir: Path, together: bool = True) -> None:
        self.lab, self.workdir, self.together = lab, workdir, together
        self.guest: Guest | None = None
        self.ahead: tuple[Extracted, Guest, Disk] | None = None  # the next image's disk, plugged
        self.count = itertools.count(1)
        workdir.mkdir(parents=True, exist_ok=True)

    def _fresh_guest(self, disks: int) -> Guest:
        """The current guest, or a new one after damage (or when its PCI slots run low)."""
        if (self.guest is None or self.guest.state is not Runstate.READY
                or len(self.guest.disks) + disks > MAX_DISKS):
            if self.guest is not None:
                self.guest.shutdown()
            self.guest = self.lab.guest()
        return self.guest

    def _disk_file(self) -> Path:
        return self.workdir / f"disk{next(self.count)}.raw"

    def judge_item(self, item: Extracted, drivers: list[str], after: Extracted | None = None) -> list[Verdict]:
        """All `drivers` on one image: one batch, then alone on fresh guests what it left.  The
        disk of `after` (the next image) is plugged while this batch is judged, so the guest's
        hot-plug work fills the time its CPUs wait on the batch's slowest driver."""
        name = f"{item.source.name}#{item.index}"
        chosen = [DRIVERS[d] for d in drivers]
        if not_ext4(item):
            return skipped(item, name, chosen)
        disk = self._take_ahead(item)
        try:
            guest = self._fresh_guest(0 if disk else 1)
            disk = disk or self._plug(guest, item, len(chosen))
            disks = guest.partitions_of(disk, len(chosen))
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                batch = pool.submit(judge_drivers, guest, disks, name, item, chosen, self.together)
                if after is not None and not not_ext4(after) and len(guest.disks) < MAX_DISKS:
                    self.ahead = (after, guest, self._plug(guest, after, len(chosen)))
                verdicts = batch.result()
        except GuestError as exc:  # the guest never saw its disks: not the image's doing, yet
            self.lab.progress(f"{name}: {exc}; judging it again on a fresh guest")
            assert self.guest is not None
            self.guest.machine.state = Runstate.CRASHED
            verdicts = [Verdict(name, d.name, UNJUDGED) for d in chosen]
        for i, v in enumerate(verdicts):
            if v.verdict == UNJUDGED:
                alone = self._disk_file()
                verdicts[i] = judge(self._fresh_guest(1), alone, name, item, chosen[i])
                alone.unlink()
        if disk is not None:
            disk.host_path.unlink(missing_ok=True)
        return verdicts

    def _plug(self, guest: Guest, item: Extracted, copies: int) -> Disk:
        """A disk with a copy of `item` per driver, a partition each, plugged into `guest` (the
        host writes the image's bytes, it never parses them)."""
        path = self._disk_file()
        partitions.write_disk(path, item.image, copies)
        return guest.plug_partitioned(path)

    def _take_ahead(self, item: Extracted | None) -> Disk | None:
        """The disk plugged ahead for `item`, if its guest is still the one in use."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return None
        planned, guest, disk = ahead
        if planned is item and guest is self.guest and guest.state is Runstate.READY:
            return disk
        disk.host_path.unlink(missing_ok=True)
        return None

    def run(self, items: list[Extracted], drivers: list[str],
            said: Callable[[Verdict], None] | None = None) -> Iterator[Verdict]:
        try:
            for item, after in with_next(items):
                for verdict in self.judge_item(item, drivers, after):
                    if said:
                        said(verdict)
                    yield verdict
        finally:
            self.close()

    def close(self) -> None:
        self._take_ahead(None)
        if self.guest is not None:
            self.guest.shutdown()
            self.guest = None


def with_next(items: list[T]) -> list[tuple[T, T | None]]:
    """Each of `items` with the one after it (None after the last)."""
    return list(zip(items, [*items[1:], None], strict=True))


def judge_images(lab: Lab, workdir: Path, items: list[Extracted], drivers: list[str],
                 guests: int = 1) -> list[Verdict]:
    """Every item through `drivers`, spread over `guests` guests running side by side;
    verdicts in the order of `items`."""
    runners = [ImageRunner(lab, workdir / f"runner{i}") for i in range(guests)]
    shares = [list(range(len(items)))[i::guests] for i in range(guests)]
    results: dict[int, list[Verdict]] = {}

    def work(runner: ImageRunner, share: list[int]) -> None:
        try:
            for i, after in with_next(share):
                results[i] = runner.judge_item(items[i], drivers, None if after is None else items[after])
        finally:
            runner.close()

    with concurrent.futures.ThreadPoolExecutor(guests) as pool:
        for future in [pool.submit(work, r, share) for r, share in zip(runners, shares, strict=True)]:
            future.result()
    return [v for i in range(len(items)) for v in results[i]]
