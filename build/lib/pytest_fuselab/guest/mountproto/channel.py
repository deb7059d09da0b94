"""Whole packets with fds over a SOCK_SEQPACKET connection, and the JSON-lines transcript of a conversation."""

from __future__ import annotations

import array
import json
import os
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .packets import MAIN, MAX_SEGMENT, Dialect, Packet, ProtocolError, decode


@dataclass
class Received:
    """One receive: bytes, the fds that came with them, and whether the peer has gone (EOF)."""

    data: bytes
    fds: list[int] = field(default_factory=list)
    truncated: bool = False
    eof: bool = False


class Channel:
    """A SOCK_SEQPACKET connection that sends and receives whole packets with fds."""

    def __init__(self, sock: socket.socket, dialect: Dialect = MAIN) -> None:
        self.sock, self.dialect = sock, dialect

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one packet, with `fds` as SCM_RIGHTS."""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        self.sock.sendmsg([data], anc, socket.MSG_EOR | socket.MSG_NOSIGNAL)

    def recv(self, max_fds: int = 8) -> Received:
        """Receive one packet and the fds that came with it (close-on-exec)."""
        data, anc, flags, _ = self.sock.recvmsg(MAX_SEGMENT, socket.CMSG_SPACE(4 * max_fds),
                                                socket.MSG_CMSG_CLOEXEC)
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(array.array("i", payload[:usable]))
        # A zero-length read on SEQPACKET is the peer closing (or sending an empty packet).
        return Received(data, fds, bool(flags & socket.MSG_TRUNC), eof=not data and not fds)

    def packet(self, received: Received) -> Packet:
        """Decode a received packet in this channel's dialect."""
        return decode(received.data, self.dialect)

    def close(self) -> None:
        """Shut the connection down both ways and close it."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def close_fds(fds: Sequence[int]) -> None:
    """Close each fd, ignoring those already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def describe_fd(fd: int) -> str:
    """What kind of file an fd is: "memfd", "chr 10:229" (/dev/fuse), "blk", "reg", "sock"..."""
    try:
        st = os.fstat(fd)
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"bad fd ({exc.strerror})"
    if target.startswith("/memfd:"):
        return "memfd"
    kinds = ((stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"), (stat.S_ISREG, "reg"),
             (stat.S_ISDIR, "dir"), (stat.S_ISSOCK, "sock"), (stat.S_ISFIFO, "fifo"))
    kind = next((name for test, name in kinds if test(st.st_mode)), "other")
    if kind in ("chr", "blk"):
        return f"{kind} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return kind


class Log:
    """The transcript of one conversation: events as JSON lines, flushed as they happen."""

    def __init__(self, path: str | None) -> None:
        self.events: list[dict[str, Any]] = []
        self.path = path

    def __call__(self, event: str, **details: Any) -> None:
        entry = {"t": round(time.monotonic(), 3), "event": event, **details}
        self.events.append(entry)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")


def packet_summary(channel: Channel, received: Received) -> dict[str, Any]:
    """A transcript entry for one received packet, decoded when it follows the layout."""
    out: dict[str, Any] = {"size": len(received.data), "fds": [describe_fd(fd) for fd in received.fds]}
    if received.eof:
        out["eof"] = True
        return out
    try:
        p = channel.packet(received)
        out.update(tag=p.tag, fields=p.fields, text=p.text)
    except ProtocolError as exc:
        out.update(raw=received.data[:64].hex(), error=str(exc))
    return out

