"""Sparse bytes: a map of writes (data, or one byte repeated) and images kept as extents plus a length.

Memsets and zero fills stay ranges here: what an input makes the host hold is its data, not its sizes.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

Payload = memoryview | int  # data, or the value of a byte repeated over the extent
BLOCK = 1 << 16  # streams are cut in blocks of this size; the blocks that are all zero stay holes
_ZEROS = bytes(BLOCK)


class _Keys:
    """Sorted integers kept in blocks, so that an insertion or a deletion costs O(sqrt n), not O(n)."""

    def __init__(self) -> None:
        self.blocks: list[list[int]] = []
        self.firsts: list[int] = []

    def add(self, key: int) -> None:
        if not self.blocks:
            self.blocks, self.firsts = [[key]], [key]
            return
        i = max(bisect_right(self.firsts, key) - 1, 0)
        block = self.blocks[i]
        insort(block, key)
        self.firsts[i] = block[0]
        if len(block) > 1024:
            self.blocks[i:i + 1] = [block[:512], block[512:]]
            self.firsts[i:i + 1] = [block[0], block[512]]

    def remove(self, key: int) -> None:
        i = bisect_right(self.firsts, key) - 1
        block = self.blocks[i]
        del block[bisect_left(block, key)]
        if block:
            self.firsts[i] = block[0]
        else:
            del self.blocks[i], self.firsts[i]

    def before(self, key: int) -> int | None:
        """The largest key below `key`, or None."""
        i = bisect_left(self.firsts, key) - 1
        if i < 0:
            return None
        block = self.blocks[i]
        return block[bisect_left(block, key) - 1]

    def between(self, low: int, high: int) -> Iterator[int]:
        """The keys in [low, high), in order (the keys must not change meanwhile)."""
        for i in range(max(bisect_right(self.firsts, low) - 1, 0), len(self.blocks)):
            block = self.blocks[i]
            for j in range(bisect_left(block, low), len(block)):
                if block[j] >= high:
                    return
                yield block[j]


def _fill(out: bytearray, start: int, end: int, value: int) -> None:
    pattern = bytes([value]) * min(end - start, BLOCK)
    for at in range(start, end, BLOCK):
        out[at:min(at + BLOCK, end)] = pattern[:min(BLOCK, end - at)]


def _cut(payload: Payload, start: int, end: int) -> Payload:
    return payload[start:end] if isinstance(payload, memoryview) else payload


class Extents:
    """Non-overlapping extents written in order (a later write wins where they meet); the rest reads as zero."""

    def __init__(self) -> None:
        self.keys = _Keys()
        self.spans: dict[int, tuple[int, Payload]] = {}  # start -> (end, payload)

    def write(self, addr: int, data: bytes | memoryview) -> None:
        if len(data):
            self._put(addr, addr + len(data), memoryview(data))

    def fill(self, addr: int, size: int, value: int) -> None:
        if size > 0:
            self._put(addr, addr + size, value & 0xFF)

    def _put(self, start: int, end: int, payload: Payload) -> None:
        for key in list(self._overlapping(start, end)):
            old_end, old = self.spans.pop(key)
            self.keys.remove(key)
            if key < start:
                self._add(key, start, _cut(old, 0, start - key))
            if old_end > end:
                self._add(end, old_end, _cut(old, end - key, old_end - key))
        self._add(start, end, payload)

    def _add(self, start: int, end: int, payload: Payload) -> None:
        self.spans[start] = (end, payload)
        self.keys.add(start)

    def _overlapping(self, start: int, end: int) -> Iterator[int]:
        """The starts of the extents that meet [start, end), in order."""
        if end <= start:
            return
        first = self.keys.before(start)
        if first is not None and self.spans[first][0] > start:
            yield first
        yield from self.keys.between(start, end)

    def pieces(self, addr: int, size: int) -> Iterator[tuple[int, int, Payload]]:
        """(start, end, payload) of the written parts of [addr, addr + size), cut to it, in order."""
        end = addr + size
        for key in self._overlapping(addr, end):
            span_end, payload = self.spans[key]
            low, high = max(key, addr), min(span_end, end)
            yield low, high, _cut(payload, low - key, high - key)

    def read(self, addr: int, size: int) -> bytearray:
        """`size` bytes at `addr` (the caller bounds `size`), made once: no copy of them is made."""
        out = bytearray(size)
        for low, high, payload in self.pieces(addr, size):
            if isinstance(payload, memoryview):
                out[low - addr:high - addr] = payload
            elif payload:
                _fill(out, low - addr, high - addr, payload)
        return out

    def touched(self, addr: int, size: int) -> bool:
        return next(self._overlapping(addr, addr + size), None) is not None

    def image(self, size: int, base: int = 0) -> SparseImage:
        """The `size` bytes from `base` as an image: zero fills left out, other fills made bytes."""
        extents = []
        for low, high, payload in self.pieces(base, size):
            if isinstance(payload, memoryview):
                extents.append((low - base, bytes(payload)))
            elif payload:
                extents += [(at - base, bytes([payload]) * (min(at + BLOCK, high) - at)) for at in range(low, high, BLOCK)]
        return SparseImage(size, tuple(extents))


@dataclass(frozen=True, repr=False)
class SparseImage:
    """An image as its length and its extents (offset, data), sorted and apart; the rest reads as zero."""

    size: int
    extents: tuple[tuple[int, bytes], ...] = ()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"SparseImage(<{self.size} bytes, {self.held} held in {len(self.extents)} extents>)"

    @property
    def held(self) -> int:
        return sum(len(data) for _, data in self.extents)

    def read(self, offset: int, size: int) -> bytes:
        """The bytes in [offset, offset + size), cut at the end of the image."""
        end = min(offset + size, self.size)
        out = bytearray(max(end - offset, 0))
        for at, data in self.extents:
            if at >= end:
                break
            low, high = max(at, offset), min(at + len(data), end)
            if low < high:
                out[low - offset:high - offset] = data[low - at:high - at]
        return bytes(out)

    def tobytes(self) -> bytes:
        """All of the image in memory: for small images and tests; write_to keeps the holes."""
        out = bytearray(self.size)
        for at, data in self.extents:
            out[at:at + len(data)] = data
        return bytes(out)

    def write_to(self, f: BinaryIO, base: int = 0) -> None:
        """Write the extents at `base` in `f`; the holes are left as they are (a sparse file stays sparse)."""
        for at, data in self.extents:
            f.seek(base + at)
            f.write(data)


class Builder:
    """An image read from a stream, block by block: blocks that are all zero are not kept."""

    def __init__(self) -> None:
        self.size = 0
        self.extents: list[tuple[int, bytes]] = []

    def add(self, chunk: bytes) -> None:
        for at in range(0, len(chunk), BLOCK):
            piece = chunk[at:at + BLOCK]
            if piece != _ZEROS[:len(piece)]:
                self.extents.append((self.size + at, piece))
        self.size += len(chunk)

    def image(self) -> SparseImage:
        return SparseImage(self.size, tuple(self.extents))
