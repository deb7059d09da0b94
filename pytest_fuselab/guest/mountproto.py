#!/usr/bin/python3
"""Both sides of libfuse's mount-service packet protocol (fuservicemount3 <-> fuse server), stdlib only.

Layouts (all numbers big-endian; every packet starts with a 4-byte magic; strings end in NUL;
fds travel with SCM_RIGHTS).  Two dialects: `main` is libfuse's main branch (what a built stack
runs); `v4` is the series as posted in the thread (seed 002):

    SAFT hello       magic, u16 min_version, u16 max_version, u32 flags     12 bytes
    LAST hello reply magic, u16 version, u16 padding (v4: implicit pad)      8
    REPL reply       magic, u32 error (positive errno)                       8
    FILE file reply  magic, u32 error, path NUL  (+ one fd when error is 0)  8+len+1
    OPEN / BDEV      magic, u32 open_flags, create_mode, request_flags,
                     block_size, path NUL                                    20+len+1
    NAME/OPTS/MTAB   magic, value NUL                                        4+len+1
    TYPE             main: magic, u32 fsopen_flags (8); v4: magic, fstype NUL
    MNTP             main: magic, u16 expected_fmt, u16 padding, path NUL; v4: magic, path NUL
    DOIT             main: magic, u32 ms_flags (8); v4: + u16 expected_fmt, 2 pad (12)
    UMNT             v4 only: magic (4); removed upstream
    BYEE             magic, u32 exitcode                                     8
    ARGS (memfd)     magic, u32 argc, argc x (u32 pos, u32 len), NUL-terminated strings

Run in a guest:  mountproto.py serve --attack NAME --log FILE [--listen PATH | fd 3 from systemd]
                 mountproto.py helper --attack NAME --socket PATH --log FILE -- SOURCE MNT [-o OPTS]
"""

from __future__ import annotations

import array
import argparse
import ctypes
import errno
import json
import os
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


def magic_of(tag: bytes) -> int:
    """The protocol's magic for a 4-letter tag: b"SAFT" -> 0x53414654."""
    if len(tag) != 4:
        raise ValueError(f"a magic is 4 bytes, not {tag!r}")
    return int(struct.unpack(">I", tag)[0])


HELLO, HELLO_REPLY = magic_of(b"SAFT"), magic_of(b"LAST")
OPEN, BDEV, FSOPEN, SOURCE = magic_of(b"OPEN"), magic_of(b"BDEV"), magic_of(b"TYPE"), magic_of(b"NAME")
MNTOPTS, MNTPT, MOUNT, UNMOUNT = magic_of(b"OPTS"), magic_of(b"MNTP"), magic_of(b"DOIT"), magic_of(b"UMNT")
BYE, MTABOPTS = magic_of(b"BYEE"), magic_of(b"MTAB")
FILE_REPLY, SIMPLE_REPLY = magic_of(b"FILE"), magic_of(b"REPL")
ARGS_MAGIC = magic_of(b"ARGS")

PROTO_VERSION = 1
FLAG_ALLOW_OTHER, FLAG_FUSEBLK = 1 << 0, 1 << 1
OPEN_QUIET = 1 << 0
FSOPEN_FUSEBLK = 1 << 0
ARGV_NAME, FUSEDEV_NAME = "argv", "fusedev"
EXIT_FALLBACK = 2  # the helper's "no service here, mount the classic way"
MAX_SEGMENT = 1 << 18  # receive buffer: larger than any packet either side accepts


class ProtocolError(Exception):
    """A packet that does not follow the layout; the message says which rule it breaks."""


@dataclass(frozen=True)
class Layout:
    """Fixed fields after the magic (a struct format without the byte-order mark) and a string tail."""

    fmt: str
    names: tuple[str, ...]
    string: bool = False

    @property
    def fixed_size(self) -> int:
        return 4 + struct.calcsize(">" + self.fmt)


_OPEN = Layout("IIII", ("open_flags", "create_mode", "request_flags", "block_size"), True)
_STRING = Layout("", (), True)
_COMMON: dict[int, Layout] = {
    HELLO: Layout("HHI", ("min_version", "max_version", "flags")),
    HELLO_REPLY: Layout("HH", ("version", "padding")),
    SIMPLE_REPLY: Layout("I", ("error",)),
    FILE_REPLY: Layout("I", ("error",), True),
    OPEN: _OPEN, BDEV: _OPEN, SOURCE: _STRING, MNTOPTS: _STRING, MTABOPTS: _STRING,
    BYE: Layout("I", ("exitcode",)),
}


@dataclass(frozen=True)
class Dialect:
    """One version of the protocol: its layouts, largest command and known hello flags."""

    name: str
    layouts: dict[int, Layout]
    max_command: int
    hello_flags: int


MAIN = Dialect("main", {**_COMMON, FSOPEN: Layout("I", ("fsopen_flags",)),
                        MNTPT: Layout("HH", ("expected_fmt", "padding"), True),
                        MOUNT: Layout("I", ("ms_flags",))},
               max_command=65536, hello_flags=FLAG_ALLOW_OTHER | FLAG_FUSEBLK)
V4 = Dialect("v4", {**_COMMON, HELLO_REPLY: Layout("H2x", ("version",)), FSOPEN: _STRING,
                    MNTPT: _STRING, MOUNT: Layout("IH2x", ("ms_flags", "expected_fmt")),
                    UNMOUNT: Layout("", ())},
             max_command=32768, hello_flags=FLAG_ALLOW_OTHER)
DIALECTS = {d.name: d for d in (MAIN, V4)}


def tag_of(magic: int) -> str:
    """b"SAFT"-style name of a magic, or its hex when it is not printable."""
    raw = struct.pack(">I", magic & 0xFFFFFFFF)
    return raw.decode("ascii") if all(0x20 < b < 0x7F for b in raw) else f"0x{magic:08x}"


def encode(magic: int, dialect: Dialect = MAIN, text: str | bytes | None = None, *,
           nul: bool = True, **fields: int) -> bytes:
    """One packet: the magic, its fixed fields in layout order, then the string (NUL-terminated
    unless nul=False).  Missing fields are 0; unknown field names are an error."""
    return pack(magic, dialect, text, fields, nul)


def pack(magic: int, dialect: Dialect, text: str | bytes | None, fields: dict[str, int],
         nul: bool = True) -> bytes:
    """`encode` with the fields as a dict."""
    layout = dialect.layouts.get(magic, Layout("", (), text is not None))
    unknown = set(fields) - set(layout.names)
    if unknown:
        raise ValueError(f"{tag_of(magic)} has no field(s) {sorted(unknown)} in dialect {dialect.name}")
    body = struct.pack(">I" + layout.fmt, magic, *(fields.get(n, 0) for n in layout.names))
    if text is not None:
        body += text.encode() if isinstance(text, str) else text
        body += b"\0" if nul else b""
    return body


@dataclass(frozen=True)
class Packet:
    """A decoded packet: its tag, fixed fields, string (without the NUL) and raw bytes."""

    magic: int
    fields: dict[str, int]
    text: str | None
    raw: bytes

    @property
    def tag(self) -> str:
        return tag_of(self.magic)


def decode(raw: bytes, dialect: Dialect = MAIN) -> Packet:
    """Parse one packet with the same size and termination rules the C peers apply."""
    if len(raw) < 4:
        raise ProtocolError(f"packet of {len(raw)} bytes is shorter than its 4-byte magic")
    magic = int(struct.unpack_from(">I", raw)[0])
    layout = dialect.layouts.get(magic)
    if layout is None:
        raise ProtocolError(f"unknown magic {tag_of(magic)} in dialect {dialect.name}")
    if len(raw) < layout.fixed_size or (not layout.string and len(raw) != layout.fixed_size):
        raise ProtocolError(f"{tag_of(magic)} is {len(raw)} bytes, layout needs "
                            f"{'at least ' if layout.string else ''}{layout.fixed_size}")
    values = struct.unpack_from(">" + layout.fmt, raw, 4)
    text = None
    if layout.string:
        tail = raw[layout.fixed_size:]
        if not tail.endswith(b"\0"):
            raise ProtocolError(f"{tag_of(magic)} string is not NUL-terminated")
        text = tail[:-1].decode(errors="surrogateescape")
    return Packet(magic, dict(zip(layout.names, values, strict=True)), text, raw)


def encode_args(argv: Sequence[str | bytes]) -> bytes:
    """The ARGS memfd: header, one (pos, len) per string (len counts the NUL), then the strings."""
    strings = [(a.encode() if isinstance(a, str) else a) + b"\0" for a in argv]
    pos = 8 + 8 * len(strings)
    table, blob = b"", b""
    for s in strings:
        table += struct.pack(">II", pos + len(blob), len(s))
        blob += s
    return struct.pack(">II", ARGS_MAGIC, len(strings)) + table + blob


def decode_args(data: bytes) -> list[str]:
    """Read an ARGS memfd the way a fuse server does; ProtocolError on any inconsistency."""
    if len(data) < 8:
        raise ProtocolError(f"ARGS file of {len(data)} bytes has no header")
    magic, argc = struct.unpack_from(">II", data)
    if magic != ARGS_MAGIC:
        raise ProtocolError(f"ARGS file magic is {tag_of(magic)}")
    args = []
    for i in range(argc):
        if 8 + 8 * (i + 1) > len(data):
            raise ProtocolError(f"ARGS entry {i} of {argc} is past the end of the file")
        pos, length = struct.unpack_from(">II", data, 8 + 8 * i)
        if pos + length > len(data) or length == 0 or data[pos + length - 1] != 0:
            raise ProtocolError(f"ARGS string {i} (pos {pos}, len {length}) is out of range or unterminated")
        args.append(data[pos:pos + length - 1].decode(errors="surrogateescape"))
    return args


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
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        self.sock.sendmsg([data], anc, socket.MSG_EOR | socket.MSG_NOSIGNAL)

    def recv(self, max_fds: int = 8) -> Received:
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
        return decode(received.data, self.dialect)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def close_fds(fds: Sequence[int]) -> None:
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


# ---------------------------------------------------------------- the fuse-server side


class ServerSession:
    """The fuse-server end of one accepted connection (what `fuse_service_accept` does)."""

    def __init__(self, channel: Channel, log: Log) -> None:
        self.channel, self.log = channel, log
        self.args: list[str] = []
        self.fusedev = -1
        self.hello: Packet | None = None

    def handshake(self, reply: bytes | None = None) -> None:
        """Receive hello, answer it, take the argv memfd and /dev/fuse."""
        got = self.channel.recv()
        self.log("hello", **packet_summary(self.channel, got))
        self.hello = self.channel.packet(got)
        if self.hello.magic != HELLO:
            raise ProtocolError(f"expected SAFT, got {self.hello.tag}")
        self.channel.send(reply if reply is not None else encode(HELLO_REPLY, self.channel.dialect,
                                                                  version=PROTO_VERSION))
        argv_fd = self.receive_file(ARGV_NAME)
        try:  # pread from 0, as libfuse does: the helper leaves the file offset at the end
            self.args = decode_args(os.pread(argv_fd, MAX_SEGMENT, 0))
        finally:
            os.close(argv_fd)
        self.log("args", argv=self.args)
        self.fusedev = self.receive_file(FUSEDEV_NAME)

    def receive_file(self, name: str) -> int:
        got = self.channel.recv()
        self.log("file", **packet_summary(self.channel, got))
        p = self.channel.packet(got)
        if p.magic != FILE_REPLY or p.text != name:
            close_fds(got.fds)
            raise ProtocolError(f"expected FILE {name!r}, got {p.tag} {p.text!r}")
        if p.fields["error"]:
            raise ProtocolError(f"helper could not give {name}: {errno.errorcode.get(p.fields['error'])}")
        if len(got.fds) != 1:
            close_fds(got.fds)
            raise ProtocolError(f"FILE {name!r} came with {len(got.fds)} fds")
        return got.fds[0]

    def request(self, data: bytes, fds: Sequence[int] = (), note: str = "") -> dict[str, Any]:
        """Send one command (any bytes) and read the helper's answer, which may be EOF."""
        entry: dict[str, Any] = {"sent": tag_of(int.from_bytes(data[:4], "big")) if len(data) >= 4
                                 else data.hex(), "size": len(data), "note": note}
        try:
            self.channel.send(data, fds)
        except OSError as exc:
            entry["send_error"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.log("request", **entry)
            return entry
        try:
            got = self.channel.recv()
        except OSError as exc:
            entry["recv_error"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.log("request", **entry)
            return entry
        entry["answer"] = packet_summary(self.channel, got)
        answer = entry["answer"]
        if "fields" in answer and "error" in answer["fields"]:
            answer["errno"] = errno.errorcode.get(answer["fields"]["error"], "OK")
        close_fds(got.fds)
        self.log("request", **entry)
        return entry

    def string(self, magic: int, value: str, note: str = "") -> dict[str, Any]:
        return self.request(encode(magic, self.channel.dialect, value), note=note)

    def mountpoint(self) -> str:
        """The mountpoint the caller named: argv is [subtype, source, mountpoint, ...]."""
        return self.args[2] if len(self.args) > 2 else "/nonexistent"

    def source(self) -> str:
        return self.args[1] if len(self.args) > 1 else "none"

    def setup_mount(self) -> list[dict[str, Any]]:
        """TYPE, NAME, OPTS, MNTP as a well-behaved server sends them."""
        d = self.channel.dialect
        kind = encode(FSOPEN, d, "fuse." + (self.args[0] if self.args else "hostile")) if d is V4 \
            else encode(FSOPEN, d, fsopen_flags=0)
        mnt = pack(MNTPT, d, self.mountpoint(), {} if d is V4 else {"expected_fmt": stat.S_IFDIR})
        return [self.request(kind, note="type"), self.string(SOURCE, self.source(), "source"),
                self.string(MNTOPTS, "ro", "options"), self.request(mnt, note="mountpoint")]

    def bye(self, code: int = 0) -> dict[str, Any]:
        """BYEE; the helper exits after it, so the answer is EOF."""
        return self.request(encode(BYE, self.channel.dialect, exitcode=code), note="bye")


Attack = Callable[[ServerSession], object]
Make = Callable[[ServerSession], bytes]


def steps(*actions: Attack) -> Attack:
    """An attack made of actions run in order."""
    def run(s: ServerSession) -> None:
        for action in actions:
            action(s)
    return run


def req(make: Make, note: str = "", with_fd: bool = False) -> Attack:
    """Send the packet `make` builds (with /dev/fuse attached when with_fd) and log the answer."""
    return lambda s: s.request(make(s), [s.fusedev] if with_fd else [], note)


def packet(magic: int, text: str | None = None, nul: bool = True, dialect: Dialect = MAIN,
           **fields: int) -> Make:
    return lambda s: pack(magic, dialect, text, fields, nul)


def at_mountpoint(**fields: int) -> Make:
    return lambda s: pack(MNTPT, MAIN, s.mountpoint(), fields)


def die(code: int = 9) -> Attack:
    """The server process ends at once, without BYEE."""
    return lambda s: os._exit(code)


SETUP, BYE0 = ServerSession.setup_mount, (lambda s: s.bye(0))
MOUNT_NOW = req(packet(MOUNT), "mount")
SOURCE_NOW = req(lambda s: encode(SOURCE, MAIN, s.source()), "source")
DIR = stat.S_IFDIR

SERVER_ATTACKS: dict[str, Attack] = {
    # The positive control: a correct conversation up to a real mount, then a clean goodbye.
    "mount_then_bye": steps(SETUP, MOUNT_NOW, BYE0),
    "bye_failure": lambda s: s.bye(1),
    "wrong_magic": req(lambda s: b"XXXX" + bytes(4), "wrong magic"),
    "unknown_command": req(lambda s: magic_of(b"ZZZZ").to_bytes(4, "big"), "unknown command"),
    "undersized": req(lambda s: b"NA", "2-byte packet"),
    "empty_packet": req(lambda s: b"", "0-byte packet"),
    "oversized": req(lambda s: encode(SOURCE, MAIN, "x" * (s.channel.dialect.max_command + 1)), "over max"),
    "max_sized_source": steps(req(lambda s: encode(SOURCE, MAIN, "x" * (s.channel.dialect.max_command - 5)),
                                  "exactly max"), BYE0),
    "string_without_nul": steps(req(packet(SOURCE, "src", nul=False)), BYE0),
    "empty_string": steps(req(packet(SOURCE, "")), BYE0),
    "repeated_source": steps(req(packet(SOURCE, "a")), req(packet(SOURCE, "b")), BYE0),
    "repeated_options": steps(req(packet(MNTOPTS, "ro")), req(packet(MNTOPTS, "rw")), BYE0),
    "repeated_type": steps(req(packet(FSOPEN)), req(packet(FSOPEN)), BYE0),
    "repeated_mountpoint": steps(SETUP, req(at_mountpoint(expected_fmt=DIR)), BYE0),
    "mount_before_mountpoint": steps(req(packet(FSOPEN)), SOURCE_NOW, MOUNT_NOW, BYE0),
    "mount_before_anything": steps(MOUNT_NOW, BYE0),
    "unmount_before_mount": steps(req(packet(UNMOUNT, dialect=V4), "UMNT"), BYE0),
    "mountpoint_not_in_argv": steps(req(packet(MNTPT, "/etc", expected_fmt=DIR)), BYE0),
    "mountpoint_padding": steps(req(at_mountpoint(expected_fmt=DIR, padding=1)), BYE0),
    "mountpoint_weird_format": steps(req(at_mountpoint(expected_fmt=stat.S_IFCHR)), BYE0),
    "mountpoint_wrong_format": steps(req(at_mountpoint(expected_fmt=stat.S_IFREG)), BYE0),
    "allow_other": steps(req(packet(MNTOPTS, "rw,allow_other")), BYE0),
    "allow_root": steps(req(packet(MNTOPTS, "allow_root")), BYE0),
    "fsopen_unknown_flags": steps(req(packet(FSOPEN, fsopen_flags=0x80)), BYE0),
    "fsopen_fuseblk": steps(req(packet(FSOPEN, fsopen_flags=FSOPEN_FUSEBLK)), BYE0),
    "mount_wrong_size": steps(SETUP, req(packet(MOUNT, dialect=V4), "12-byte DOIT"), BYE0),
    "open_unknown_flags": steps(req(packet(OPEN, "/dev/null", request_flags=0x100)), BYE0),
    "open_without_nul": steps(req(packet(OPEN, "/dev/null", nul=False)), BYE0),
    "open_undersized": steps(req(lambda s: encode(OPEN, MAIN)[:12]), BYE0),
    "open_secret": steps(req(packet(OPEN, "/etc/shadow")), BYE0),
    "bdev_not_block": steps(req(packet(BDEV, "/etc/hostname")), BYE0),
    "unexpected_fd": steps(req(lambda s: encode(SOURCE, MAIN, s.source()), "command with an fd", True), BYE0),
    "die_before_bye": steps(SETUP, MOUNT_NOW, die()),
    "die_after_mountpoint": steps(SETUP, die()),
}


def serve(channel: Channel, attack: str, log: Log) -> int:
    """Run one named attack on an accepted connection; 0 when it ran to its end."""
    session = ServerSession(channel, log)
    try:
        session.handshake()
        log("attack", name=attack)
        SERVER_ATTACKS[attack](session)
    except (OSError, ProtocolError) as exc:
        log("stopped", error=str(exc))
        return 1
    finally:
        close_fds([session.fusedev] if session.fusedev >= 0 else [])
        channel.close()
    log("done")
    return 0


def systemd_socket() -> socket.socket:
    """The connection systemd hands an Accept=yes service: fd 3, when LISTEN_PID is us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        raise ProtocolError("no socket from systemd (LISTEN_PID/LISTEN_FDS unset): use --listen PATH")
    return socket.socket(fileno=3)


def listen(path: str, mode: int = 0o666) -> socket.socket:
    """A SEQPACKET listener at PATH, as a .socket unit with ListenSequentialPacket= makes it."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(path)
    os.chmod(path, mode)
    sock.listen(4)
    return sock


# ---------------------------------------------------------------- the helper side


def memfd_with(data: bytes) -> int:
    fd = os.memfd_create("fuse service argv", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


class HelperSession:
    """The mount-helper end: connect, hello, send argv and /dev/fuse, answer the server."""

    def __init__(self, channel: Channel, log: Log, argv: list[str]) -> None:
        self.channel, self.log, self.argv = channel, log, argv
        self.mounted = ""
        self.fusedev = -1

    @classmethod
    def connect(cls, path: str, log: Log, argv: list[str], dialect: Dialect = MAIN) -> HelperSession:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.connect(path)
        log("connected", socket=path)
        return cls(Channel(sock, dialect), log, argv)

    def send(self, data: bytes, fds: Sequence[int] = (), note: str = "") -> bool:
        try:
            self.channel.send(data, fds)
        except OSError as exc:
            self.log("send", note=note, size=len(data), error=errno.errorcode.get(exc.errno or 0, "?"))
            return False
        self.log("send", note=note, size=len(data), fds=len(fds))
        return True

    def answer(self) -> dict[str, Any]:
        """Wait for the server's next packet (or EOF) and log it."""
        try:
            got = self.channel.recv()
        except OSError as exc:
            entry = {"recv_error": errno.errorcode.get(exc.errno or 0, "?")}
            self.log("recv", **entry)
            return entry
        summary = packet_summary(self.channel, got)
        close_fds(got.fds)
        self.log("recv", **summary)
        return summary

    def hello(self, flags: int = 0, **override: int) -> dict[str, Any]:
        fields = {"min_version": PROTO_VERSION, "max_version": PROTO_VERSION, "flags": flags, **override}
        self.send(pack(HELLO, self.channel.dialect, None, fields), note="hello")
        return self.answer()

    def send_file(self, name: str, fds: Sequence[int], error: int = 0) -> bool:
        return self.send(encode(FILE_REPLY, self.channel.dialect, name, error=error), fds, note=f"file {name}")

    def files(self, argv_fd: int | None = None, fusedev_fd: int | None = None) -> None:
        """Send argv (a memfd in ARGS layout) and /dev/fuse, or the fds given instead."""
        own = []
        if argv_fd is None:
            argv_fd = memfd_with(encode_args(self.argv))
            own.append(argv_fd)
        if fusedev_fd is None:
            fusedev_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
            own.append(fusedev_fd)
        self.fusedev = fusedev_fd
        self.send_file(ARGV_NAME, [argv_fd])
        self.send_file(FUSEDEV_NAME, [fusedev_fd])
        close_fds([fd for fd in own if fd != fusedev_fd])

    def serve_requests(self, reply: Callable[[HelperSession, Packet, Received], bool] | None = None,
                       limit: int = 64) -> dict[str, Any]:
        """Answer the server's commands until BYEE or EOF; `reply` may override any answer."""
        for _ in range(limit):
            got = self.channel.recv()
            summary = packet_summary(self.channel, got)
            self.log("command", **summary)
            close_fds(got.fds)
            if got.eof:
                return {"end": "eof"}
            try:
                packet = self.channel.packet(got)
            except ProtocolError as exc:  # fuservicemount3 gives up on any such packet
                return {"end": "refused", "error": str(exc)}
            if packet.magic == BYE:
                return {"end": "bye", "exitcode": packet.fields["exitcode"]}
            if reply is None or not reply(self, packet, got):
                self.honest_reply(packet)
        return {"end": "limit"}

    def honest_reply(self, packet: Packet) -> None:
        """What fuservicemount3 answers (as root): open files, accept strings, mount on DOIT."""
        d = self.channel.dialect
        if packet.magic in (OPEN, BDEV):
            self.reply_open(packet)
        elif packet.magic == MOUNT:
            self.send(encode(SIMPLE_REPLY, d, error=self.do_mount()), note="mount reply")
        else:
            self.remember(packet)
            self.send(encode(SIMPLE_REPLY, d, error=0), note=f"{packet.tag} reply")

    def remember(self, packet: Packet) -> None:
        keys = {SOURCE: "source", MNTOPTS: "options", MNTPT: "mountpoint", FSOPEN: "type"}
        if packet.magic in keys:
            setattr(self, "want_" + keys[packet.magic], packet.text if packet.text is not None
                    else packet.fields)

    def reply_open(self, packet: Packet) -> None:
        path = packet.text or ""
        try:
            fd = os.open(path, packet.fields["open_flags"] | os.O_CLOEXEC, packet.fields["create_mode"])
        except OSError as exc:
            self.send_file(path, [], error=exc.errno or errno.EIO)
            return
        if packet.magic == BDEV and not stat.S_ISBLK(os.fstat(fd).st_mode):
            os.close(fd)
            self.send_file(path, [], error=errno.ENOTBLK)
            return
        self.send_file(path, [fd])
        os.close(fd)

    def do_mount(self) -> int:
        """mount(2) the fuse connection where the server asked; positive errno or 0."""
        target = str(getattr(self, "want_mountpoint", "") or "")
        source = str(getattr(self, "want_source", "") or "none")
        opts = str(getattr(self, "want_options", "") or "")
        subtype = self.argv[0] if self.argv else "hostile"
        data = f"{opts + ',' if opts else ''}fd={self.fusedev},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}"
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.mount(source.encode(), target.encode(), f"fuse.{subtype}".encode(), 0, data.encode())
        if rc != 0:
            return ctypes.get_errno()
        self.mounted = target
        return 0


HelperAttack = Callable[[HelperSession], dict[str, Any]]


def _after_hello(flags: int = 0, **override: int) -> HelperAttack:
    return lambda h: h.hello(flags, **override)


def _file_fd(open_fd: Callable[[], int], which: str) -> HelperAttack:
    def attack(h: HelperSession) -> dict[str, Any]:
        h.hello()
        fd = open_fd()
        if which == ARGV_NAME:
            h.files(argv_fd=fd)
        else:
            h.files(fusedev_fd=fd)
        return h.serve_requests()
    return attack


def _raw_after_hello(data: bytes, fds: Callable[[], list[int]] = list) -> HelperAttack:
    def attack(h: HelperSession) -> dict[str, Any]:
        h.hello()
        h.send(data, fds(), note="raw")
        return h.answer()
    return attack


def _args_file(data: bytes) -> HelperAttack:
    return _file_fd(lambda: memfd_with(data), ARGV_NAME)


def _dev(path: str, flags: int = os.O_RDONLY) -> Callable[[], int]:
    return lambda: os.open(path, flags | os.O_CLOEXEC)


def _good(h: HelperSession) -> dict[str, Any]:
    h.hello()
    h.files()
    return h.serve_requests()


def _refuse_all(h: HelperSession) -> dict[str, Any]:
    h.hello()
    h.files()

    def refuse(h: HelperSession, p: Packet, got: Received) -> bool:
        if p.magic in (OPEN, BDEV):
            h.send_file(p.text or "", [], error=errno.EACCES)
        else:
            h.send(encode(SIMPLE_REPLY, h.channel.dialect, error=errno.EPERM))
        return True
    return h.serve_requests(refuse)


def _wrong_replies(h: HelperSession) -> dict[str, Any]:
    """Answer every command with the other kind of reply (REPL for OPEN, FILE for strings)."""
    h.hello()
    h.files()

    def swap(h: HelperSession, p: Packet, got: Received) -> bool:
        if p.magic in (OPEN, BDEV):
            h.send(encode(SIMPLE_REPLY, h.channel.dialect, error=0))
        else:
            h.send_file("x", [])
        return True
    return h.serve_requests(swap)


def _open_wrong_type(h: HelperSession) -> dict[str, Any]:
    """Answer OPEN/BDEV for the device with a socket fd under the requested name."""
    h.hello()
    h.files()

    def sock_fd(h: HelperSession, p: Packet, got: Received) -> bool:
        if p.magic not in (OPEN, BDEV):
            return False
        a, b = socket.socketpair()
        h.send_file(p.text or "", [a.fileno()])
        a.close()
        b.close()
        return True
    return h.serve_requests(sock_fd)


def _argv_no_nul(h: HelperSession) -> dict[str, Any]:
    """FILE "argv" whose name lacks its NUL, then the rest of an honest conversation."""
    h.hello()
    argv_fd = memfd_with(encode_args(h.argv))
    h.send(encode(FILE_REPLY, h.channel.dialect, ARGV_NAME, nul=False), [argv_fd], note="argv without NUL")
    os.close(argv_fd)
    h.fusedev = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    h.send_file(FUSEDEV_NAME, [h.fusedev])
    return h.serve_requests()


HELPER_ATTACKS: dict[str, HelperAttack] = {
    "good": _good,
    "refuse_all": _refuse_all,
    "hello_wrong_magic": lambda h: (h.send(b"TFAS" + bytes(8)), h.answer())[1],
    "hello_undersized": lambda h: (h.send(encode(HELLO)[:8]), h.answer())[1],
    "hello_oversized": lambda h: (h.send(encode(HELLO) + bytes(4096)), h.answer())[1],
    "hello_empty": lambda h: (h.send(b""), h.answer())[1],
    "hello_unknown_flags": _after_hello(1 << 7),
    "hello_min_above_max": _after_hello(min_version=2, max_version=1),
    "hello_future_version": _after_hello(min_version=2, max_version=9),
    "hello_then_close": lambda h: (h.hello(), h.send(b"", note="empty packet"), {"end": "sent empty"})[-1],
    "hello_twice": lambda h: (h.hello(), h.hello())[1],
    "files_swapped": lambda h: (h.hello(), h.send_file(FUSEDEV_NAME, [os.open("/dev/fuse", os.O_RDWR)]),
                                h.answer())[-1],
    "argv_without_fd": lambda h: (h.hello(), h.send_file(ARGV_NAME, []), h.answer())[-1],
    "argv_two_fds": lambda h: (h.hello(), h.send_file(ARGV_NAME, [memfd_with(encode_args(h.argv)),
                                                                 os.open("/dev/null", os.O_RDONLY)]),
                               h.answer())[-1],
    "argv_error": lambda h: (h.hello(), h.send_file(ARGV_NAME, [], error=errno.EIO), h.answer())[-1],
    "argv_no_nul": _argv_no_nul,
    "argv_unknown_command": _raw_after_hello(b"ZZZZ" + bytes(12)),
    "argv_is_socket": _file_fd(lambda: os.dup(socket.socketpair()[0].fileno()), ARGV_NAME),
    "argv_is_devnull": _file_fd(_dev("/dev/null"), ARGV_NAME),
    "argv_is_directory": _file_fd(_dev("/", os.O_RDONLY | os.O_DIRECTORY), ARGV_NAME),
    "args_bad_magic": _args_file(b"ARGZ" + encode_args(["ext4"])[4:]),
    "args_huge_argc": _args_file(struct.pack(">II", ARGS_MAGIC, 0x7FFFFFFF)),
    "args_out_of_range": _args_file(struct.pack(">IIII", ARGS_MAGIC, 1, 1 << 30, 1 << 30)),
    "args_empty": _args_file(b""),
    "fusedev_is_devnull": _file_fd(_dev("/dev/null", os.O_RDWR), FUSEDEV_NAME),
    "fusedev_is_memfd": _file_fd(lambda: memfd_with(b"\0" * 64), FUSEDEV_NAME),
    "wrong_replies": _wrong_replies,
    "open_wrong_type": _open_wrong_type,
}


def run_helper(path: str, attack: str, log: Log, argv: list[str]) -> int:
    """Drive a real server through one attack; 0 when the conversation ran to its end."""
    try:
        session = HelperSession.connect(path, log, argv)
    except OSError as exc:
        log("connect", error=errno.errorcode.get(exc.errno or 0, str(exc)))
        return EXIT_FALLBACK if exc.errno in (errno.ENOENT, errno.ECONNREFUSED) else 1
    try:
        result = HELPER_ATTACKS[attack](session)
        log("result", **result, mounted=session.mounted)
    except (OSError, ProtocolError) as exc:
        log("stopped", error=str(exc), mounted=session.mounted)
        return 1
    finally:
        session.channel.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mountproto", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="side", required=True)
    srv = sub.add_parser("serve", help="be a (hostile) fuse server behind the service socket")
    srv.add_argument("--attack", choices=sorted(SERVER_ATTACKS), required=True)
    srv.add_argument("--listen", help="bind this socket path and serve one connection (else fd 3 from systemd)")
    srv.add_argument("--log", help="append the transcript here (JSON lines)")
    srv.add_argument("--dialect", choices=sorted(DIALECTS), default="main")
    hlp = sub.add_parser("helper", help="be a (hostile) mount helper towards a real server")
    hlp.add_argument("--attack", choices=sorted(HELPER_ATTACKS), required=True)
    hlp.add_argument("--socket", required=True)
    hlp.add_argument("--log")
    hlp.add_argument("--dialect", choices=sorted(DIALECTS), default="main")
    hlp.add_argument("args", nargs="*", help="argv for the server: SUBTYPE SOURCE MOUNTPOINT [-o OPTS]")
    ns = parser.parse_args(argv)
    log, dialect = Log(ns.log), DIALECTS[ns.dialect]
    if ns.side == "helper":
        return run_helper(ns.socket, ns.attack, log, ns.args)
    if ns.listen:
        with listen(ns.listen) as server:
            log("listening", socket=ns.listen)
            conn, _ = server.accept()
    else:
        conn = systemd_socket()
    return serve(Channel(conn, dialect), ns.attack, log)


if __name__ == "__main__":
    sys.exit(main())
