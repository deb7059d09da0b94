"""Steps that stop advancing: a FUSE server that no longer answers, a kernel task that never returns (guest, stdlib only).

While a step runs, the judge samples it every TICK seconds (steps.reap): the CPU time of the
step's process and its descendants.  When that has not moved for `stall` seconds while the
driver's FUSE connection has requests waiting and its server is not in D state itself, the server
is hung: the connection is aborted through /sys/fs/fuse/connections/N/abort, the step's calls fail
at once, and the record says so.  At a step's deadline, before the kill, a task of the step that
sits in one system call without using user time and is not in D state is a livelock: a kernel
finding, told with the task's kernel stack.
"""

from __future__ import annotations

import os
import time

TICK = 1.0  # seconds between two looks at a running step
FUSECTL = "/sys/fs/fuse/connections"


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def task_stat(pid: int) -> tuple[str, str, int, int] | None:
    """(comm, state, utime, stime) of task `pid`, or None when it is gone."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    comm, _, rest = text.partition(" (")[2].rpartition(") ")
    fields = rest.split()
    return comm, fields[0], int(fields[11]), int(fields[12])


def family(pid: int) -> list[int]:
    """`pid` and its descendants (children of each main thread, /proc/PID/task/PID/children)."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 256:
        task = todo.pop()
        found.append(task)
        todo += [int(child) for child in _read(f"/proc/{task}/task/{task}/children").split()]
    return found


def progress(pid: int) -> tuple[tuple[int, int], ...]:
    """What moves while a step advances: each task of its family with its CPU time."""
    stats = ((task, task_stat(task)) for task in family(pid))
    return tuple((task, s[2] + s[3]) for task, s in stats if s is not None)


def fuse_connection(mountpoint: str) -> int | None:
    """The FUSE connection (its number in FUSECTL) mounted at `mountpoint`, or None."""
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == mountpoint and " - fuse" in line:
            major, _, minor = fields[2].partition(":")
            return int(minor) if major == "0" and minor.isdigit() else None
    return None


def waiting(connection: int) -> int:
    """Requests of `connection` that wait for the server's answer."""
    text = _read(f"{FUSECTL}/{connection}/waiting").strip()
    return int(text) if text.isdigit() else 0


def abort(connection: int) -> bool:
    """Abort `connection`: every request waiting and to come fails (ECONNABORTED, ENOTCONN)."""
    try:
        with open(f"{FUSECTL}/{connection}/abort", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def abort_at(mountpoint: str) -> bool:
    """Abort the FUSE connection mounted at `mountpoint`, if there is one."""
    connection = fuse_connection(mountpoint)
    return connection is not None and abort(connection)


def servers(device: str) -> list[int]:
    """Processes that hold /dev/fuse open and name `device` on their command line."""
    names = {device.encode(), os.path.realpath(device).encode()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not any(name in _cmdline(entry) for name in names):
            continue
        try:
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") == "/dev/fuse" for fd in os.listdir(f"/proc/{entry}/fd")):
                found.append(int(entry))
        except OSError:
            continue
    return found


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class Watch:
    """The watch on one step of one driver (its mountpoint and device), for steps.reap."""

    def __init__(self, step: str, mountpoint: str, device: str, stall: float) -> None:
        self.step, self.mountpoint, self.device, self.stall = step, mountpoint, device, stall
        self.hung = ""  # set once the server was found hung and its connection aborted
        self.livelock = ""
        self.last: tuple[tuple[int, int], ...] = ()
        self.since = time.monotonic()

    def tick(self, pid: int) -> None:
        """One look at the step led by `pid`: abort a hung server's connection."""
        if not self.stall or self.hung:
            return
        now, seen = time.monotonic(), progress(pid)
        if seen != self.last:
            self.last, self.since = seen, now
            return
        if now - self.since < self.stall:
            return
        connection = fuse_connection(self.mountpoint)
        if connection is None or not waiting(connection):
            self.since = now  # not waiting on a FUSE server: the deadline decides
            return
        if any((task_stat(p) or ("", "", 0, 0))[1] == "D" for p in servers(self.device)):
            return  # the kernel holds the server itself: its stuck tasks tell
        if abort(connection):
            self.hung = f"server hung during {self.step} (connection aborted)"

    def overdue(self, pid: int) -> None:
        """At the deadline, before the kill: name a task that never returns and is not in D state."""
        connection = fuse_connection(self.mountpoint)
        if connection is not None and waiting(connection):
            return  # waiting on its FUSE server, not on the kernel
        before = {task: (task_stat(task), _read(f"/proc/{task}/syscall")) for task in family(pid)}
        time.sleep(1)
        for task, (stat, syscall) in before.items():
            now = task_stat(task)
            if stat is None or now is None or now[1] == "D" or syscall.startswith(("running", "-1")):
                continue
            if now[2] == stat[2] and _read(f"/proc/{task}/syscall") == syscall and syscall:
                stack = _read(f"/proc/{task}/stack").strip()
                self.livelock = (f"{now[0]}[{task}] never returned from system call {syscall.split()[0]} during "
                                 f"{self.step} ({now[1]} state, not D); its kernel stack:\n{stack}")[:4096]
                return
