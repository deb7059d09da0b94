"""Hostile images through each driver in a guest: mount, walk, modify, unmount, fsck, and the
containment verdict (a FUSE driver may fail any way it likes, but never hurt the kernel)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .drivers import DRIVERS, Driver, mounted, server_fate
from .errors import GuestError
from .guest import Guest, create_overlay
from .lab import Lab
from .machine import Runstate
from .reproducers import Extracted
from .verdict import check

MNT = "/mnt/hostile"
WALK = (f"find {MNT} -xdev -print0 | head -z -n 5000 | xargs -0 -r stat >/dev/null; "
        f"find {MNT} -xdev -type f -print0 | head -z -n 2000 | xargs -0 -r -n 64 cat >/dev/null; "
        f"find {MNT} -xdev -type l -print0 | head -z -n 2000 | xargs -0 -r -n 64 readlink >/dev/null; "
        f"getfattr -R -d -m - {MNT} >/dev/null")
MODIFY = (f"cd {MNT} && echo x > .fl-new && mv .fl-new .fl-renamed && "
          "dd if=/dev/zero of=.fl-big bs=64k count=16 status=none && sync .fl-big && "
          "rm -f .fl-renamed .fl-big && sync")
MAX_DISKS = 20  # hot-plugged disks per guest before it is replaced
DEADLINES = {"mount": 60, "walk": 120, "modify": 60, "unmount": 60, "fsck": 120}


@dataclass
class Step:
    name: str
    status: int  # exit status; -1 when the step timed out or the guest went away
    said: str  # the end of its stderr
    seconds: float


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


def step(guest: Guest, driver: Driver, name: str, command: str, as_user: bool = True) -> Step:
    start = time.monotonic()
    try:
        r = guest.run(driver.wrap(command) if as_user else command, timeout=DEADLINES[name], check=False)
        status = -1 if r.timed_out else r.exit_status
        return Step(name, status, r.stderr.strip()[-300:], round(time.monotonic() - start, 2))
    except GuestError as exc:
        return Step(name, -1, str(exc)[:300], round(time.monotonic() - start, 2))


def run_steps(guest: Guest, driver: Driver, device: str, options: str, v: Verdict) -> None:
    guest.run(driver.prepare_command(MNT))
    # syzbot's options are kernel mount options: fuse2fs gets none of them
    mount = driver.mount_command(device, MNT, "" if driver.fuse else options)
    v.steps.append(step(guest, driver, "mount", mount))
    kept = driver.fuse and not driver.service  # a server whose fate the lab records
    if v.steps[-1].status != 0:
        if kept:
            v.server = server_fate(guest, MNT) or "-"
        return
    for name, command in (("walk", WALK), ("modify", MODIFY)):
        v.steps.append(step(guest, driver, name, command))
        fate = server_fate(guest, MNT) if kept and v.server == "-" else ""
        if fate:
            v.server = f"{fate} during {name}"
    unmount = step(guest, driver, "unmount", driver.unmount_command(MNT), as_user=bool(driver.user))
    if mounted(guest, MNT):
        v.stuck_mount = True
        guest.run(f"umount -l {MNT}", check=False, timeout=30)
    v.steps.append(unmount)
    if kept and v.server == "-":
        v.server = server_fate(guest, MNT) or "still running after the unmount"
    v.steps.append(step(guest, driver, "fsck", f"e2fsck -fn {device}", as_user=False))


def judge(guest: Guest, image: Path, name: str, extracted: Extracted, driver: Driver) -> Verdict:
    """Run one image through one driver on a fresh disk of `guest` and say what happened."""
    start, since = time.monotonic(), guest.console_offset()
    v = Verdict(name, driver.name, "skipped")
    if extracted.fstype and not extracted.fstype.startswith("ext"):
        v.steps.append(Step("mount", -1, f"not an ext2/3/4 image ({extracted.fstype})", 0.0))
        return v
    disk = guest.attach_disk(image, fmt="qcow2")
    run_steps(guest, driver, disk.path, extracted.mount_options, v)
    health = check(guest, since)
    v.splats, v.seconds = health.titles(), round(time.monotonic() - start, 2)
    v.evidence = health.explain()
    v.guest = "lost" if health.lost else "answers"
    if driver.fuse:
        v.verdict = "breach" if (health.damaged or v.stuck_mount) else "contained"
    else:
        v.verdict = "finding" if health.damaged else "clean"
    return v


def usable_drivers(lab: Lab) -> list[str]:
    """Every driver the lab's stack can run (fuse4fs-service only with a service stack)."""
    from . import capabilities

    caps = capabilities.of(lab)
    return [name for name, d in DRIVERS.items() if not d.needs or caps.has(d.needs)]


class ImageRunner:
    """Many images through one guest at a time; a damaged guest is replaced before the next."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab, self.workdir = lab, workdir
        self.guest: Guest | None = None
        self.count = 0

    def _fresh_guest(self) -> Guest:
        """The current guest, or a new one after damage (or when its PCI slots run low)."""
        if self.guest is None or self.guest.state is not Runstate.READY or len(self.guest.disks) >= MAX_DISKS:
            if self.guest is not None:
                self.guest.shutdown()
            self.guest = self.lab.guest()
        return self.guest

    def run(self, items: list[Extracted], drivers: list[str],
            said: Callable[[Verdict], None] | None = None) -> Iterator[Verdict]:
        try:
            for item in items:
                raw = self.workdir / f"image{self.count}.raw"
                raw.write_bytes(item.image)  # bytes only: the host never parses or mounts it
                name = f"{item.source.name}#{item.index}"
                for driver in drivers:
                    self.count += 1
                    overlay = self.workdir / f"disk{self.count}.qcow2"
                    create_overlay(overlay, raw, fmt="raw")
                    verdict = judge(self._fresh_guest(), overlay, name, item, DRIVERS[driver])
                    if said:
                        said(verdict)
                    yield verdict
        finally:
            if self.guest is not None:
                self.guest.shutdown()
