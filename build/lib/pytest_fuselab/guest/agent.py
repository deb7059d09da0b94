"""The command agent that runs inside the guest (from the lab's initramfs layer, stdlib only).

It serves one virtio-serial port with newline-delimited JSON requests:
``{"id": N, "op": "run"|"put"|"get"|"ping"|"disk"|"judge"|"tasks", ...}`` and answers each with
``{"id": N, "ok": true, ...}`` or ``{"id": N, "ok": false, "error": "..."}``.
Requests run in threads, so the host can have several commands in flight.
Command output goes to temporary files, not pipes: a daemon that inherits
stdout (a FUSE server, say) cannot keep a command from finishing.  "judge" hands a spec to
the resident judge (judge.py --serve, started on first use) and returns its answer, unread
(the host checks it: protocol.JudgeAnswer); "tasks" returns the tasks stuck in D state
(tasks.py; protocol.HealthFacts), without the cost of a process.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from pytest_fuselab.guest import tasks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

    Request = dict[str, Any]  # a request as JSON gave it; the host builds it (vm/channel.py)
    Reply = dict[str, Any]

PORT_NAME = "org.fuselab.agent"
WORK_DIR = "/run/fuselab-agent"
SERVERS_DIR = "/run/fuselab/servers"
GUEST_LIB = "/usr/local/lib/fuselab"  # the package pytest_fuselab.guest, from the initramfs layer
JUDGE = "pytest_fuselab.guest.judge"
JUDGE_SOCKET = "/run/fuselab/judge.sock"
judge_lock = threading.Lock()


def find_port() -> str | None:
    """The device node of the lab's virtio-serial port, once the kernel has it."""
    for path in glob.glob("/sys/class/virtio-ports/*/name"):
        with open(path) as f:
            if f.read().strip() == PORT_NAME:
                return "/dev/" + path.split("/")[-2]
    return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def read_output(f: IO[bytes]) -> bytes:
    f.seek(0)
    return f.read()


def op_run(req: Request) -> Reply:
    timeout = req.get("timeout")
    env = dict(os.environ, **req.get("env", {}))
    stdin = base64.b64decode(req.get("stdin", ""))
    argv = req["argv"] if "argv" in req else ["/bin/sh", "-c", req["sh"]]
    with tempfile.TemporaryFile(dir=WORK_DIR) as out, tempfile.TemporaryFile(dir=WORK_DIR) as err, \
            tempfile.TemporaryFile(dir=WORK_DIR) as inp:
        inp.write(stdin)
        inp.seek(0)
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=inp, stdout=out, stderr=err, env=env,
                                cwd=req.get("cwd") or "/", start_new_session=True)
        timed_out = False
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = proc.wait()
        return {"status": status, "stdout": b64(read_output(out)), "stderr": b64(read_output(err)),
                "timed_out": timed_out, "duration": time.monotonic() - start}


def op_put(req: Request) -> Reply:
    path = req["path"]
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    tmp = path + ".fuselab-tmp"
    with open(tmp, "wb") as f:
        f.write(base64.b64decode(req["data"]))
    os.chmod(tmp, req.get("mode", 0o644))
    os.rename(tmp, path)
    return {}


def op_get(req: Request) -> Reply:
    with open(req["path"], "rb") as f:
        return {"data": b64(f.read())}


def op_ping(req: Request) -> Reply:
    if req.get("time"):
        time.clock_settime(time.CLOCK_REALTIME, req["time"])
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return {"boot_id": boot_id, "uptime": uptime}


def op_disk(req: Request) -> Reply:
    """Wait until a virtio disk with the given serial appears (and its first `partitions`
    partitions); return its /dev path and size, and each partition's."""
    deadline = time.monotonic() + req.get("timeout", 30)
    while time.monotonic() < deadline:
        for path in glob.glob("/sys/block/*/serial"):
            try:  # a disk being unplugged vanishes under us (ENODEV, ENOENT): not the one we wait for
                with open(path) as f:
                    if f.read().strip() != req["serial"]:
                        continue
                found = disk_nodes(os.path.dirname(path), req.get("partitions", 0))
            except OSError:
                continue
            if found:
                return found
        time.sleep(0.02)
    raise TimeoutError(f"no disk with serial {req['serial']!r} appeared"
                       + (f" with {req['partitions']} partitions" if req.get("partitions") else ""))


def disk_nodes(sysdir: str, partitions: int) -> Reply | None:
    """{"path", "size", "partitions": [{"path", "size"}]} of the disk at `sysdir`, once its
    device node and those of its first `partitions` partitions exist; else None."""
    def node(directory: str) -> dict[str, Any] | None:
        dev = "/dev/" + os.path.basename(directory)
        if not os.path.exists(dev):
            return None
        with open(os.path.join(directory, "size")) as f:
            return {"path": dev, "size": int(f.read()) * 512}

    disk = node(sysdir)
    parts = []
    for entry in glob.glob(os.path.join(sysdir, "*", "partition")):
        with open(entry) as f:
            number = int(f.read())
        if number <= partitions:
            parts.append((number, node(os.path.dirname(entry))))
    if disk is None or len(parts) < partitions or not all(p for _, p in parts):
        return None
    return {**disk, "partitions": [p for _, p in sorted(parts)]}


def judge_connection() -> socket.socket:
    """A connection to the resident judge, started first if it does not answer."""
    with judge_lock:
        deadline = None
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(JUDGE_SOCKET)
                return conn
            except OSError:
                conn.close()
            if deadline is None:
                deadline = time.monotonic() + 60
                with open(os.path.join(WORK_DIR, "judge.log"), "ab") as log:
                    subprocess.Popen(["/usr/bin/python3", "-S", "-m", JUDGE, "--serve", JUDGE_SOCKET],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            elif time.monotonic() > deadline:
                raise TimeoutError(f"the resident judge did not listen on {JUDGE_SOCKET} within 60 s")
            time.sleep(0.05)


def op_judge(req: Request) -> Reply:
    """Judge req["spec"] in the resident judge; past req["timeout"], kill that judge."""
    start = time.monotonic()
    with judge_connection() as conn, conn.makefile("rb") as reader:
        conn.sendall(json.dumps(req["spec"]).encode() + b"\n")
        conn.settimeout(req.get("timeout"))
        pid = None
        try:
            pid = json.loads(reader.readline())["pid"]
            answer = reader.read()
        except TimeoutError:
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return {"timed_out": True, "duration": time.monotonic() - start}
    return {"timed_out": False, "answer": json.loads(answer), "duration": time.monotonic() - start}


def op_tasks(req: Request) -> Reply:
    """The tasks in D state all through the next req["grace"] seconds (protocol.HealthFacts)."""
    return {"stuck": tasks.stuck_tasks(float(req.get("grace", tasks.STUCK_GRACE)))}


OPS: dict[str, Callable[[Request], Reply]] = {"run": op_run, "put": op_put, "get": op_get, "ping": op_ping,
                                              "disk": op_disk, "judge": op_judge, "tasks": op_tasks}


class Agent:
    """Serves the requests that arrive on the port `fd`, each in a thread of its own."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, msg: Reply) -> None:
        data = (json.dumps(msg) + "\n").encode()
        with self.lock:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]

    def handle(self, line: bytes) -> None:
        try:
            req = json.loads(line)
        except ValueError as exc:
            self.send({"id": None, "ok": False, "error": f"bad request: {exc}"})
            return
        try:
            reply = OPS[req["op"]](req)
            reply.update(id=req.get("id"), ok=True)
        except Exception as exc:
            reply = {"id": req.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.send(reply)

    def serve(self) -> None:
        parts: list[bytes] = []  # pieces of the line being received; only new data is searched for newlines
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except InterruptedError:
                continue
            if not chunk:  # host side not connected yet
                time.sleep(0.01)
                continue
            while b"\n" in chunk:
                head, chunk = chunk.split(b"\n", 1)
                line = b"".join(parts) + head
                parts = []
                if line.strip():
                    threading.Thread(target=self.handle, args=(line,), daemon=True).start()
            if chunk:
                parts.append(chunk)


def main() -> None:
    os.environ["PYTHONPATH"] = GUEST_LIB  # every command it runs finds `python3 -m pytest_fuselab.guest.X`
    os.makedirs(WORK_DIR, exist_ok=True)
    os.makedirs(SERVERS_DIR, exist_ok=True)  # fates of FUSE servers (fuseserver.py), any user writes
    os.chmod(SERVERS_DIR, 0o1777)
    port = None
    while port is None:
        port = find_port()
        if port is None:
            time.sleep(0.05)
    while not os.path.exists(port):
        time.sleep(0.05)
    fd = os.open(port, os.O_RDWR)
    print(f"fuselab-agent: serving {port}", file=sys.stderr, flush=True)
    Agent(fd).serve()


if __name__ == "__main__":
    main()
