"""The mount-service packets: magics, layouts of both dialects, and their codecs (stdlib only).

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
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass


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
        """Bytes before the string: the magic and the fixed fields."""
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
DIALECTS: dict[str, Dialect] = {d.name: d for d in (MAIN, V4)}


def tag_of(magic: int) -> str:
    """b"SAFT"-style name of a magic, or its hex when it is not printable."""
    raw = struct.pack(">I", magic & 0xFFFFFFFF)
    return raw.decode("ascii") if all(0x20 < b < 0x7F for b in raw) else f"0x{magic:08x}"


def encode(magic: int, dialect: Dialect = MAIN, text: str | bytes | None = None, *,
           nul: bool = True, **fields: int) -> bytes:
    """One packet: magic, fixed fields in layout order (missing ones 0), then the string (NUL unless nul=False)."""
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
        """The packet's magic as its 4-letter name."""
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
    args: list[str] = []
    for i in range(argc):
        if 8 + 8 * (i + 1) > len(data):
            raise ProtocolError(f"ARGS entry {i} of {argc} is past the end of the file")
        pos, length = struct.unpack_from(">II", data, 8 + 8 * i)
        if pos + length > len(data) or length == 0 or data[pos + length - 1] != 0:
            raise ProtocolError(f"ARGS string {i} (pos {pos}, len {length}) is out of range or unterminated")
        args.append(data[pos:pos + length - 1].decode(errors="surrogateescape"))
    return args

