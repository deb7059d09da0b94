"""Input files: reading, decompressing with a size cap, telling text from raw images."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pytest_fuselab.errors import HostError, ImageError
from .extracted import Found, over_limit
from .fstype import detect_fstype


CHUNK = 1 << 20
SNIFF = 1 << 16
_COMPRESSIONS = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bzip2"))


def load(path: Path, limit: int) -> tuple[bytes, str]:
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
                over_limit(str(path), size, limit)
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
            over_limit(what, None, limit)
        parts.append(chunk)
    return b"".join(parts)


def from_raw(path: Path, data: bytes, limit: int) -> Found:
    if len(data) > limit:
        over_limit(str(path), len(data), limit)
    fstype = detect_fstype(data)
    notes = [] if fstype else ["no known filesystem signature in the image"]
    return Found(fstype, data, notes=notes, from_program=False)


def as_text(data: bytes) -> str | None:
    if b"\0" in data[:SNIFF]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
