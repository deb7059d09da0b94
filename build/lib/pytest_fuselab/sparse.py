"""Sparse files: where their data lies, their sha256 without reading the holes, and copies that keep the holes."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


def data_runs(fd: int, size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of a file that hold data; the rest are holes that read as zeros.
    Where the filesystem cannot tell holes (SEEK_DATA unsupported), the rest of the file counts as data."""
    runs, position = [], 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data after position
                runs.append((position, size))
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        runs.append((start, end))
        position = end
    return runs


def sparse_copy(source: Path, target: Path) -> None:
    """Copy `source` to `target`, writing only its data runs so that the holes stay holes."""
    size = source.stat().st_size
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.truncate(size)
        for start, end in data_runs(src.fileno(), size):
            for at in range(start, end, _CHUNK):
                os.pwrite(dst.fileno(), os.pread(src.fileno(), min(_CHUNK, end - at), at), at)


def file_sha256(path: Path) -> str:
    """The sha256 of a file (hex), the same as of a full read; the holes of a sparse file are hashed from memory
    instead of being read."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle:
        position = 0
        for start, end in [*data_runs(handle.fileno(), size), (size, size)]:
            for at in range(position, start, _CHUNK):
                digest.update(_ZEROS[:min(_CHUNK, start - at)])
            for at in range(start, end, _CHUNK):
                digest.update(os.pread(handle.fileno(), min(_CHUNK, end - at), at))
            position = end
    return digest.hexdigest()
