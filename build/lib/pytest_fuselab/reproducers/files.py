"""Input files: only regular ones, held to the size limit, decompressed with a cap, told text from image."""

from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import io
import lzma
import os
import stat
import subprocess
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pytest_fuselab.errors import HostError, InputError
from .extracted import Budget, Found, limit_hint, over_limit
from .fstype import detect_fstype
from .sparse import Builder, SparseImage


CHUNK = 1 << 20
SNIFF = 1 << 16
TEXT_LIMIT = 64 << 20  # programs and reproducers larger than this are not read
_COMPRESSIONS = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bzip2"))
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket"}

Read = Callable[[int], bytes]


@dataclass
class Loaded:
    """An input's content: its text, or else its image; and the compression it came in ("" if none)."""

    text: str | None
    image: SparseImage | None
    compression: str
    notes: list[str] = field(default_factory=list)


def open_regular(path: Path, limit: int) -> BinaryIO:
    """`path` opened for reading if it is a regular file of at most `limit` bytes; opening never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        with contextlib.suppress(OSError):
            _refuse_kind(path, os.stat(path).st_mode)  # a socket cannot be opened: say what it is
        raise InputError(f"{path}: cannot read the file: {exc.strerror or exc}; check the path and its "
                         "permissions") from exc
    try:
        st = os.fstat(fd)
        _refuse_kind(path, st.st_mode)
        if st.st_size > limit:
            raise InputError(f"{path}: the file is {st.st_size} bytes, over the size limit of {limit} bytes; "
                             + limit_hint(limit))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refuse_kind(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise InputError(f"{path}: is {kind}, not a regular file; only files are read as inputs (save what a "
                         "device or a pipe gives into a file and pass that)")


def load(path: Path, budget: Budget) -> Loaded:
    """The content of `path`, decompressed if it is compressed: its text if it is text, else its image."""
    with open_regular(path, budget.limit) as f:
        try:
            head = f.read(SNIFF)
            if not head:
                raise InputError(f"{path}: the file is empty; pass an image, a program or a reproducer")
            compression = next((name for magic, name in _COMPRESSIONS if head.startswith(magic)), "")
            f.seek(0)
            with _stream(path, f, compression) as read:
                return _content(path, read, compression, budget)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            if not compression:
                raise InputError(f"{path}: cannot read the file: {exc}; check the file") from exc
            problem = "it ends too early" if isinstance(exc, EOFError) else str(exc)
            raise InputError(f"{path}: cannot decompress this {compression} file: {problem}; the file is damaged "
                             "or truncated, get it again") from exc


@contextlib.contextmanager
def _stream(path: Path, f: BinaryIO, compression: str) -> Iterator[Read]:
    if compression == "zstd":
        with _unzstd(path, f) as read:
            yield read
        return
    opened: io.BufferedIOBase | BinaryIO = (gzip.GzipFile(fileobj=f) if compression == "gzip" else lzma.LZMAFile(f)
                         if compression == "xz" else bz2.BZ2File(f) if compression == "bzip2" else f)
    with opened:
        yield opened.read


@contextlib.contextmanager
def _unzstd(path: Path, f: BinaryIO) -> Iterator[Read]:
    try:
        proc = subprocess.Popen(["zstd", "-dc"], stdin=f.fileno(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise HostError(f"{path}: is zstd-compressed and the zstd command is not installed: install the "
                        "zstd package (apt-get install zstd)") from exc
    assert proc.stdout is not None and proc.stderr is not None
    try:
        try:
            yield proc.stdout.read
        except InputError:
            if proc.stdout.read(1) or proc.wait() == 0:  # zstd still writes, or it did well: not its fault
                raise
        if proc.stdout.read(1) or proc.wait() != 0:
            error = proc.stderr.read(4096).decode(errors="replace").strip()
            raise InputError(f"{path}: cannot decompress this zstd file: {error or f'zstd exited {proc.returncode}'}; "
                             "the file is damaged or truncated, get it again")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _content(path: Path, read: Read, compression: str, budget: Budget) -> Loaded:
    what = f"{path} ({compression})" if compression else str(path)
    first = read(SNIFF)
    if not first:
        raise InputError(f"{what}: holds nothing; pass an image, a program or a reproducer")
    if b"\0" in first:
        return Loaded(None, _image(first, read, budget, what), compression)
    cap = min(TEXT_LIMIT, budget.limit)
    data = first + _read_capped(read, cap + 1 - len(first))
    if len(data) <= cap:
        try:
            return Loaded(data.decode("utf-8"), None, compression)
        except UnicodeDecodeError as exc:
            if b"syz_mount_image" in data or path.suffix in (".syz", ".c") or Path(path.stem).suffix == ".syz":
                line = data.count(b"\n", 0, exc.start) + 1
                note = (f"line {line}: the file is not UTF-8 (byte {data[exc.start]:#04x}); its bytes were read as "
                        "they are")
                return Loaded(data.decode("utf-8", "surrogateescape"), None, compression, [note])
    elif _utf8_start(first):
        raise InputError(f"{what}: a text file of more than {cap} bytes: no program or reproducer is that large; "
                         "pass the program itself")
    return Loaded(None, _image(data, read, budget, what), compression)


def _utf8_start(data: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data)
        return True
    except UnicodeDecodeError:
        return False


def _read_capped(read: Read, size: int) -> bytes:
    parts: list[bytes] = []
    while size > 0 and (chunk := read(min(size, CHUNK))):
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _image(first: bytes, read: Read, budget: Budget, what: str) -> SparseImage:
    builder = Builder()
    builder.add(first)
    while chunk := read(CHUNK):
        if builder.size + len(chunk) > budget.left:
            over_limit(what, None, budget.limit, budget.used)
        builder.add(chunk)
    if builder.size > budget.left:
        over_limit(what, builder.size, budget.limit, budget.used)
    return builder.image()


def from_raw(path: Path, image: SparseImage, budget: Budget) -> Found:
    budget.take(len(image), str(path))
    fstype = detect_fstype(image.read(0, 0x10100))
    notes = [] if fstype else ["no known filesystem signature in the image"]
    return Found(fstype, image, notes=notes, from_program=False)
