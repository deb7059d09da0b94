"""Run hostile images through drivers inside the guest, every step in one call (stdlib only).

    python3 -m pytest_fuselab.guest.judge < SPEC.json     prints the answer as one JSON object
    python3 -m pytest_fuselab.guest.judge --serve SOCKET  stays resident: each connection sends
        SPEC (one line) and gets {"pid": N} (one line), then the answer; it is judged by a fork
        of the server, so Python and these modules start once per guest (the agent's "judge"
        request, agent.py, uses it)

SPEC is a protocol.JudgeSpec, built by the host (containment.py, Driver.judge_spec); the answer
a protocol.JudgeAnswer.  For each driver: mount, walk (readdir, stat, read every file, readlink,
listxattr and getxattr), modify (create, write, rename, fsync, unlink), unmount, e2fsck -fn;
each step in a child process (as the driver's user) with a deadline, its errno recorded
(steps.py).  Then the FUSE server's fate, whether the mount could be removed, tasks stuck in D
state (tasks.py), and the kernel log of that driver alone (kmsg.py), so the host can tell which
driver a splat belongs to.  When a driver's kernel log matches `stop`, the remaining drivers
are not run: the host runs them on a fresh guest.  The mounts are made in a mount namespace of
the judge's own: systemd does not track them (a mount unit per mount costs more than the mount
under TCG), and whatever a judge leaves mounted goes away with its namespace.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import tempfile
import time

from pytest_fuselab.guest import fuseserver
from pytest_fuselab.guest.fates import fate_text
from pytest_fuselab.guest.kmsg import KernelLog
from pytest_fuselab.guest.protocol import (MAX_KMSG, MAX_TASK, MAX_TASKS, MAX_TEXT, DriverRecord, DriverSpec,
                                           JudgeAnswer, JudgeSpec)
from pytest_fuselab.guest.steps import StepFailed, command_step, in_child, modify, run, run_shell, walk
from pytest_fuselab.guest.tasks import stuck_tasks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

MNT_DETACH = 2
MS_REC, MS_PRIVATE = 0x4000, 0x40000
CLONE_NEWNS = 0x20000
FIRST = {"sandbox": 0, "sh": 1, "start": 2, "exec": 3}  # the slowest mounts (systemd units) start first


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


# -- one driver ------------------------------------------------------------------------------

def fate_of(path: str | None) -> str:
    if not path or not os.path.exists(path):
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


def judge_driver(spec: DriverSpec, deadlines: dict[str, float]) -> DriverRecord:
    """Every step of one driver; the record the host turns into a Verdict."""
    mnt, user, fate = spec.mountpoint, spec.user, spec.fate
    record = DriverRecord(name=spec.name)
    steps, began = record.steps, time.time()
    prepare(spec)
    if spec.mount[0] == "exec":
        steps.append(command_step("mount", deadlines["mount"], user, spec.mount[1:]))
    else:
        steps.append(in_child("mount", deadlines["mount"], user, do_mount, spec))
    if steps[-1].status != 0:
        record.server = fate_of(fate) or (spec.units and service_fate(spec.units, began)) or "-"
        return record
    for name, fn in (("walk", walk), ("modify", modify)):
        steps.append(in_child(name, deadlines[name], user, fn, mnt))
        ended = fate_of(fate) if record.server == "-" else ""
        if ended:
            record.server = f"{ended} during {name}"
    unmount = command_step("unmount", deadlines["unmount"], user, spec.unmount)
    if unmount.status == 0 and fate and not wait_for_fate(fate, deadlines["unmount"]):
        unmount.status = 1
        unmount.said += f"\njudge: the server had not exited {deadlines['unmount']} s after the unmount"
    if fuseserver.is_mounted(mnt):
        record.stuck_mount = True
        ctypes.CDLL(None, use_errno=True).umount2(mnt.encode(), MNT_DETACH)
    steps.append(unmount)
    if fate and record.server == "-":
        record.server = fate_of(fate) or "still running after the unmount"
    elif spec.units:  # the unmount step waited for the instance to go
        record.server = service_fate(spec.units, began) or "-"
    steps.append(command_step("fsck", deadlines["fsck"], None, ["e2fsck", "-fn", spec.device]))
    return record


# -- every driver ----------------------------------------------------------------------------

def failure(exc: BaseException) -> str:
    """`exc` in words, no longer than the protocol carries (the end is what tells)."""
    return f"{type(exc).__name__}: {exc}"[-MAX_TEXT:]


def facts(stuck: list[str], kmsg: str) -> tuple[list[str], str]:
    """Stuck tasks and a kernel log cut to what the protocol carries (the first splats are in the head)."""
    return [task[:MAX_TASK] for task in stuck[:MAX_TASKS]], kmsg[:MAX_KMSG]


def judge_alone(driver: DriverSpec, deadlines: dict[str, float], out: IO[bytes]) -> None:
    """In a child of judge_together: one driver's record, written to `out`."""
    start = time.monotonic()
    try:
        record = judge_driver(driver, deadlines)
        record.seconds = round(time.monotonic() - start, 2)
    except BaseException as exc:  # noqa: BLE001 (reported as this driver's failure)
        record = DriverRecord(name=driver.name, error=failure(exc))
    out.write(json.dumps(record.to_json()).encode())
    out.flush()


def judge_together(drivers: list[DriverSpec], deadlines: dict[str, float]) -> list[DriverRecord]:
    """Every driver at once, each in a process of its own (on its own disk and mountpoint)."""
    outputs, pids = [tempfile.TemporaryFile() for _ in drivers], [0] * len(drivers)
    for i in sorted(range(len(drivers)), key=lambda i: FIRST.get(drivers[i].mount[0], 9)):
        pid = os.fork()
        if pid == 0:
            try:
                judge_alone(drivers[i], deadlines, outputs[i])
            finally:
                os._exit(0)
        pids[i] = pid
    records = []
    for driver, pid, output in zip(drivers, pids, outputs, strict=True):
        os.waitpid(pid, 0)
        output.seek(0)
        said = output.read()
        records.append(DriverRecord.from_json(json.loads(said)) if said else
                       DriverRecord(name=driver.name, error="no record"))
        output.close()
    return records


def own_mount_namespace() -> None:
    """Mount from here on in a private copy of the mount namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS):  # os.unshare is Python 3.12's; the host's checks run older ones
        raise OSError(ctypes.get_errno(), "a mount namespace of the judge's own")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None):
        raise OSError(ctypes.get_errno(), "making / private in the judge's mount namespace")


def judge(spec: JudgeSpec) -> JudgeAnswer:
    """The answer to one SPEC: every driver's record, and in `together` mode what hurt."""
    stop = re.compile(spec.stop or r"(?!)", re.M)
    own_mount_namespace()
    log = KernelLog()
    if spec.together and len(spec.drivers) > 1:
        records = judge_together(spec.drivers, spec.deadlines)
        stuck, kmsg = stuck_tasks(), log.read()
        hurt = bool(stuck or stop.search(kmsg) or any(r.error for r in records))
        stuck, kmsg = facts(stuck, kmsg)
        return JudgeAnswer(verdicts=records, together=True, hurt=hurt, stuck=stuck, kmsg=kmsg)
    verdicts = []
    for driver in spec.drivers:
        start = time.monotonic()
        record = judge_driver(driver, spec.deadlines)
        stuck, kmsg = stuck_tasks(), log.read()
        record.stuck, record.kmsg = facts(stuck, kmsg)
        record.seconds = round(time.monotonic() - start, 2)
        verdicts.append(record)
        if stuck or stop.search(kmsg):
            break  # the kernel is hurt: the host runs the rest on a fresh guest
    return JudgeAnswer(verdicts=verdicts)


# -- serving ---------------------------------------------------------------------------------

def answer(conn: socket.socket) -> None:
    """In a fork of the server: read one SPEC from `conn`, send our pid, then the answer."""
    os.setsid()  # the agent kills the whole group when the host gives up on us
    gc.disable()  # a short life, forked again for every step: no collector touching shared pages
    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    with conn.makefile("rb") as reader:
        line = reader.readline()
    try:
        reply = judge(JudgeSpec.from_json(json.loads(line)))
    except Exception as exc:  # noqa: BLE001 (the host shows it as the judge's failure)
        reply = JudgeAnswer(error=failure(exc))
    conn.sendall(json.dumps(reply.to_json()).encode())


def serve(path: str) -> None:
    """Stay resident on the unix socket `path`; judge each connection in a fork."""
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(8)
    gc.freeze()  # what is loaded now stays shared with every fork (see answer)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            code = 1
            try:
                answer(conn)
                code = 0
            finally:
                os._exit(code)
        conn.close()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap the judges that have finished
                pass
        except ChildProcessError:
            pass


def main(args: list[str]) -> int:
    if args[:1] == ["--serve"]:
        serve(args[1])
    json.dump(judge(JudgeSpec.from_json(json.load(sys.stdin))).to_json(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
