"""An image file being corrupted, with every write recorded so that it can be replayed from the manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_fuselab.errors import ImageError


class RecordingImage:
    """An image file being corrupted: every write is recorded as (offset, old bytes, new bytes)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self._fd).st_size
        self.writes: list[dict[str, Any]] = []

    def close(self) -> None:
        os.close(self._fd)

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        return data + bytes(size - len(data))

    def put(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ImageError(f"refusing to write {len(data)} bytes at offset {offset}, outside the {self.size}-byte "
                             "image: a corpus generator bug (please report it with the seed)")
        old = self.read(offset, len(data))
        for start, end in _diff_runs(old, data):
            os.pwrite(self._fd, data[start:end], offset + start)
            self.writes.append({"offset": offset + start, "old": old[start:end].hex(), "new": data[start:end].hex()})

    def replay(self, write: dict[str, Any], where: str) -> None:
        new, old = bytes.fromhex(write["new"]), bytes.fromhex(write["old"])
        if write["offset"] + len(new) > self.size or self.read(write["offset"], len(old)) != old:
            raise ImageError(f"{where}: bytes at offset {write['offset']} differ from the manifest's 'old' value; "
                             "the base image was not rebuilt identically (compare `mke2fs -V` with the manifest)")
        os.pwrite(self._fd, new, write["offset"])


def _diff_runs(old: bytes, new: bytes, gap: int = 8) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        if a == b:
            continue
        if runs and i - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
