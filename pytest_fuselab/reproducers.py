"""Filesystem images out of raw or compressed image files, syzkaller programs and C reproducers.

`extract(path)` returns every image a file holds with the filesystem type, mount options and flags its
reproducer mounts it with; `extract_all(paths)` also walks directories. Only bytes in this process:
nothing here mounts, loop-attaches or fscks an image. Programs are read in syzkaller's three layouts
(today's zlib+base64 image; November 2022's; the older size plus segments at offsets); C reproducers
by replaying their memcpy/memset/sprintf/store statements into a sparse memory. Mount options are
given as `mount -o` takes them, after the changes syzkaller's executor makes (`errors=continue` for
ext2/3/4, `nouuid` for xfs); each change and each option not understood is told in `notes`.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import gzip
import itertools
import logging
import lzma
import os
import re
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn

from .errors import HostError, ImageError

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

DEFAULT_SIZE_LIMIT = 512 << 20
MS_RDONLY = 0x1
OLD_IMAGE_MAX_SIZE = 129 << 20  # what syzkaller's executor clamped segment images to
OLD_MAX_SEGMENTS = 4096
EXECUTOR_OPTS_MAX = 224  # the executor copies at most sizeof(opts) - 32 bytes of options
CHUNK = 1 << 20
SNIFF = 1 << 16


@dataclass(frozen=True, repr=False)
class Extracted:
    """One filesystem image found in `source` (the `index`-th of that file) and how to mount it."""

    source: Path
    index: int
    fstype: str
    image: bytes
    mount_options: str
    mount_flags: int
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"Extracted(source={str(self.source)!r}, index={self.index}, fstype={self.fstype!r}, "
                f"image=<{len(self.image)} bytes>, mount_options={self.mount_options!r}, "
                f"mount_flags={self.mount_flags:#x}, notes={self.notes!r})")


@dataclass
class _Found:
    """An image as one parser found it, before it gets its source and index."""

    fstype: str
    image: bytes
    raw_options: bytes = b""
    flags: int = 0
    notes: list[str] = field(default_factory=list)
    from_program: bool = True


def extract(path: Path, size_limit: int = DEFAULT_SIZE_LIMIT) -> list[Extracted]:
    """Every filesystem image in the file `path`, in file order; raise ImageError naming the file and
    the problem when there is none or the input is malformed."""
    found = _extract(Path(path), size_limit, skip_unknown=False)
    return found if found is not None else []


def extract_all(paths: list[Path], size_limit: int = DEFAULT_SIZE_LIMIT) -> list[Extracted]:
    """`extract` over files and directory trees (walked in sorted order, hidden entries skipped).
    Inside a directory, text files that are neither programs nor reproducers are skipped."""
    out: list[Extracted] = []
    for path in map(Path, paths):
        if path.is_dir():
            for member in _walk(path):
                out.extend(_extract(member, size_limit, skip_unknown=True) or [])
        else:
            out.extend(extract(path, size_limit))
    return out


def _walk(top: Path) -> list[Path]:
    """The files under `top`, sorted by their path below it, without hidden files and directories."""
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / name for name in files if not name.startswith(".")]
    return sorted(found, key=lambda path: path.relative_to(top).parts)


def _extract(path: Path, limit: int, skip_unknown: bool) -> list[Extracted] | None:
    data, compression = _load(path, limit)
    name = Path(path.stem) if compression else path
    text = _as_text(data)
    kind = _kind(name, text)
    if kind is None:
        if skip_unknown:
            log.info("skipping %s: neither an image nor a program with syz_mount_image", path)
            return None
        raise ImageError(f"{path}: unknown file type: it is text, but not a syzkaller program or C reproducer "
                         "(no syz_mount_image call in it); pass a raw or compressed filesystem image, a .syz "
                         "program or a C reproducer")
    if kind == "image":
        found = [_from_raw(path, data, limit)]
    elif kind == "c":
        found = _from_c(path, text or "", limit)
    else:
        found = _from_syz(path, text or "", limit)
    if compression:
        for item in found:
            item.notes.insert(0, f"decompressed from {compression}")
    return [_finish(path, index, item) for index, item in enumerate(found)]


def _kind(name: Path, text: str | None) -> str | None:
    if text is None:
        return "image"
    if re.search(r"\bsyz_mount_image\s*\(", text):
        return "c"
    if _SYZ_CALL.search(text):
        return "syz"
    if name.suffix == ".c":
        return "c"
    if name.suffix == ".syz" or "syz_mount_image$" in text:
        return "syz"
    return None


def _as_text(data: bytes) -> str | None:
    if b"\0" in data[:SNIFF]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _finish(path: Path, index: int, found: _Found) -> Extracted:
    notes = list(found.notes)
    options, flags = "", found.flags
    if found.from_program:
        options, flags = _effective_options(found.raw_options, found.fstype, flags, notes)
        seen = detect_fstype(found.image)
        if seen and found.fstype and _family(seen) != _family(found.fstype):
            notes.append(f"the image looks like {seen}, but the reproducer mounts it as {found.fstype}")
    return Extracted(path, index, found.fstype, found.image, options, flags, notes)


def _over_limit(where: str, size: int | None, limit: int) -> NoReturn:
    """Refuse an image of `size` bytes (None: of more bytes than the limit, how many is not known)."""
    what = f"is {size} bytes, over" if size is not None else "is larger than"
    raise ImageError(f"{where}: the image {what} the size limit of {limit} bytes; if you trust this input, "
                     f"raise the limit (the size_limit argument, {limit} now)")


# Files: reading, decompressing, raw images and their filesystem type.

_COMPRESSIONS = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bzip2"))


def _load(path: Path, limit: int) -> tuple[bytes, str]:
    """The content of `path`, decompressed if it is compressed, and the compression's name (or "")."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF)
            compression = next((name for magic, name in _COMPRESSIONS if head.startswith(magic)), "")
            if compression:
                return _decompress(path, f, compression, limit), compression
            size = os.fstat(f.fileno()).st_size
            if not head:
                raise ImageError(f"{path}: the file is empty; pass an image, a program or a reproducer")
            if b"\0" in head and size > limit:
                _over_limit(str(path), size, limit)
            return head + f.read(), ""
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the file: {exc.strerror or exc}; check the path and its "
                         "permissions") from exc


def _decompress(path: Path, f: IO[bytes], compression: str, limit: int) -> bytes:
    f.seek(0)
    what = f"{path} ({compression})"
    if compression == "zstd":
        return _unzstd(path, limit)
    try:
        if compression == "gzip":
            with gzip.GzipFile(fileobj=f) as gz:
                return _read_capped(gz.read, limit, what)
        if compression == "xz":
            with lzma.LZMAFile(f) as xz:
                return _read_capped(xz.read, limit, what)
        with bz2.BZ2File(f) as bz:
            return _read_capped(bz.read, limit, what)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        problem = "it ends too early" if isinstance(exc, EOFError) else str(exc)
        raise ImageError(f"{path}: cannot decompress this {compression} file: {problem}; the file is damaged "
                         "or truncated, get it again") from exc


def _unzstd(path: Path, limit: int) -> bytes:
    try:
        proc = subprocess.Popen(["zstd", "-dc", "--", str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise HostError(f"{path}: is zstd-compressed and the zstd command is not installed: install the "
                        "zstd package (apt-get install zstd)") from exc
    assert proc.stdout is not None and proc.stderr is not None
    try:
        data = _read_capped(proc.stdout.read, limit, f"{path} (zstd)")
        error = proc.stderr.read().decode(errors="replace").strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if proc.returncode != 0:
        raise ImageError(f"{path}: cannot decompress this zstd file: {error or f'zstd exited {proc.returncode}'}; "
                         "the file is damaged or truncated, get it again")
    return data


def _read_capped(read: Callable[[int], bytes], limit: int, what: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    while chunk := read(CHUNK):
        total += len(chunk)
        if total > limit:
            _over_limit(what, None, limit)
        parts.append(chunk)
    return b"".join(parts)


def _from_raw(path: Path, data: bytes, limit: int) -> _Found:
    if len(data) > limit:
        _over_limit(str(path), len(data), limit)
    fstype = detect_fstype(data)
    notes = [] if fstype else ["no known filesystem signature in the image"]
    return _Found(fstype, data, notes=notes, from_program=False)


def _le(data: bytes, offset: int, size: int) -> int:
    if len(data) < offset + size:
        return -1
    return int.from_bytes(data[offset:offset + size], "little")


# (fstype, offset, magic bytes) checked in order; ext2/3/4 and FAT are told apart by detect_fstype.
_SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("xfs", 0, b"XFSB"), ("btrfs", 0x10040, b"_BHRfS_M"), ("f2fs", 1024, b"\x10\x20\xf5\xf2"),
    ("erofs", 1024, b"\xe2\xe1\xf5\xe0"), ("squashfs", 0, b"hsqs"), ("iso9660", 0x8001, b"CD001"),
    ("jfs", 0x8000, b"JFS1"), ("romfs", 0, b"-rom1fs-"), ("cramfs", 0, b"\x45\x3d\xcd\x28"),
    ("bfs", 0, b"\xce\xfa\xad\x1b"), ("exfat", 3, b"EXFAT   "), ("ntfs", 3, b"NTFS    "),
    ("hfsplus", 1024, b"H+"), ("hfsplus", 1024, b"HX"), ("nilfs2", 1030, b"\x34\x34"),
    ("reiserfs", 0x10034, b"ReIsEr"), ("gfs2", 0x10000, b"\x01\x16\x19\x70"),
)
_EXT3_INCOMPAT = 0x2 | 0x4 | 0x10  # filetype, recover, meta_bg
_EXT3_RO_COMPAT = 0x1 | 0x2 | 0x4  # sparse_super, large_file, btree_dir


def detect_fstype(image: bytes) -> str:
    """The filesystem type an image's magic numbers say ("ext4", "vfat", "xfs", ...), or ""."""
    if _le(image, 1024 + 0x38, 2) == 0xEF53:
        incompat, ro_compat = _le(image, 1024 + 0x60, 4), _le(image, 1024 + 0x64, 4)
        if incompat & ~_EXT3_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT:
            return "ext4"
        return "ext3" if _le(image, 1024 + 0x5C, 4) & 0x4 else "ext2"
    for fstype, offset, magic in _SIGNATURES:
        if image[offset:offset + len(magic)] == magic:
            return fstype
    if image[54:59] in (b"FAT12", b"FAT16") or image[82:87] == b"FAT32" or _fat_geometry(image):
        return "vfat"
    return ""


def _fat_geometry(image: bytes) -> bool:
    """A FAT boot sector without a type string (Atari and old images): its geometry fields are sane."""
    sector, per_cluster, reserved = _le(image, 11, 2), _le(image, 13, 1), _le(image, 14, 2)
    fats, media = _le(image, 16, 1), _le(image, 21, 1)
    return (sector in (512, 1024, 2048, 4096) and per_cluster > 0 and per_cluster & (per_cluster - 1) == 0
            and reserved >= 1 and fats in (1, 2) and (media == 0xF0 or media >= 0xF8))


def _family(fstype: str) -> str:
    if fstype in ("ext2", "ext3", "ext4"):
        return "ext"
    if fstype in ("vfat", "msdos"):
        return "fat"
    return {"ntfs3": "ntfs", "gfs2meta": "gfs2"}.get(fstype, fstype)


# Images inside programs: zlib streams, segment lists, the executor's mount option changes.

def _inflate(raw: bytes, limit: int, where: str) -> bytes:
    """Decompress a syzkaller image (a zlib stream), refusing more than `limit` bytes of output."""
    inflater = zlib.decompressobj()
    try:
        image = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ImageError(f"{where}: the image is not a valid zlib stream ({exc}); the reproducer is damaged, "
                         "get it again") from exc
    if len(image) > limit:
        _over_limit(where, None, limit)
    if not inflater.eof:
        raise ImageError(f"{where}: the image's zlib stream is truncated: its {len(raw)} compressed bytes end "
                         f"after {len(image)} bytes of image; the reproducer was cut short, get the complete one")
    return image


def _assemble(size: int, segments: list[tuple[int, bytes]], limit: int, where: str, notes: list[str]) -> bytes:
    """An image of the old format: `size` zero bytes with each (offset, data) segment written over them."""
    if size > OLD_IMAGE_MAX_SIZE:
        notes.append(f"declared image size {size:#x} cut to {OLD_IMAGE_MAX_SIZE:#x}, as syzkaller's executor did")
        size = OLD_IMAGE_MAX_SIZE
    end = max((offset + len(data) for offset, data in segments), default=0)
    if end > size:
        notes.append(f"segments reach {end:#x}, past the declared image size {size:#x}; image made {end:#x} bytes")
        size = end
    if size > limit:
        _over_limit(where, size, limit)
    image = bytearray(size)
    for offset, data in segments:
        image[offset:offset + len(data)] = data
    return bytes(image)


def _clamp_segment(offset: int, size: int, notes: list[str]) -> tuple[int, int]:
    """An old-format segment's offset and size as syzkaller's executor bounded them."""
    new_size = min(size, OLD_IMAGE_MAX_SIZE)
    new_offset = min(offset % OLD_IMAGE_MAX_SIZE, OLD_IMAGE_MAX_SIZE - new_size)
    if (new_offset, new_size) != (offset, size):
        notes.append(f"segment of {size:#x} bytes at {offset:#x} bounded to {new_size:#x} bytes at "
                     f"{new_offset:#x}, as syzkaller's executor did")
    return new_offset, new_size


def _effective_options(raw: bytes, fstype: str, flags: int, notes: list[str]) -> tuple[str, int]:
    """The options string and flags mount(2) gets from syzkaller's executor, as `mount -o` takes them."""
    raw = raw.split(b"\0", 1)[0]
    if len(raw) > EXECUTOR_OPTS_MAX:
        notes.append(f"mount options cut to {EXECUTOR_OPTS_MAX} bytes, as syzkaller's executor does")
        raw = raw[:EXECUTOR_OPTS_MAX]
    text = raw.decode("latin-1")
    if any(not 0x20 <= byte < 0x7F for byte in raw):
        notes.append(f"mount options hold non-printable bytes: {raw!r}")
    items = [item for item in text.split(",") if item]
    added = ""
    if fstype == "iso9660" and not flags & MS_RDONLY:
        flags |= MS_RDONLY
        notes.append("MS_RDONLY added to the mount flags, as syzkaller's executor does for iso9660")
    elif fstype.startswith("ext"):
        if "errors=panic" in text or "errors=remount-ro" not in items:
            last = [item for item in items if item.startswith("errors=")][-1:]
            added = "" if last == ["errors=continue"] else "errors=continue"
    elif fstype == "xfs":
        added = "nouuid"
    elif fstype.startswith("gfs2") and ("errors=panic" in text or "debug" in text):
        added = "errors=withdraw"
    if added:
        items.append(added)
        notes.append(f"{added} added to the mount options, as syzkaller's executor does for {fstype}")
    return ",".join(items), flags


# Syzkaller programs.

_SYZ_CALL = re.compile(r"^[ \t]*(?:r\d+[ \t]*=[ \t]*)?syz_mount_image\$(?P<fs>\w+)\(", re.M)


@dataclass(frozen=True)
class _Int:
    value: int


@dataclass(frozen=True)
class _Data:
    data: bytes
    compressed: bool = False


@dataclass(frozen=True)
class _Ptr:
    target: _Value | None
    any: bool = False


@dataclass(frozen=True)
class _Group:
    items: tuple[_Value, ...]
    array: bool


@dataclass(frozen=True)
class _Union:
    name: str
    value: _Value | None


@dataclass(frozen=True)
class _Other:
    text: str


_Value = _Int | _Data | _Ptr | _Group | _Union | _Other

_SYZ_INT = re.compile(r"0x[0-9a-fA-F]+|\d+")
_SYZ_IDENT = re.compile(r"[A-Za-z_][\w]*(?:[/+](?:0x[0-9a-fA-F]+|\d+))*")
_SYZ_SIZE = re.compile(r"/(0x[0-9a-fA-F]+|\d+)")
_SYZ_NAME = re.compile(r"[\w$]+")
_SYZ_RESULT = re.compile(r"<r\d+=>")
_SYZ_AUTO = re.compile(r"AUTO\b")
_SYZ_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'", re.S)
_SYZ_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "'": 39, '"': 34, "\\": 92}


class _SyzParser:
    """Reads the argument values of one call of a syzkaller program."""

    def __init__(self, text: str, pos: int, path: Path, call: str) -> None:
        self.text, self.pos, self.path, self.call = text, pos, path, call

    def fail(self, problem: str) -> NoReturn:
        line = self.text.count("\n", 0, self.pos) + 1
        raise ImageError(f"{self.path}: line {line}: cannot read {self.call}: {problem}; the program is damaged "
                         "or cut short, get it again")

    def skip(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1
        return self.text[self.pos:self.pos + 1]

    def take(self, pattern: re.Pattern[str]) -> str | None:
        match = pattern.match(self.text, self.pos)
        if not match:
            return None
        self.pos = match.end()
        return match.group(0)

    def items(self, close: str) -> list[_Value]:
        """Values separated by commas up to `close`, the opening bracket already read."""
        values: list[_Value] = []
        if self.skip() == close:
            self.pos += 1
            return values
        while True:
            values.append(self.value())
            char = self.skip()
            self.pos += 1
            if char == close:
                return values
            if char != ",":
                self.fail(f"expected ',' or '{close}', found {char or 'the end of the file'!r}")

    def value(self) -> _Value:
        char = self.skip()
        if char == "&":
            return self.pointer()
        if char in ("'", '"'):
            return self.data()
        if char in ("{", "["):
            self.pos += 1
            return _Group(tuple(self.items("}" if char == "{" else "]")), char == "[")
        if char == "@":
            self.pos += 1
            name = self.take(_SYZ_NAME) or self.fail("a union without a name")
            if not self.text.startswith("=", self.pos):
                return _Union(name, None)
            self.pos += 1
            return _Union(name, self.value())
        if char == "<":
            self.take(_SYZ_RESULT) or self.fail("a malformed resource")
            return self.value()
        number = self.take(_SYZ_INT)
        if number is not None:
            return _Int(int(number, 0))
        ident = self.take(_SYZ_IDENT)
        if ident is not None:
            return _Other(ident)
        self.fail(f"unexpected {char or 'end of the file'!r}")

    def pointer(self) -> _Ptr:
        self.pos += 1
        if self.text.startswith("(", self.pos):
            end = self.text.find(")", self.pos)
            if end < 0:
                self.fail("an address without ')'")
            self.pos = end + 1
        elif not self.take(_SYZ_AUTO):
            self.fail("a pointer that is neither &(address) nor &AUTO")
        if not self.text.startswith("=", self.pos):
            return _Ptr(None)
        self.pos += 1
        is_any = self.text.startswith("ANY=", self.pos)
        self.pos += 4 if is_any else 0
        return _Ptr(self.value(), is_any)

    def data(self) -> _Data:
        quote = self.text[self.pos]
        end = self.text.find(quote, self.pos + 1) if quote == '"' else self.quoted_end()
        if end < 0:
            self.fail("a string that never ends")
        body, start = self.text[self.pos + 1:end], self.pos
        self.pos = end + 1
        if quote == '"' and body.startswith("$"):
            return _Data(self.base64(body[1:], start), compressed=True)
        data = self.unhex(body) if quote == '"' else self.unescape(body)
        size = self.take(_SYZ_SIZE)
        if size is not None and int(size[1:], 0) > OLD_IMAGE_MAX_SIZE:
            self.fail(f"a data size of {size[1:]} bytes, more than syzkaller ever used")
        if size is not None:
            data = data.ljust(int(size[1:], 0), b"\0")
        return _Data(data)

    def quoted_end(self) -> int:
        match = _SYZ_QUOTED.match(self.text, self.pos)
        return match.end() - 1 if match else -1

    def base64(self, body: str, start: int) -> bytes:
        try:
            return base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            self.pos = start
            self.fail(f"the image is not valid base64 ({exc})")

    def unhex(self, body: str) -> bytes:
        try:
            return bytes.fromhex(body)
        except ValueError:
            self.fail(f"bad hex data {body[:40]!r}")

    def unescape(self, body: str) -> bytes:
        out = bytearray()
        for match in re.finditer(r"\\(x[0-9a-fA-F]{2}|.)|[^\\]+", body, re.S):
            escape = match.group(1)
            if escape is None:
                out += match.group(0).encode()
            elif escape[0] == "x":
                out.append(int(escape[1:], 16))
            elif escape in _SYZ_ESCAPES:
                out.append(_SYZ_ESCAPES[escape])
            else:
                self.fail(f"unknown escape \\{escape} in a string")
        return bytes(out)


def _from_syz(path: Path, text: str, limit: int) -> list[_Found]:
    found: list[_Found] = []
    calls = 0
    for match in _SYZ_CALL.finditer(text):
        calls += 1
        line = text.count("\n", 0, match.start()) + 1
        call = f"syz_mount_image${match.group('fs')}"
        where = f"{path}: line {line} ({call})"
        parser = _SyzParser(text, match.end(), path, call)
        args = parser.items(")")
        item = _syz_call(args, match.group("fs"), where, limit)
        if item is not None:
            found.append(item)
    if not found:
        what = (f"its {calls} syz_mount_image call(s) carry no image data" if calls
                else "it has no syz_mount_image call")
        raise ImageError(f"{path}: no filesystem image in this program: {what}; pass a syzkaller program or "
                         "C reproducer that mounts an image")
    return found


def _syz_layout(args: list[_Value]) -> str:
    """"current" (fs, dir, flags, opts, chdir, size, img), "transitional" (fs, dir, size, csize, flags,
    opts, chdir, img) or "segments" (fs, dir, size, nsegs, segments, flags, opts[, chdir])."""
    def compressed(value: _Value) -> bool:
        return isinstance(value, _Ptr) and isinstance(value.target, _Data) and value.target.compressed

    if len(args) == 8:
        return "transitional" if compressed(args[7]) else "segments"
    if len(args) != 7:
        return "unknown"
    if compressed(args[6]):
        return "current"
    segments = args[4]
    return "segments" if isinstance(segments, _Ptr) and isinstance(segments.target, _Group) else "current"


def _syz_call(args: list[_Value], call_fs: str, where: str, limit: int) -> _Found | None:
    layout = _syz_layout(args)
    if layout == "unknown":
        raise ImageError(f"{where}: syz_mount_image has {len(args)} arguments, a layout this reader does not "
                         "know; pass the program to the project with the syzkaller version that wrote it")
    notes: list[str] = []
    fstype = _syz_string(args[0])
    if not fstype:
        fstype = call_fs
        notes.append(f"no filesystem name in the call; {call_fs} taken from syz_mount_image${call_fs}")
    if layout == "segments":
        size, segments = _int(args[2]), _syz_segments(args[4], where, limit, notes)
        if not segments:
            return None
        image = _assemble(size, segments, limit, where, notes)
        flags, options = _int(args[5]), args[6]
    else:
        image_arg = args[7] if layout == "transitional" else args[6]
        raw = image_arg.target.data if isinstance(image_arg, _Ptr) and isinstance(image_arg.target, _Data) else b""
        if not raw:
            return None
        image = _inflate(raw, limit, where)
        flags, options = (_int(args[4]), args[5]) if layout == "transitional" else (_int(args[2]), args[3])
    raw_options = _syz_options(options, call_fs, notes)
    return _Found(fstype, image, raw_options, flags, notes)


def _int(value: _Value) -> int:
    return value.value if isinstance(value, _Int) else 0


def _syz_string(value: _Value) -> str:
    if isinstance(value, _Ptr) and isinstance(value.target, _Data):
        return value.target.data.split(b"\0", 1)[0].decode("latin-1")
    return ""


def _syz_segments(value: _Value, where: str, limit: int, notes: list[str]) -> list[tuple[int, bytes]]:
    """(offset, data) of each {data, len, offset} segment of the old format."""
    if not isinstance(value, _Ptr) or not isinstance(value.target, _Group):
        return []
    segments, total = [], 0
    for item in value.target.items:
        if not isinstance(item, _Group):
            raise ImageError(f"{where}: an image segment is not a {{data, len, offset}} struct; the program is "
                             "damaged, get it again")
        fields = list(item.items) + [_Int(0)] * (3 - len(item.items))
        pointer = fields[0]
        data = pointer.target.data if isinstance(pointer, _Ptr) and isinstance(pointer.target, _Data) else b""
        offset, length = _clamp_segment(_int(fields[2]), _int(fields[1]) if len(item.items) > 1 else len(data), notes)
        total += length
        if total > limit:
            _over_limit(where, None, limit)
        segments.append((offset, data[:length].ljust(length, b"\0")))
    return segments


# Syzkaller's mount option notation, for the options this reader knows (ext2/3/4 and the common ones).

_EXT4_FLAGS = frozenset("""
    bsddf minixdf grpid bsdgroups nogrpid sysvgroups nouid32 debug oldalloc orlov user_xattr nouser_xattr acl
    noacl norecovery noload nobh bh journal_checksum nojournal_checksum journal_async_commit abort grpquota
    noquota quota usrquota prjquota barrier nobarrier i_version dax delalloc lazytime nolazytime nodelalloc
    mblk_io_submit nomblk_io_submit block_validity noblock_validity auto_da_alloc noauto_da_alloc
    dioread_nolock nodioread_nolock dioread_lock discard nodiscard init_itable noinit_itable
    test_dummy_encryption nombcache inlinecrypt""".split())
_EXT4_RENAMED = {
    "errors_continue": "errors=continue", "errors_remount": "errors=remount-ro", "data_journal": "data=journal",
    "data_ordered": "data=ordered", "data_writeback": "data=writeback", "data_err_abort": "data_err=abort",
    "data_err_ignore": "data_err=ignore", "usrjquota": "usrjquota=", "grpjquota": "grpjquota=",
    "jqfmt_vfsold": "jqfmt=vfsold", "jqfmt_vfsv0": "jqfmt=vfsv0", "jqfmt_vfsv1": "jqfmt=vfsv1",
    "dax_always": "dax=always", "dax_inode": "dax=inode", "dax_never": "dax=never",
    "test_dummy_encryption_v1": "test_dummy_encryption=v1",
}
# Options whose value syzkaller formats as 0x%016x; a bare @name means the value 0.
_EXT4_VALUES = {
    "mb_optimize_scan": "mb_optimize_scan", "resgid": "resgid", "resuid": "resuid", "sb": "sb",
    "commit": "commit", "min_batch_time": "min_batch_time", "max_batch_time": "max_batch_time",
    "journal_dev": "journal_dev", "barrier_val": "barrier", "stripe": "stripe",
    "debug_want_extra_isize": "debug_want_extra_isize", "inode_readahead_blks": "inode_readahead_blks",
    "journal_ioprio": "journal_ioprio", "auto_da_alloc_val": "auto_da_alloc", "init_itable_val": "init_itable",
    "max_dir_size_kb": "max_dir_size_kb",
}
_COMMON_FLAGS = {
    "seclabel": "seclabel", "measure": "measure", "dont_measure": "dont_measure", "appraise": "appraise",
    "dont_appraise": "dont_appraise", "audit": "audit", "hash": "hash", "dont_hash": "dont_hash",
    "permit_directio": "permit_directio", "appraise_type": "appraise_type=imasig",
}
# Value formats of the options every filesystem shares, by the option's own name.
_COMMON_FORMATS = {"fsmagic": "hex", "uid": "dec", "euid": "dec", "fowner": "dec", "uid>": "dec",
                   "euid>": "dec", "fowner>": "dec", "uid<": "dec", "euid<": "dec", "fowner<": "dec", "pcr": "dec"}
_EXT_CALLS = ("ext4", "ext3", "ext2")


def _format_int(value: int, style: str) -> str:
    value &= (1 << 64) - 1
    return {"hex": f"0x{value:016x}", "dec": f"{value:020d}", "oct": f"{value:023o}"}[style]


def _syz_options(value: _Value | None, call_fs: str, notes: list[str]) -> bytes:
    """The option bytes a program passes: an fs_options struct, an ANY blob or a plain string."""
    if isinstance(value, _Ptr):
        if value.any and isinstance(value.target, _Group):
            return _any_blob(value.target, notes)
        return _syz_options(value.target, call_fs, notes)
    if isinstance(value, _Data):
        return value.data
    if isinstance(value, _Group) and not value.array:
        out = b""
        for part in value.items[:2]:
            elems = part.items if isinstance(part, _Group) else ()
            for elem in elems:
                text = _option_elem(elem, call_fs, notes)
                if text is not None:
                    out += text
        return out
    if value is not None and not isinstance(value, (_Int, _Other)):
        notes.append(f"mount options in an unknown notation left out: {_show(value)}")
    return b""


def _any_blob(group: _Group, notes: list[str]) -> bytes:
    out = b""
    for item in group.items:
        if isinstance(item, _Union) and item.name == "ANYBLOB" and isinstance(item.value, _Data):
            out += item.value.data
        else:
            notes.append(f"mount option bytes that depend on run-time values left out: {_show(item)}")
    return out


def _option_elem(elem: _Value, call_fs: str, notes: list[str]) -> bytes | None:
    """One fs_opt_elem, {@option[, comma]}, as the bytes syzkaller writes for it (option and comma)."""
    union = elem.items[0] if isinstance(elem, _Group) and elem.items else elem
    comma = elem.items[1] if isinstance(elem, _Group) and len(elem.items) > 1 else None
    if not isinstance(union, _Union):
        notes.append(f"mount option in an unknown notation left out: {_show(elem)}")
        return None
    text = _option_text(union, call_fs, notes)
    if text is None:
        notes.append(f"mount option not understood, left out: {_show(elem)}")
        return None
    return text + (bytes([comma.value & 0xFF]) if isinstance(comma, _Int) else b",")


def _option_text(union: _Union, call_fs: str, notes: list[str]) -> bytes | None:
    name, value = union.name, union.value
    ext = call_fs in _EXT_CALLS
    if isinstance(value, _Union):
        return _option_text(value, call_fs, notes)
    if isinstance(value, _Data):
        return value.data
    if isinstance(value, _Group) and not value.array:
        return _option_struct(value, ext)
    if value is not None:
        return None
    if name in _COMMON_FLAGS:
        return _COMMON_FLAGS[name].encode()
    if ext and (name in _EXT4_FLAGS or name in _EXT4_RENAMED):
        return _EXT4_RENAMED.get(name, name).encode()
    if ext and name in _EXT4_VALUES:
        return f"{_EXT4_VALUES[name]}={_format_int(0, 'hex')}".encode()
    return None


def _option_struct(value: _Group, ext: bool) -> bytes | None:
    """{'name', 0x3d, value}: fs_opt (name, '=', value) or fs_opt_nodelim (name, value)."""
    items = list(value.items)
    if not items or not isinstance(items[0], _Data):
        return None
    name = items[0].data
    out = name
    rest = items[1:]
    if rest and isinstance(rest[0], _Int) and rest[0].value == ord("=") and (len(rest) > 1 or ext):
        out += b"="
        rest = rest[1:]
    style = _COMMON_FORMATS.get(name.decode("latin-1"), "hex" if ext else "")
    for part in rest or [_Int(0)]:
        if isinstance(part, _Data):
            out += part.data
        elif isinstance(part, _Group) and all(isinstance(x, _Int) for x in part.items):
            out += bytes(_int(x) & 0xFF for x in part.items)
        elif isinstance(part, _Int) and style:
            out += _format_int(part.value, style).encode()
        else:
            return None
    return out


def _show(value: _Value | None) -> str:
    """A value back in syzkaller's notation (enough to recognise it in a note)."""
    if isinstance(value, _Int):
        return hex(value.value)
    if isinstance(value, _Data):
        return repr(value.data.decode("latin-1"))
    if isinstance(value, _Ptr):
        return "&" + ("ANY=" if value.any else "") + _show(value.target) if value.target is not None else "&AUTO"
    if isinstance(value, _Group):
        inner = ", ".join(_show(item) for item in value.items)
        return f"[{inner}]" if value.array else f"{{{inner}}}"
    if isinstance(value, _Union):
        return f"@{value.name}" + (f"={_show(value.value)}" if value.value is not None else "")
    return value.text if value is not None else ""


# C reproducers.

_C_TOKEN = re.compile(r"""
    (?P<skip>\s+|//[^\n]*|/\*.*?\*/|\#(?:\\\n|[^\n])*)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<chr>'(?:[^'\\\n]|\\.)*')
  | (?P<num>0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*)
  | (?P<id>[A-Za-z_]\w*)
  | (?P<punct>.)
""", re.S | re.X)
_C_SIMPLE = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "e": 27, "\\": 92, "'": 39, '"': 34,
             "?": 63}
_C_STORE_TYPE = re.compile(r"u?int(8|16|32|64)(_t)?$")
_C_FORMATS = {'"0x%016llx"': "hex", '"%020llu"': "dec", '"%023llo"': "oct"}

_Token = tuple[str, str, int]


def _c_tokens(text: str) -> list[_Token]:
    return [(m.lastgroup or "", m.group(0), m.start()) for m in _C_TOKEN.finditer(text) if m.lastgroup != "skip"]


def _c_number(token: str) -> int:
    digits = token.rstrip("uUlL")
    if digits[:2] in ("0x", "0X"):
        return int(digits, 16)
    return int(digits, 8) if len(digits) > 1 and digits[0] == "0" else int(digits)


def _c_unescape(literal: str) -> bytes:
    """The bytes of one C string literal (quotes included), decoded exactly as a C compiler would;
    ValueError for an escape a compiler would refuse."""
    body = literal[1:-1].replace("\\\n", "")  # line splicing comes before escapes
    if re.fullmatch(r"(?:\\x[0-9a-fA-F]{2})+", body):
        return bytes.fromhex(body.replace("\\x", ""))
    out = bytearray()
    for match in re.finditer(r"\\(?:x([0-9a-fA-F]+)|([0-7]{1,3})|(.))|([^\\]+)", body, re.S):
        hexa, octal, simple, plain = match.groups()
        if plain is not None:
            out += plain.encode()
        elif hexa is not None or octal is not None:
            value = int(hexa, 16) if hexa is not None else int(octal or "0", 8)
            if value > 0xFF:
                raise ValueError(f"the C escape {match.group(0)} is out of range for a byte")
            out.append(value)
        elif simple in _C_SIMPLE:
            out.append(_C_SIMPLE[simple])
        else:
            raise ValueError(f"unknown C escape {match.group(0)!r} in a string")
    return bytes(out)


class _Memory:
    """The stores a C reproducer makes, replayed in order; unwritten bytes read as zero."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []

    def write(self, addr: int, data: bytes) -> None:
        self.writes.append((addr, data))

    def read(self, addr: int, size: int, upto: int) -> tuple[bytes, bool]:
        """`size` bytes at `addr` as the first `upto` stores left them, and whether any store touched them."""
        out, end, touched = bytearray(size), addr + size, False
        for start, data in itertools.islice(self.writes, upto):
            low, high = max(start, addr), min(start + len(data), end)
            if low < high:
                out[low - addr:high - addr] = data[low - start:high - start]
                touched = True
        return bytes(out), touched

    def cstring(self, addr: int, upto: int, limit: int = 4096) -> bytes:
        return self.read(addr, limit, upto)[0].split(b"\0", 1)[0] if addr else b""


class _CReader:
    """Walks a C reproducer's tokens, replaying its stores and collecting its syz_mount_image calls."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self.toks = _c_tokens(text)
        self.memory = _Memory()
        self.calls: list[tuple[list[int], int, int]] = []  # (arguments, stores before the call, position)

    def where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        return f"{self.path}: line {line}"

    def is_(self, i: int, *texts: str) -> bool:
        return all(i + k < len(self.toks) and self.toks[i + k][1] == t for k, t in enumerate(texts))

    def number(self, i: int) -> tuple[int, int] | None:
        """A possibly negative number at token i, and the index after it."""
        negative = self.is_(i, "-")
        i += negative
        if i < len(self.toks) and self.toks[i][0] == "num":
            value = _c_number(self.toks[i][1])
            return (-value if negative else value) & ((1 << 64) - 1), i + 1
        return None

    def run(self) -> None:
        handlers: dict[str, Callable[[int], None]] = {
            "memcpy": self.memcpy, "memset": self.memset, "sprintf": self.sprintf,
            "syz_mount_image": self.syz_mount_image}
        for i, (kind, text, _pos) in enumerate(self.toks):
            if kind == "id" and text in handlers:
                handlers[text](i + 1)
            elif text == "*" and self.is_(i + 1, "(") and i + 2 < len(self.toks):
                self.store(i + 2)

    def address(self, i: int, cast: str) -> tuple[int, int] | None:
        """`((cast*)0xADDR,` starting at the '(' of a call; the address and the index after the comma."""
        if not self.is_(i, "(", "(", cast, "*", ")"):
            return None
        got = self.number(i + 5)
        if got is None or not self.is_(got[1], ","):
            return None
        return got[0], got[1] + 1

    def strings(self, i: int) -> tuple[bytes, int]:
        """Adjacent string literals from token i, concatenated, and the index after them."""
        parts = []
        while i < len(self.toks) and self.toks[i][0] == "str":
            try:
                parts.append(_c_unescape(self.toks[i][1]))
            except ValueError as exc:
                raise ImageError(f"{self.where(self.toks[i][2])}: {exc}; the reproducer is damaged, get it "
                                 "again") from exc
            i += 1
        return b"".join(parts), i

    def memcpy(self, i: int) -> None:
        got = self.address(i, "void")
        if got is None:
            return
        data, j = self.strings(got[1])
        size = self.number(j + 1) if self.is_(j, ",") else None
        if size is not None and j > got[1]:
            self.memory.write(got[0], (data + b"\0")[:size[0]])  # bytes past the literal read as zero

    def memset(self, i: int) -> None:
        got = self.address(i, "void")
        value = self.number(got[1]) if got else None
        size = self.number(value[1] + 1) if value and self.is_(value[1], ",") else None
        if got and value and size and size[0] <= OLD_IMAGE_MAX_SIZE:
            self.memory.write(got[0], bytes([value[0] & 0xFF]) * size[0])

    def sprintf(self, i: int) -> None:
        got = self.address(i, "char")
        if got is None or got[1] >= len(self.toks) or self.toks[got[1]][1] not in _C_FORMATS:
            return
        style = _C_FORMATS[self.toks[got[1]][1]]
        if self.is_(got[1] + 1, ",", "(", "long", "long", ")"):
            value = self.number(got[1] + 6)
            if value is not None:
                self.memory.write(got[0], _format_int(value[0], style).encode() + b"\0")

    def store(self, i: int) -> None:
        match = _C_STORE_TYPE.match(self.toks[i][1])
        if not match or not self.is_(i + 1, "*", ")"):
            return
        addr = self.number(i + 3)
        value = self.number(addr[1] + 1) if addr and self.is_(addr[1], "=") else None
        if addr and value:
            width = int(match.group(1)) // 8
            self.memory.write(addr[0], (value[0] & ((1 << (8 * width)) - 1)).to_bytes(width, "little"))

    def syz_mount_image(self, i: int) -> None:
        if not self.is_(i, "("):
            return
        args, j = [], i + 1
        while True:
            got = self.number(j)
            if got is None:
                return  # the definition or a declaration, not a call with constant arguments
            args.append(got[0])
            j = got[1] + 1
            if self.is_(got[1], ")"):
                break
            if not self.is_(got[1], ","):
                return
        self.calls.append((args, len(self.memory.writes), self.toks[i][2]))


def _from_c(path: Path, text: str, limit: int) -> list[_Found]:
    reader = _CReader(path, text)
    reader.run()
    found = []
    for args, upto, pos in reader.calls:
        item = _c_call(reader, args, upto, f"{reader.where(pos)} (syz_mount_image)", limit)
        if item is not None:
            found.append(item)
    if not found:
        what = (f"its {len(reader.calls)} syz_mount_image call(s) carry no image" if reader.calls
                else "it has no syz_mount_image call with constant arguments")
        raise ImageError(f"{path}: no filesystem image in this C reproducer: {what}; pass a reproducer that "
                         "mounts an image")
    return found


def _zlib_at(memory: _Memory, addr: int, upto: int) -> bool:
    head, _ = memory.read(addr, 2, upto)
    return addr != 0 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


def _c_layout(memory: _Memory, args: list[int], upto: int) -> str:
    """As _syz_layout; segments are told by the table at args[4] (an address, not chdir's 0 or 1)."""
    if len(args) == 8:
        return "transitional" if _zlib_at(memory, args[7], upto) else "segments"
    if len(args) != 7:
        return "unknown"
    if args[5] > 0 and _zlib_at(memory, args[6], upto):
        return "current"
    if args[4] > 1 and memory.read(args[4], 8, upto)[1] or args[3] == args[4] == 0:
        return "segments"
    return "current"


def _c_call(reader: _CReader, args: list[int], upto: int, where: str, limit: int) -> _Found | None:
    memory, notes = reader.memory, list[str]()
    layout = _c_layout(memory, args, upto)
    if layout == "unknown":
        raise ImageError(f"{where}: syz_mount_image has {len(args)} arguments, a layout this reader does not "
                         "know; pass the reproducer to the project with the syzkaller version that wrote it")
    fstype = memory.cstring(args[0], upto).decode("latin-1")
    if layout == "segments":
        segments = _c_segments(memory, args[3], args[4], upto, where, limit, notes)
        if not segments:
            return None
        image = _assemble(args[2], segments, limit, where, notes)
        flags, opts = args[5], args[6]
    else:
        size, addr = (args[3], args[7]) if layout == "transitional" else (args[5], args[6])
        if not size or not addr:
            return None
        if size > limit:
            _over_limit(where, size, limit)
        raw, touched = memory.read(addr, size, upto)
        if not touched:
            raise ImageError(f"{where}: nothing is written at the image address {addr:#x} before the call; the "
                             "reproducer is damaged or cut short, get it again")
        image = _inflate(raw, limit, where)
        flags, opts = (args[4], args[5]) if layout == "transitional" else (args[2], args[3])
    if not fstype:
        notes.append("the filesystem name is not written before the call")
    return _Found(fstype, image, memory.cstring(opts, upto), flags, notes)


def _c_segments(memory: _Memory, count: int, addr: int, upto: int, where: str, limit: int,
                notes: list[str]) -> list[tuple[int, bytes]]:
    if count > OLD_MAX_SEGMENTS:
        notes.append(f"{count} segments cut to {OLD_MAX_SEGMENTS}, as syzkaller's executor did")
        count = OLD_MAX_SEGMENTS
    table, _ = memory.read(addr, 24 * count, upto)
    segments, total = [], 0
    for data_addr, size, offset in struct.iter_unpack("<QQQ", table):
        offset, size = _clamp_segment(offset, size, notes)
        total += size
        if total > limit:
            _over_limit(where, None, limit)
        segments.append((offset, memory.read(data_addr, size, upto)[0]))
    return segments
