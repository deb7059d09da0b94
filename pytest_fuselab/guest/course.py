"""One driver's course through the judge's steps, within the request's budget (guest, stdlib only).

mount, walk, modify (not for a read-only filesystem), unmount, then the filesystem's own checker
("no checker" when it has none).  The record says how far the driver got (`reached`: refused,
mounted, walked, modified, unmounted, checked: the last step of an unbroken run of steps that
each ran to its end), the refusal's first meaningful words, the walk's counts, a FUSE server
found hung (its connection aborted, stalls.py) and a task that never returned.  When the budget
runs out, the course stops: the FUSE connection is aborted, the mount detached, and each step
not run is recorded as timed out.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import pwd
import signal
import subprocess
import time

from pytest_fuselab.guest import fuseserver, stalls
from pytest_fuselab.guest.fates import fate_text
from pytest_fuselab.guest.protocol import DriverRecord, DriverSpec, StepRecord
from pytest_fuselab.guest.steps import StepFailed, command_step, in_child, modify, run, run_shell, walk

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Go = Callable[[float, stalls.Watch, dict[str, object]], StepRecord]  # a step, given its deadline, watch, told

MNT_DETACH = 2
REACH = {"mount": "mounted", "walk": "walked", "modify": "modified", "unmount": "unmounted", "fsck": "checked"}
OUT_OF_TIME = "judge: the request's budget ran out before this step"
LEFT_BEHIND = "still running after the unmount"
KILLED = "killed by the lab (SIGKILL): still running after its mount was detached"
HUNG_WAIT = 5.0  # seconds a server whose connection was aborted gets to exit after the unmount
ABORT_GRACE = 2.0  # seconds a kept server gets to end by itself once its mount is gone, before it is killed


def do_mount(spec: DriverSpec) -> int:
    kind, args = spec.mount[0], spec.mount[1:]
    if kind == "sh":
        run_shell(args[0])
    if kind == "exec":
        return run(args)
    if kind == "start":
        return fuseserver.start(args[0], args[1], args[2:])
    if kind == "sandbox":
        return fuseserver.sandbox(args[0], args[1], args[2], args[3])
    raise StepFailed(f"unknown mount kind {kind!r}")


def fate_of(path: str | None, wait: float = 0.0) -> str:
    """The fate its keeper wrote at `path`, waiting up to `wait` seconds for it ("" without one)."""
    if not path or not wait_for_fate(path, wait):
        return ""
    with open(path) as f:
        return fate_text(json.load(f))


def prepare(spec: DriverSpec) -> None:
    os.makedirs(spec.mountpoint, exist_ok=True)
    os.makedirs(fuseserver.STATE, exist_ok=True)
    os.chmod(fuseserver.STATE, 0o1777)
    if spec.fate:
        fuseserver.prepare(spec.fate)
    if spec.user:
        account = pwd.getpwnam(spec.user)
        os.chown(spec.mountpoint, account.pw_uid, account.pw_gid)


def wait_for_fate(path: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def unit_fate(journal: str) -> str:
    """How the last instance in `journal` (systemd's words about a unit's instances) ended."""
    record = fuseserver.systemd_fate(journal)
    if record:
        return fate_text(record)
    return "exit status 0" if "Deactivated successfully" in journal else ""


def service_fate(units: str, since: float) -> str:
    """The fate of a service-mode server (an instance of `units`, owned by systemd) started
    after `since`, from the journal (which may hear of the end a moment after the process went)."""
    deadline = time.monotonic() + 3
    while True:
        journal = subprocess.run(["journalctl", "-q", "--no-pager", "-o", "cat", f"--since=@{int(since) - 1}",
                                  "-u", units], capture_output=True, text=True).stdout
        fate = unit_fate(journal)
        if fate or time.monotonic() > deadline:
            return fate
        time.sleep(0.2)


def detach(mountpoint: str) -> bool:
    """Abort the FUSE connection at `mountpoint` (if any) and detach what is mounted there."""
    if not fuseserver.is_mounted(mountpoint):
        return False
    stalls.abort_at(mountpoint)
    ctypes.CDLL(None, use_errno=True).umount2(mountpoint.encode(), MNT_DETACH)
    return True


def kill_left_behind(spec: DriverSpec, wait: float = 2.0) -> str:
    """A kept server still running once its mount is gone (connection aborted, mount detached):
    SIGKILL it (each process serving the device, then the keeper's child) and say so; "" if none was."""
    if not spec.fate or os.path.exists(spec.fate) or fuseserver.is_mounted(spec.mountpoint):
        return ""
    killed = False
    for find in (stalls.servers, lambda device: [fuseserver.kept_server(spec.fate or "")]):
        for pid in find(spec.device):
            killed = kill(pid) or killed
        if killed and wait_for_fate(spec.fate, wait):
            break
    if not killed:
        return ""
    fate = fate_of(spec.fate)
    return KILLED if not fate or fate.startswith("killed by SIGKILL") else fate


def kill(pid: int | None) -> bool:
    """SIGKILL `pid`; whether it was there to kill."""
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    return True


def server_fate(spec: DriverSpec, wait: float = ABORT_GRACE) -> str:
    """A kept server's fate once its mount is gone: its own (waited for up to `wait` seconds), or
    killed by the lab when it stayed behind ("" at once when no keeper ever started one)."""
    if not spec.fate or not (os.path.exists(spec.fate) or os.path.exists(f"{spec.fate}.pid")):
        return ""
    return fate_of(spec.fate, wait) or kill_left_behind(spec)


class Course:
    """One driver through its steps: the budget (`until`, monotonic), the watch, the record so far."""

    def __init__(self, spec: DriverSpec, deadlines: dict[str, float], until: float = math.inf,
                 stall: float = 0.0, save: Callable[[DriverRecord], None] | None = None) -> None:
        self.spec, self.deadlines, self.until, self.stall = spec, deadlines, until, stall
        self.save = save or (lambda record: None)
        self.record = DriverRecord(name=spec.name)
        self.intact = True  # every step so far ran to its end
        self.told: dict[str, object] = {}

    def names(self) -> list[str]:
        """The steps this driver runs, in order."""
        return [n for n in REACH if not (n == "modify" and self.spec.readonly)]

    def out_of_time(self) -> bool:
        return self.until - time.monotonic() <= 0

    def step(self, name: str, go: Go) -> StepRecord | None:
        """Run one step with its deadline (cut to what is left of the budget); None when nothing is left."""
        deadline = min(self.deadlines[name], self.until - time.monotonic())
        if deadline <= 0:
            return None
        self.save(DriverRecord(**{**self.record.__dict__, "steps": [
            *self.record.steps, StepRecord(name, -1, "judge: the request's budget ran out during this step", 0.0)]}))
        watch, self.told = stalls.Watch(name, self.spec.mountpoint, self.spec.device, self.stall), {}
        step = go(deadline, watch, self.told)
        if step.status == -1 and deadline < self.deadlines[name]:
            step.said = f"{step.said}\njudge: the request's budget ran out".strip()[-300:]
        self.record.steps.append(step)
        self.record.hung = self.record.hung or watch.hung
        self.record.livelock = self.record.livelock or watch.livelock
        if self.intact and step.status >= 0 and not watch.hung:
            self.record.reached = REACH[name]
        else:
            self.intact = False
        return step

    def stop(self) -> DriverRecord:
        """The budget ran out: abort and detach (a kept server left behind killed), and record every
        step not run as timed out."""
        detach(self.spec.mountpoint)
        if self.spec.fate and self.record.server in ("-", LEFT_BEHIND):
            self.record.server = server_fate(self.spec) or self.record.server
        ran = {s.name for s in self.record.steps}
        self.record.steps += [StepRecord(n, -1, OUT_OF_TIME, 0.0) for n in self.names() if n not in ran]
        return self.record


def judge_driver(spec: DriverSpec, deadlines: dict[str, float], until: float = math.inf, stall: float = 0.0,
                 save: Callable[[DriverRecord], None] | None = None) -> DriverRecord:
    """Every step of one driver; the record the host turns into a Verdict."""
    course = Course(spec, deadlines, until, stall, save)
    record, began = course.record, time.time()
    prepare(spec)
    if spec.mount[0] == "exec":
        mount = course.step("mount", lambda d, w, t: command_step("mount", d, spec.user, spec.mount[1:], w, t))
    else:
        mount = course.step("mount", child("mount", spec.user, do_mount, spec))
    if mount is None or mount.status != 0:
        return refused(course, mount, began)
    walk_and_modify(course)
    if course.out_of_time():
        return course.stop()
    unmount_and_check(course, began)
    return course.stop() if course.out_of_time() else record


def refused(course: Course, mount: StepRecord | None, began: float) -> DriverRecord:
    """The mount failed (or never ended): its words, whatever it left mounted cleared away."""
    spec, record = course.spec, course.record
    if mount is not None and mount.status > 0:
        record.reached = "refused"
        record.refusal = f"{course.told.get('first') or 'no words'} (exit status {mount.status})"[-300:]
    left = detach(spec.mountpoint)  # a sandbox's mount whose server never answered, say
    record.server = (server_fate(spec, 3 if left else ABORT_GRACE) if spec.fate else "") or (
        spec.units and service_fate(spec.units, began)) or "-"
    return course.stop() if mount is None or course.out_of_time() else record


def child(name: str, user: str | None, fn: Callable[..., object], *args: object) -> Go:
    """A step that runs fn(*args) in a child, for Course.step."""
    return lambda deadline, watch, told: in_child(name, deadline, user, fn, *args, watch=watch, told=told)


def count(value: object) -> int:
    """A count a step's child told (0 when it told none, or nonsense)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31 else 0


def walk_and_modify(course: Course) -> None:
    """The walk (its counts into the record) and, unless read-only, the modify step."""
    spec, record = course.spec, course.record
    for name, fn in (("walk", walk), ("modify", modify)):
        if name not in course.names():
            continue
        step = course.step(name, child(name, spec.user, fn, spec.mountpoint))
        if step is None:
            return
        if name == "walk":
            record.entries, record.files, record.walk_errors = (count(course.told.get(k))
                                                                for k in ("entries", "files", "walk_errors"))
        ended = fate_of(spec.fate) if record.server == "-" else ""
        if ended:
            record.server = f"{ended} during {name}"


def unmount_and_check(course: Course, began: float) -> None:
    """Unmount (and wait for a kept server's end), then the filesystem's own checker."""
    spec, record = course.spec, course.record
    mnt, fate = spec.mountpoint, spec.fate
    unmount = course.step("unmount", lambda d, w, t: command_step("unmount", d, spec.user, spec.unmount, w, t))
    if unmount is None:
        return
    wait = min(HUNG_WAIT, course.deadlines["unmount"]) if record.hung else course.deadlines["unmount"]
    if unmount.status == 0 and fate and not wait_for_fate(fate, wait):
        unmount.status = 1
        unmount.said += f"\njudge: the server had not exited {wait:g} s after the unmount"
    if fuseserver.is_mounted(mnt):
        record.stuck_mount = True
        detach(mnt)
    if fate and record.server == "-":
        record.server = server_fate(spec) or LEFT_BEHIND
    elif spec.units:  # the unmount step waited for the instance to go
        record.server = service_fate(spec.units, began) or "-"
    if not spec.checker:
        record.steps.append(StepRecord("fsck", 0, f"judge: no checker for {spec.fstype or 'ext4'}", 0.0))
        return
    course.step("fsck", lambda d, w, t: command_step("fsck", d, None, [*spec.checker, spec.device], None, t))
