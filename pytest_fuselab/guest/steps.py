"""The judge's steps and how each runs: in a child, as the driver's user, with a deadline (guest, stdlib only).

walk and modify are what a user of a filesystem does to it; a command step runs a mount, an
unmount or e2fsck.  Each step ends as a protocol.StepRecord: its exit status, its last words,
the errno it failed with, how long it took.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pwd
import re
import select
import signal
import stat
import sys
import tempfile
import time

from pytest_fuselab.guest.protocol import StepRecord
from pytest_fuselab.guest.stalls import TICK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, NoReturn, TypeVar

    from pytest_fuselab.guest.stalls import Watch

    T = TypeVar("T")

WALK_ENTRIES, WALK_FILES, READ_LIMIT = 5000, 2000, 64 << 20
SAID = 300  # the end of a step's output kept in its record
_told: list[int] = []  # in a step's child: the fd its facts go to (tell)
NOISE = re.compile(r"warning|mount failed due to unrecognized options|fuseserver: |judge: |dmesg\(1\) may have"
                   r"|there may be file system corruption|the file system is not gracefully", re.I)  # explain nothing
# systemd-run's own words around a sandboxed server's (--pipe --wait): never a refusal's cause
SYSTEMD_RUN = re.compile(r"Running as unit: |Finished with result: |Main processes terminated with: |Service runtime: "
                         r"|CPU time consumed: |Memory peak: |Memory swap peak: |IP traffic received: |IP traffic sent: "
                         r"|IO bytes read: |IO bytes written: |Press \^\] three times")


def tell(**facts: object) -> None:
    """In a step's child: hand `facts` to the judge (in_child returns them in `told`)."""
    if _told:
        os.write(_told[0], (json.dumps(facts) + "\n").encode())


def first_words(text: str) -> str:
    """The first line of `text` that says something: a refusal's cause rather than its last, generic words."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not SYSTEMD_RUN.match(line.strip())]
    return next((line for line in lines if not NOISE.match(line) and "journal" not in line), lines[0] if lines else "")


class StepFailed(Exception):
    """A step's own failure: what was being done, and the errno when there is one."""

    def __init__(self, what: str, exc: BaseException | None = None) -> None:
        self.errno = errno.errorcode.get(exc.errno, "") if isinstance(exc, OSError) and exc.errno else ""
        strerror = exc.strerror if isinstance(exc, OSError) else ""
        detail = f": {self.errno} ({strerror})" if self.errno else (f": {exc}" if exc else "")
        super().__init__(f"{what}{detail}")


# -- the steps, each run in a child process ---------------------------------------------------

def run_shell(command: str) -> NoReturn:
    os.execv("/bin/sh", ["/bin/sh", "-c", command])


def run(command: str | list[str]) -> int:
    """A shell command (a string), or an argv run directly: a shell is a process more (under TCG,
    tens of milliseconds), and ["umount", PATH] is the system call itself."""
    if isinstance(command, str):
        run_shell(command)
    if command[0] == "umount" and len(command) == 2:
        if ctypes.CDLL(None, use_errno=True).umount2(command[1].encode(), 0):
            err = ctypes.get_errno()
            raise StepFailed(f"umount {command[1]}", OSError(err, os.strerror(err)))
        return 0
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        raise StepFailed(f"cannot run {command[0]}", exc) from None


class Walk:
    """One walk of a tree: what it has seen so far, and every error on the way."""

    def __init__(self, top: str) -> None:
        self.errors: list[StepFailed] = []
        self.seen = self.files = 0
        self.dirs = [top]
        self.visited: set[tuple[int, int]] = set()

    def failed(self, what: str, path: str, exc: OSError) -> None:
        self.errors.append(StepFailed(f"{what} {path}", exc))

    def directory(self, directory: str) -> None:
        try:
            entries = os.scandir(directory)
        except OSError as exc:
            self.failed("opendir", directory, exc)
            return
        with entries:
            while self.seen < WALK_ENTRIES:
                try:
                    entry = next(entries, None)
                except OSError as exc:
                    self.failed("readdir", directory, exc)
                    break
                if entry is None:
                    break
                self.seen += 1
                self.entry(entry.path)

    def entry(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except OSError as exc:
            self.failed("stat", path, exc)
            return
        self.xattrs(path)
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) not in self.visited:
                self.visited.add((st.st_dev, st.st_ino))
                self.dirs.append(path)
        elif stat.S_ISLNK(st.st_mode):
            try:
                os.readlink(path)
            except OSError as exc:
                self.failed("readlink", path, exc)
        elif stat.S_ISREG(st.st_mode) and self.files < WALK_FILES:
            self.files += 1
            self.read(path)

    def xattrs(self, path: str) -> None:
        try:
            for name in os.listxattr(path, follow_symlinks=False):
                try:
                    os.getxattr(path, name, follow_symlinks=False)
                except OSError as exc:
                    self.failed(f"getxattr {name}", path, exc)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                self.failed("listxattr", path, exc)

    def read(self, path: str) -> None:
        try:
            with open(path, "rb", buffering=0) as f:
                done = 0
                while done < READ_LIMIT:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    done += len(chunk)
        except OSError as exc:
            self.failed("read", path, exc)


def walk(top: str) -> int:
    """Visit what a user would: every entry (stat, xattrs), file contents, link targets."""
    tour = Walk(top)
    while tour.dirs and tour.seen < WALK_ENTRIES:
        tour.directory(tour.dirs.pop())
    print(f"judge: walked {tour.seen} entries, read {tour.files} files, {len(tour.errors)} errors")
    tell(entries=tour.seen, files=tour.files, walk_errors=len(tour.errors))
    if tour.errors:
        for error in tour.errors[:5]:
            print(f"judge: {error}", file=sys.stderr)
        raise tour.errors[0]
    return 0


def modify(top: str) -> int:
    """Create, write, rename, fsync and unlink, as any user of a filesystem would."""
    def attempt(what: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except OSError as exc:
            raise StepFailed(what, exc) from None

    os.chdir(top)
    fd = attempt("create .fl-new", os.open, ".fl-new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    attempt("write .fl-new", os.write, fd, b"x\n")
    os.close(fd)
    attempt("rename .fl-new", os.rename, ".fl-new", ".fl-renamed")
    fd = attempt("create .fl-big", os.open, ".fl-big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = b"\0" * (64 << 10)
    for _ in range(2):  # 128 KiB: blocks to allocate, without making the server's CPU the cost
        attempt("write .fl-big", os.write, fd, block)
    attempt("fsync .fl-big", os.fsync, fd)
    os.close(fd)
    attempt("unlink .fl-renamed", os.unlink, ".fl-renamed")
    attempt("unlink .fl-big", os.unlink, ".fl-big")
    os.sync()
    return 0


# -- running a step --------------------------------------------------------------------------

def drop_to(user: str) -> None:
    account = pwd.getpwnam(user)
    os.setgroups(os.getgrouplist(user, account.pw_gid))
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    os.environ.update(HOME=account.pw_dir, USER=user, LOGNAME=user)


def in_child(name: str, deadline: float, user: str | None, fn: Callable[..., object], *args: object,
             watch: Watch | None = None, told: dict[str, object] | None = None) -> StepRecord:
    """Run fn(*args) in a child (as `user`) with `deadline` seconds, under `watch`; return the step
    record, and what the child told (tell) in `told`."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as facts:
        pid = os.fork()
        if pid == 0:
            code: object = 1
            try:
                os.setsid()
                _told[:] = [facts.fileno()]
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                if user:
                    drop_to(user)
                code = fn(*args) or 0
            except StepFailed as exc:
                print(f"judge: {name}: {exc}", file=sys.stderr)
                tell(errno=exc.errno)
            except BaseException as exc:  # noqa: BLE001 (whatever happens is the step's result)
                print(f"judge: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        status, note = reap(pid, deadline, watch)
        heard = read_facts(facts)
        if told is not None:
            told.update(heard)
        return step_record(name, status, out, note, str(heard.get("errno", "")), start, told)


def read_facts(facts: IO[bytes]) -> dict[str, object]:
    """What a step's child told, one JSON object a line (later lines win)."""
    facts.seek(0)
    heard: dict[str, object] = {}
    for line in facts.read(1 << 16).splitlines():
        try:
            said = json.loads(line)
        except ValueError:
            continue
        if isinstance(said, dict):
            heard.update(said)
    return heard


def step_record(name: str, status: int, out: IO[bytes], note: str, errno_name: str, start: float,
                told: dict[str, object] | None = None) -> StepRecord:
    """The record of a step that ended with `status`, its output in the file `out` (its first
    meaningful line goes to `told`: a refusal's words)."""
    out.seek(0)
    text = out.read(1 << 20).decode(errors="replace")
    if told is not None:
        told["first"] = first_words(text)[:SAID]
    said = f"{text.strip()}\n{note}".strip()
    return StepRecord(name=name, status=status, said=said[-SAID:], errno=errno_name,
                      seconds=round(time.monotonic() - start, 2))


def command_step(name: str, deadline: float, user: str | None, command: str | list[str],
                 watch: Watch | None = None, told: dict[str, object] | None = None) -> StepRecord:
    """A step that runs `command` (a shell string or an argv): as root, an argv is spawned
    without copying the judge (posix_spawn; a fork of Python costs tens of milliseconds of
    page-table copying and faults under TCG), otherwise in a child like any other step."""
    if user or isinstance(command, str) or (command[0] == "umount" and len(command) == 2):
        return in_child(name, deadline, user, run, command, watch=watch, told=told)
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, out.fileno(), 2)]
        try:
            pid = os.posix_spawnp(command[0], command, os.environ, file_actions=actions, setsid=True)
        except OSError as exc:
            failed = StepFailed(f"cannot run {command[0]}", exc)
            return StepRecord(name=name, status=1, said=f"judge: {name}: {failed}", errno=failed.errno,
                              seconds=round(time.monotonic() - start, 2))
        status, note = reap(pid, deadline, watch)
        return step_record(name, status, out, note, "", start, told)


def reap(pid: int, deadline: float, watch: Watch | None = None) -> tuple[int, str]:
    """The child's exit status, or -1 once it outlived `deadline` (it is then killed); `watch`
    looks at it every TICK seconds meanwhile, and once more at the deadline."""
    fd = os.pidfd_open(pid)
    until = time.monotonic() + deadline
    try:
        while True:
            left = until - time.monotonic()
            if select.select([fd], [], [], max(0.0, min(left, TICK if watch else left)))[0]:
                return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), ""
            if left <= 0:
                break
            if watch:
                watch.tick(pid)
        if watch:
            watch.overdue(pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if select.select([fd], [], [], 3)[0]:
            os.waitpid(pid, 0)
            return -1, f"judge: no result within {deadline} s (killed)"
        return -1, f"judge: no result within {deadline} s, and the step ignores SIGKILL (D state)"
    finally:
        os.close(fd)
