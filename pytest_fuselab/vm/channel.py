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

    def __init__(self, path: Path) -> None:
        self.path = path
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
        self._sock = sock
        threading.Thread(target=self._reader, name=f"fuselab-channel-{self.path.parent.name}",
                         daemon=True).start()

    def _reader(self) -> None:
        assert self._sock is not None
        parts: list[bytes] = []  # only new data is searched for the end of a line
        while True:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                self._fail_all("the guest's agent channel closed (QEMU exited?)")
                return
            while b"\n" in chunk:
                head, chunk = chunk.split(b"\n", 1)
                self._dispatch(b"".join(parts) + head)
                parts = []
            if chunk:
                parts.append(chunk)

    def _dispatch(self, line: bytes) -> None:
        try:
            reply = json.loads(line)
        except ValueError:
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
