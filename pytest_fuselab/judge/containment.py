"""Hostile images through each driver in a guest: mount, walk, modify, unmount, fsck, and the
containment verdict (a FUSE driver may fail any way it likes, but never hurt the kernel).

Every image has a wall-clock budget that the host enforces, whatever the guest does: the guest's
judge is told it (and stops itself in time), the host stops waiting at its end.  A verdict says
how far the image got (`reached`), why a mount was refused, whether a server hung; a failure of
the lab itself (no answer, a guest lost without a splat, a broken protocol) is the verdict
"error", never a breach or a finding.  Drivers are judged again alone, on fresh guests, only
when the kernel was hurt and no one can be blamed, and only within the image's budget.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pytest_fuselab.errors import GuestError, GuestLost, GuestTimeout
from pytest_fuselab.guest import judge as guest_judge
from pytest_fuselab.guest.protocol import DriverRecord, JudgeAnswer, JudgeSpec
from pytest_fuselab.guest.tasks import STUCK_GRACE
from pytest_fuselab.judge import partitions, splats
from pytest_fuselab.judge.drivers import DRIVERS, Driver
from pytest_fuselab.judge.filesystems import is_ext, not_judged
from pytest_fuselab.judge.health import Health, check
from pytest_fuselab.lab import Lab
from pytest_fuselab.judge.verdict import BUDGET as BUDGET, ERROR as ERROR, UNJUDGED as UNJUDGED, Step as Step
from pytest_fuselab.judge.verdict import Budget, Key, Verdict as Verdict, failed, item_names, name_of, take_record
from pytest_fuselab.reproducers import Extracted
from pytest_fuselab.text import printable
from pytest_fuselab.vm.guest import Disk, Guest
from pytest_fuselab.vm.machine import Runstate

MNT = "/mnt/hostile"  # each driver mounts at MNT-<driver>
MAX_DISKS = 56  # hot-plugged disks per guest before it is replaced (PCI slots: qemu.bridge_args)
DEADLINES = {"mount": 60, "walk": 120, "modify": 60, "unmount": 60, "fsck": 120}
HEALTH_RESERVE = 12.0  # kept back from the judge: checking a guest that did not answer (ping, D tasks)
# the guest's judge gets this much less than the agent's deadline: past its budget it may wait GRACE
# for a driver's process before killing it, then checks for tasks in D state, then answers
GUEST_MARGIN = guest_judge.GRACE + STUCK_GRACE + 5.0
CHANNEL_MARGIN = 3.0  # the host waits this long past the agent's own deadline
ALONE_FLOOR = 20.0  # with less budget left, a driver is not judged again alone (restore, plug, judge)
STOP = "|".join(pattern.pattern for pattern, _ in splats.STARTS)  # a splat ends a batch
T = TypeVar("T")
Watch = Callable[[str, str], None]  # (image, what is being done): for progress lines


def mountpoint(driver: Driver) -> str:
    return f"{MNT}-{driver.name}"


def not_ext4(extracted: Extracted) -> bool:
    return not is_ext(extracted.fstype)


def skipped(extracted: Extracted, name: str, drivers: list[Driver]) -> list[Verdict]:
    """"n/a" for each of `drivers` that does not take this image (FUSE drivers serve ext2/3/4 only;
    the kernel's, every filesystem it mounts: filesystems.py); no verdict for the others."""
    return [Verdict(name, d.name, "n/a", evidence=why) for d in drivers
            if (why := not_judged(extracted.fstype, d.fuse))]




def judge(guest: Guest, disk_file: Path, name: str, extracted: Extracted, driver: Driver,
          budget: Budget | None = None) -> Verdict:
    """Run one image through one driver on a fresh disk of `guest` (written to `disk_file`: the
    image in a partition, as in a batch), within `budget` (BUDGET from now), and say what happened;
    the disk is unplugged again once judged."""
    na = skipped(extracted, name, [driver])
    if na:
        return na[0]
    budget = budget or Budget()
    start = time.monotonic()
    partitions.write_disk(disk_file, extracted.sparse, 1)  # bytes only: the host never parses or mounts it
    disk = guest.plug_partitioned(disk_file)
    verdicts: list[Verdict] = []
    try:
        parts = guest.partitions_of(disk, 1, timeout=min(30.0, max(1.0, budget.left())))
        plugged = time.monotonic() - start
        verdicts = judge_drivers(guest, parts, name, extracted, [driver], budget=budget)
    finally:
        release(guest, disk, verdicts)
    verdict = verdicts[0]
    if verdict.verdict == UNJUDGED:
        verdict = failed(name, driver.name, "the guest's judge sent no record for it", budget.used(),
                         evidence=verdict.evidence)
    verdict.seconds = round(verdict.seconds + plugged, 2)
    return verdict


def release(guest: Guest, disk: Disk, verdicts: list[Verdict]) -> None:
    """Unplug a judged image's disk from a guest that stays in use (not under a mount that could not be removed)."""
    if guest.state is Runstate.READY and not any(v.stuck_mount for v in verdicts):
        guest.unplug(disk)


def judge_drivers(guest: Guest, disks: list[Disk], name: str, extracted: Extracted,
                  drivers: list[Driver], together: bool = False, budget: Budget | None = None) -> list[Verdict]:
    """Each driver on its own fresh copy of one image (disks[i], plugged into `guest`), all in
    one call of the guest's judge, one after the other or `together` (at once), within `budget`.
    Drivers left UNJUDGED are for fresh guests: one after the other, those after a splat (never
    run: the kernel was already hurt); together, all of them when the kernel was hurt (no one to
    blame).  Callers leave out the drivers that do not take the image (skipped: "n/a")."""
    budget = budget or Budget()
    start, since = time.monotonic(), guest.console_offset()
    timeout = budget.left() - HEALTH_RESERVE - CHANNEL_MARGIN  # the agent kills the judge then
    if timeout - GUEST_MARGIN < 5:
        why = f"the image's budget ({budget.seconds:g} s) was spent before its drivers could be judged"
        return [failed(name, d.name, why, budget.used()) for d in drivers]
    seconds = round(timeout - GUEST_MARGIN, 1)  # the guest's judge stops itself then, and answers
    spec = JudgeSpec(deadlines={s: min(float(t), seconds) for s, t in DEADLINES.items()}, stop=STOP,
                     together=together, budget=seconds, drivers=[
                         d.judge_spec(disk.path, mountpoint(d), "" if d.fuse else extracted.mount_options,
                                      extracted.fstype)
                         for d, disk in zip(drivers, disks, strict=True)])  # syzbot's options: kernel mount options
    answer, failure, timed_out = _ask(guest, spec, timeout)
    if answer is None:
        return _unanswered(guest, since, name, drivers, failure, time.monotonic() - start, timed_out)
    verdicts = _verdicts(guest, since, name, drivers, answer)
    ran = len(answer.verdicts)
    busy = max((v.seconds for v in verdicts), default=0.0) if together else sum(v.seconds for v in verdicts[:ran])
    overhead = (time.monotonic() - start - busy) / (1 if together else max(1, ran))
    for v in verdicts[:ran]:
        v.seconds = round(v.seconds + overhead, 2)  # the judge's start and end, shared out
    return verdicts


def _ask(guest: Guest, spec: JudgeSpec, timeout: float) -> tuple[JudgeAnswer | None, str, bool]:
    """The judge's answer to `spec` (checked: protocol.JudgeAnswer), or None, why, and whether time ran out."""
    try:
        answer = guest.judge(spec, timeout=timeout, wait=timeout + CHANNEL_MARGIN)
    except GuestError as exc:  # the guest went away or stayed silent, or its answer broke the protocol
        return None, f"the guest's judge gave no verdict: {exc}", isinstance(exc, GuestTimeout)
    if answer is None:
        return None, f"the guest's judge gave no answer within {timeout:.0f} s (killed)", True
    if answer.error:
        return None, f"the guest's judge failed: {answer.error[-300:]}", False
    return answer, "", False


def _verdicts(guest: Guest, since: int, name: str, drivers: list[Driver], answer: JudgeAnswer) -> list[Verdict]:
    """The verdicts of an answer: each record judged on its own kernel log; a driver the judge failed
    on is a lab error; together, a hurt kernel leaves every driver UNJUDGED (no one to blame)."""
    records, console = answer.verdicts, guest.splats(since)
    verdicts = [Verdict(name, d.name, UNJUDGED) for d in drivers]
    if answer.together:
        seen = splats.scan(answer.kmsg) + console
        if seen or answer.stuck or (answer.hurt and not any(r.error for r in records)):
            guest.machine.state = Runstate.CRASHED
            why = Health(splats=seen, stuck=answer.stuck).explain() or "the guest's judge says the kernel was hurt"
            for v in verdicts:
                v.evidence = f"judged together, the kernel was hurt and no driver can be blamed:\n{why}"
            return verdicts
    attributed: set[str] = set()
    for i, (d, record) in enumerate(zip(drivers, records, strict=False)):  # the answer's names match (_ask)
        if record.error:
            verdicts[i] = failed(name, d.name, f"the guest's judge failed on {d.name}: {record.error[-300:]}",
                                 record.seconds)
            continue
        take_record(verdicts[i], record)
        health = Health(splats=splats.scan(record.kmsg) + livelocked(record), stuck=record.stuck)
        attributed |= {s.title for s in health.splats}
        verdicts[i].decide(d, health)
    late = [s for s in console if s.title not in attributed]  # printed after the judge read the log
    if late and records and not records[-1].error:
        i = len(records) - 1
        verdicts[i].decide(drivers[i], Health(splats=splats.scan(records[i].kmsg) + late, stuck=records[i].stuck))
    if any(v.splats for v in verdicts):
        guest.machine.state = Runstate.CRASHED  # never handed out again
    return verdicts


def livelocked(record: DriverRecord) -> list[splats.Splat]:
    """A task the guest's judge saw never return from a step, not in D state: a kernel finding of its own."""
    if not record.livelock:
        return []
    frames = re.findall(r"\] ([A-Za-z_][\w.]*)\+0x", record.livelock)
    title = f"livelock in {frames[0]}" if frames else "livelock: a task never returned"
    return [splats.Splat(title, record.livelock, 0)]


def _unanswered(guest: Guest, since: int, name: str, drivers: list[Driver], failure: str, seconds: float,
                timed_out: bool) -> list[Verdict]:
    """The judge never answered.  A kernel that was hurt: the one driver's finding or breach, or with
    several, no one to blame (UNJUDGED); otherwise the lab's error, never a verdict on the image."""
    health = check(guest, since, answer_within=5.0)
    guest.machine.state = Runstate.CRASHED
    hung = f"no verdict within the image's budget ({seconds:.0f} s)" if timed_out else ""
    if not (health.splats or health.stuck):
        return [failed(name, d.name, failure, seconds, hung, health.explain()) for d in drivers]
    if len(drivers) > 1:
        return [Verdict(name, d.name, UNJUDGED, evidence=f"{failure}\n\n{health.explain()}") for d in drivers]
    v = Verdict(name, drivers[0].name, "", [Step("judge", -1, failure[-300:], round(seconds, 2))],
                seconds=round(seconds, 2), hung=hung)
    v.decide(drivers[0], health)
    v.evidence = f"{failure}\n\n{v.evidence}"
    return [v]


def usable_drivers(lab: Lab) -> list[str]:
    """Every driver the lab's stack can run (fuse4fs-service only with a service stack)."""
    from pytest_fuselab import capabilities

    caps = capabilities.of(lab)
    return [name for name, d in DRIVERS.items() if not d.needs or caps.has(d.needs)]


LEFT_BEHIND = "still running"  # a server's fate that says it outlived its unmount


def retire_if_left_behind(guest: Guest, verdicts: list[Verdict]) -> None:
    """A hung server, or one still running after its unmount, may go on eating the guest's CPU
    and holding its mountpoint: the next image gets a fresh guest (a restore costs about a second)."""
    if any(v.hung or v.server.startswith(LEFT_BEHIND) for v in verdicts) and guest.state is Runstate.READY:
        guest.machine.state = Runstate.CRASHED  # not handed out again


class ImageRunner:
    """Many images through one guest at a time; a damaged guest is replaced before the next.
    Each image is one disk (a partition per driver), plugged while the image before it is judged
    and unplugged once judged; each image gets `budget` seconds (the lab's setting)."""

    def __init__(self, lab: Lab, workdir: Path, together: bool = True, budget: float | None = None,
                 watch: Watch | None = None) -> None:
        self.lab, self.workdir, self.together = lab, workdir, together
        self.budget = budget or float(getattr(lab.settings, "budget", BUDGET))
        self.watch: Watch = watch or (lambda image, what: None)
        self.guest: Guest | None = None
        self.ahead: tuple[Extracted, Guest, Disk, int] | None = None  # the next image's disk (copies), plugged
        self.count = itertools.count(1)
        self.stopped = False  # stop(): no guest is made any more
        workdir.mkdir(parents=True, exist_ok=True)

    def _fresh_guest(self, disks: int) -> Guest:
        """The current guest, or a new one after damage (or when its PCI slots run low)."""
        if self.stopped:
            raise GuestLost("the run was stopped")
        if self.guest is not None and self.guest.state is Runstate.READY:
            self.guest.reap_unplugged()
        if (self.guest is None or self.guest.state is not Runstate.READY
                or len(self.guest.disks) + disks > MAX_DISKS):
            if self.guest is not None:
                self.guest.shutdown()
            self.guest = self.lab.guest()
        return self.guest

    def _disk_file(self) -> Path:
        return self.workdir / f"disk{next(self.count)}.raw"

    def judge_item(self, item: Extracted, drivers: list[str], after: Extracted | None = None,
                   name: str | None = None) -> list[Verdict]:
        """All `drivers` on one image within its budget: one batch, then alone on fresh guests
        the drivers it could not blame.  The disk of `after` (the next image) is plugged while
        this batch is judged, so the guest's hot-plug work fills the time its CPUs wait."""
        name = name or f"{item.source.name}#{item.index}"
        chosen = [DRIVERS[d] for d in drivers]
        na = {v.driver: v for v in skipped(item, name, chosen)}
        if na:  # "n/a" for drivers that do not take this image, the others judged
            judged = iter(self.judge_item(item, [d for d in drivers if d not in na], after, name) if len(na) < len(chosen) else [])
            return [na.get(d) or next(judged) for d in drivers]
        budget = Budget(self.budget)
        self.watch(name, f"{len(chosen)} drivers" if len(chosen) > 1 else chosen[0].name)
        verdicts = self._batch(item, name, chosen, after, budget)
        for i, v in enumerate(verdicts):
            if v.verdict == UNJUDGED:
                verdicts[i] = self._alone(item, name, chosen[i], budget, v.evidence)
        return verdicts

    def _batch(self, item: Extracted, name: str, chosen: list[Driver], after: Extracted | None,
               budget: Budget) -> list[Verdict]:
        disk = self._take_ahead(item, len(chosen))
        verdicts: list[Verdict] = []
        guest = None
        try:
            guest = self._fresh_guest(0 if disk else 1)
            disk = disk or self._plug(guest, item, len(chosen))
            disks = guest.partitions_of(disk, len(chosen), timeout=min(30.0, max(1.0, budget.left())))
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                batch = pool.submit(judge_drivers, guest, disks, name, item, chosen, self.together, budget)
                try:
                    if after is not None and not not_ext4(after) and len(guest.disks) < MAX_DISKS:
                        self.ahead = (after, guest, self._plug(guest, after, len(chosen)), len(chosen))
                    verdicts = batch.result()
                except BaseException:  # a stopped run, a failed plug: the batch's thread must end now
                    guest.kill()
                    raise
            retire_if_left_behind(guest, verdicts)
        except GuestError as exc:  # the guest never saw its disks: not the image's doing, yet
            self.lab.progress(printable(f"{name}: {exc}; judging it again on a fresh guest", lines=False))
            if guest is not None:
                guest.machine.state = Runstate.CRASHED
            verdicts = [Verdict(name, d.name, UNJUDGED, evidence=f"the lab could not plug the image's disk: {exc}")
                        for d in chosen]
        finally:
            if disk is not None and guest is not None:
                release(guest, disk, verdicts)
                disk.host_path.unlink(missing_ok=True)
        return verdicts

    def _alone(self, item: Extracted, name: str, driver: Driver, budget: Budget, evidence: str) -> Verdict:
        """`driver` alone on a fresh guest, in what is left of the image's budget (a lab error if too little)."""
        if budget.left() < ALONE_FLOOR:
            return failed(name, driver.name, f"the image's budget ({budget.seconds:g} s) was spent before "
                          f"{driver.name} could be judged alone", budget.used(), evidence=evidence)
        self.watch(name, f"{driver.name} alone")
        path = self._disk_file()
        try:
            guest = self._fresh_guest(1)
            verdict = judge(guest, path, name, item, driver, budget)
            retire_if_left_behind(guest, [verdict])
            return verdict
        except GuestError as exc:
            if self.guest is not None:
                self.guest.machine.state = Runstate.CRASHED
            return failed(name, driver.name, f"the lab could not plug the image's disk: {exc}", budget.used())
        finally:
            path.unlink(missing_ok=True)

    def _plug(self, guest: Guest, item: Extracted, copies: int) -> Disk:
        """A disk with a copy of `item` per driver, a partition each, plugged into `guest` (the
        host writes the image's bytes, it never parses them)."""
        path = self._disk_file()
        partitions.write_disk(path, item.sparse, copies)
        return guest.plug_partitioned(path)

    def _take_ahead(self, item: Extracted | None, copies: int = 0) -> Disk | None:
        """The disk plugged ahead for `item`, if its guest is still the one in use and it holds
        `copies` partitions (a copy per driver that takes the image)."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return None
        planned, guest, disk, made = ahead
        if planned is item and made == copies and guest is self.guest and guest.state is Runstate.READY:
            return disk
        if guest.state is Runstate.READY:
            guest.unplug(disk)
        disk.host_path.unlink(missing_ok=True)
        return None

    def run(self, items: Iterable[Extracted], drivers: list[str], said: Callable[[Verdict], None] | None = None,
            names: dict[Key, str] | None = None) -> Iterator[Verdict]:
        """Each item's verdicts, in order; `items` may be lazy (one image held, and the next one
        plugged ahead); `names` from verdict.item_names (made here when `items` is a list)."""
        if names is None and isinstance(items, list):
            names = item_names(items)
        try:
            for item, after in with_next(items):
                for verdict in self.judge_item(item, drivers, after, name_of(names, item)):
                    if said:
                        said(verdict)
                    yield verdict
        finally:
            self.close()

    def stop(self) -> None:
        """From another thread: end the run at once (its guest killed, no new one made)."""
        self.stopped = True
        guest = self.guest
        if guest is not None:
            guest.kill()

    def close(self) -> None:
        self._take_ahead(None)
        if self.guest is not None:
            self.guest.shutdown()
            self.guest = None


def with_next(items: Iterable[T]) -> Iterator[tuple[T, T | None]]:
    """Each of `items` with the one after it (None after the last), taking one item ahead only."""
    it = iter(items)
    for current in it:
        for after in it:
            yield current, after
            current = after
        yield current, None
