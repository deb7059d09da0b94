"""Run hostile images through drivers inside the guest, every step in one call (stdlib only).

    python3 -m pytest_fuselab.guest.judge < SPEC.json     prints the answer as one JSON object
    python3 -m pytest_fuselab.guest.judge --serve SOCKET  stays resident: each connection sends
        SPEC (one line) and gets {"pid": N} (one line), then the answer; it is judged by a fork
        of the server, so Python and these modules start once per guest (the agent's "judge"
        request, agent.py, uses it)

SPEC is a protocol.JudgeSpec, built by the host (containment.py, Driver.judge_spec); the answer
a protocol.JudgeAnswer.  Each driver runs its course (course.py): mount, walk, modify (not
for a read-only filesystem), unmount and the filesystem's own checker, each step in a child
process (as the driver's user) with a deadline, watched for a hung FUSE server (stalls.py);
then tasks stuck in D state (tasks.py), and the kernel log of that driver alone (kmsg.py), so
the host can tell which driver a splat belongs to.  The request's `budget` bounds it all: when
it runs out the judge stops and answers with what it has.  When a driver's kernel log matches
`stop`, the remaining drivers are not run: the host runs them on a fresh guest.  The mounts are
made in a mount namespace of the judge's own: systemd does not track them (a mount unit per
mount costs more than the mount under TCG), and whatever a judge leaves mounted goes away with
its namespace.  The answer ends with a shutdown of the connection: a FUSE server's keeper,
forked from the judge, may hold a copy of it for as long as its server lives.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import re
import select
import signal
import socket
import sys
import tempfile
import time

from pytest_fuselab.guest.course import detach, judge_driver
from pytest_fuselab.guest.kmsg import KernelLog
from pytest_fuselab.guest.protocol import (MAX_KMSG, MAX_TASK, MAX_TASKS, MAX_TEXT, DriverRecord, DriverSpec,
                                           JudgeAnswer, JudgeSpec, ProtocolError, StepRecord)
from pytest_fuselab.guest.tasks import stuck_tasks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

MS_REC, MS_PRIVATE = 0x4000, 0x40000
CLONE_NEWNS = 0x20000
FIRST = {"sandbox": 0, "sh": 1, "start": 2, "exec": 3}  # the slowest mounts (systemd units) start first
GRACE = 15.0  # seconds past the budget before a driver's process is killed (together)


# -- every driver ----------------------------------------------------------------------------

def failure(exc: BaseException) -> str:
    """`exc` in words, no longer than the protocol carries (the end is what tells)."""
    return f"{type(exc).__name__}: {exc}"[-MAX_TEXT:]


def facts(stuck: list[str], kmsg: str) -> tuple[list[str], str]:
    """Stuck tasks and a kernel log cut to what the protocol carries (the first splats are in the head)."""
    return [task[:MAX_TASK] for task in stuck[:MAX_TASKS]], kmsg[:MAX_KMSG]


def judge_alone(driver: DriverSpec, spec: JudgeSpec, until: float, out: IO[bytes]) -> None:
    """In a child of judge_together: one driver's record, written to `out` as it goes (so that
    the parent, if it must kill us past the budget, still has the steps run and the one running)."""
    def save(record: DriverRecord) -> None:
        out.seek(0)
        out.truncate()
        out.write(json.dumps(record.to_json()).encode())
        out.flush()

    start = time.monotonic()
    try:
        record = judge_driver(driver, spec.deadlines, until, spec.stall, save)
        record.seconds = round(time.monotonic() - start, 2)
    except BaseException as exc:  # noqa: BLE001 (reported as this driver's failure)
        record = DriverRecord(name=driver.name, error=failure(exc))
    save(record)


def judge_together(spec: JudgeSpec, until: float) -> list[DriverRecord]:
    """Every driver at once, each in a process of its own (on its own disk and mountpoint); one
    still running GRACE seconds past the budget is killed and its record so far taken."""
    drivers = spec.drivers
    outputs, pids = [tempfile.TemporaryFile() for _ in drivers], [0] * len(drivers)
    for i in sorted(range(len(drivers)), key=lambda i: FIRST.get(drivers[i].mount[0], 9)):
        pid = os.fork()
        if pid == 0:
            try:
                judge_alone(drivers[i], spec, until, outputs[i])
            finally:
                os._exit(0)
        pids[i] = pid
    records = []
    for driver, pid, output in zip(drivers, pids, outputs, strict=True):
        killed = not wait_until(pid, until + GRACE)
        output.seek(0)
        records.append(record_of(driver, output.read(), killed))
        output.close()
    return records


def wait_until(pid: int, until: float) -> bool:
    """Wait for child `pid` until `until` (monotonic); past it, kill it; whether it ended by itself."""
    fd = os.pidfd_open(pid)
    try:
        ended = bool(select.select([fd], [], [], max(0.0, min(until - time.monotonic(), 7 * 86400)))[0])
        if not ended:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return ended
    finally:
        os.close(fd)


def record_of(driver: DriverSpec, said: bytes, killed: bool) -> DriverRecord:
    """The record a driver's process left (partial when it was `killed`)."""
    try:
        record = DriverRecord.from_json(json.loads(said)) if said else DriverRecord(name=driver.name, error="no record")
    except (ValueError, ProtocolError) as exc:
        record = DriverRecord(name=driver.name, error=f"a record the judge cannot read: {exc}"[:MAX_TEXT])
    if killed:
        detach(driver.mountpoint)
        for step in record.steps:
            if step.status == -1 and not step.seconds:
                step.said = "judge: the request's budget ran out during this step (killed)"
    return record


def unstarted(driver: DriverSpec) -> DriverRecord:
    """A driver the budget left no time for: every step recorded as timed out."""
    names = [n for n in ("mount", "walk", "modify", "unmount", "fsck") if not (n == "modify" and driver.readonly)]
    return DriverRecord(name=driver.name, steps=[StepRecord(n, -1, "judge: the request's budget ran out before "
                                                               "this driver started", 0.0) for n in names])


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
    until = time.monotonic() + spec.budget if spec.budget else math.inf
    own_mount_namespace()
    log = KernelLog()
    if spec.together and len(spec.drivers) > 1:
        records = judge_together(spec, until)
        stuck, kmsg = stuck_tasks(), log.read()
        hurt = bool(stuck or stop.search(kmsg) or any(r.error for r in records))
        stuck, kmsg = facts(stuck, kmsg)
        return JudgeAnswer(verdicts=records, together=True, hurt=hurt, stuck=stuck, kmsg=kmsg)
    verdicts = []
    for driver in spec.drivers:
        if time.monotonic() >= until:
            verdicts.append(unstarted(driver))
            continue
        start = time.monotonic()
        record = judge_driver(driver, spec.deadlines, until, spec.stall)
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
    conn.shutdown(socket.SHUT_WR)  # the end of the answer, even while a process forked from us holds `conn`


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
