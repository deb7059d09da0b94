"""Host side of the guest agent: JSON lines over the virtio-serial socket of one QEMU."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_fuselab.errors import GuestError, GuestLost, GuestTimeout

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

# The longest line the host accepts from the guest's agent.  The largest legitimate answers are
# a command's output ("run": stdout and stderr in base64, a third larger; dmesg at most 32 MiB),
# a file fetched with "get", and the judge's answer (a few KiB): 64 MiB holds them all.
MAX_LINE = 64 << 20
RECV_SIZE = 1 << 20
UNREADABLE_LOGGED = 10  # a guest sending garbage does not flood the host's log


@dataclass
class Result:
    """What a guest command did."""

    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out

    def __str__(self) -> str:
        what = "timed out" if self.timed_out else f"exited with status {self.exit_status}"
        text = f"guest command {self.command!r} {what} after {self.duration:.1f} s"
        for name, out in (("stdout", self.stdout), ("stderr", self.stderr)):
            if out.strip():
                text += f"\n--- {name} ---\n" + "\n".join(out.strip().splitlines()[-30:])
        return text


class _Pending:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict[str, Any] | None = None


class Channel:
    """One persistent connection to one guest's agent; requests may overlap."""

    def __init__(self, path: Path, max_line: int = MAX_LINE) -> None:
        self.path = path
        self.max_line = max_line
        self._unreadable = 0
        self._sock: socket.socket | None = None
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self.lost: str | None = None

    def connect(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise GuestLost(f"cannot connect to the agent socket {self.path}") from None
                time.sleep(0.01)
        self.attach(sock)

    def attach(self, sock: socket.socket) -> None:
        """Serve replies from the connected `sock` (a fake one in unit tests)."""
        self._sock = sock
        threading.Thread(target=self._reader, name=f"fuselab-channel-{self.path.parent.name}",
                         daemon=True).start()

    def _reader(self) -> None:
        try:
            why = self._read_lines()
        except Exception as exc:  # a reader that died silently would leave every request to time out
            log.exception("the agent channel's reader failed")
            why = f"the host's reader of the agent channel failed: {type(exc).__name__}: {exc}"
        self._fail_all(why)

    def _read_lines(self) -> str:
        """Dispatch each line the guest sends; return why the channel ended."""
        assert self._sock is not None
        parts: list[bytes] = []  # pieces of the line being received; only new data is searched
        size = 0
        while True:
            try:
                chunk = self._sock.recv(RECV_SIZE)
            except OSError:
                chunk = b""
            if not chunk:
                return "the guest's agent channel closed (QEMU exited?)"
            *lines, rest = chunk.split(b"\n")  # one pass: a chunk of newlines stays linear
            for line in lines:
                if parts:
                    parts.append(line)
                    line, parts, size = b"".join(parts), [], 0
                if len(line) > self.max_line:
                    return self._overflow()
                self._dispatch(line)
            if rest:
                parts.append(rest)
                size += len(rest)
                if size > self.max_line:
                    return self._overflow()

    def _overflow(self) -> str:
        limit = f"{self.max_line >> 20} MiB" if self.max_line >= 1 << 20 else f"{self.max_line} bytes"
        why = (f"the guest's agent sent a line longer than {limit} (more than any legitimate answer "
               "needs): the guest is treated as lost and its line dropped")
        log.warning("%s", why)
        return why

    def _dispatch(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            reply = None
        if not isinstance(reply, dict):
            self._unreadable += 1
            if self._unreadable <= UNREADABLE_LOGGED:
                log.warning("unreadable line from the guest agent: %r", line[:200])
            return
        with self._lock:
            pending = self._pending.pop(str(reply.get("id")), None)
        if pending is not None:  # replies to requests of an older life of a snapshot are dropped
            pending.reply = reply
            pending.event.set()

    def _fail_all(self, why: str) -> None:
        with self._lock:
            self.lost = why
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.event.set()

    def request(self, op: str, wait: float, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; raise GuestTimeout/GuestLost/GuestError."""
        if self._sock is None:
            raise GuestLost("the agent channel is not connected")
        rid = f"{self._prefix}-{next(self._ids)}"
        pending = _Pending()
        with self._lock:
            if self.lost:
                raise GuestLost(self.lost)
            self._pending[rid] = pending
        data = (json.dumps({"id": rid, "op": op, **fields}) + "\n").encode()
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise GuestLost(f"the guest's agent channel closed (QEMU exited?): {exc}") from exc
        if not pending.event.wait(wait):
            with self._lock:
                self._pending.pop(rid, None)
            raise GuestTimeout(f"the guest did not answer {op!r} within {wait:.0f} s")
        if pending.reply is None:
            raise GuestLost(self.lost or "the guest went away")
        if not pending.reply.get("ok"):
            raise GuestError(f"guest agent {op!r} failed: {pending.reply.get('error')}")
        return pending.reply

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None


def decode(field: str) -> str:
    return base64.b64decode(field).decode(errors="replace")
