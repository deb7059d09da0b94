"""Disk files holding several copies of one image, a GPT partition each (written on the host as bytes).

One hot-plugged disk per image instead of one per driver: under TCG each PCI hot-plug costs the
guest's kernel and udev about as much as a mount, while a partition table is read once.  The
host only copies the image's bytes into place; it never reads them as a filesystem.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from pathlib import Path
from typing import BinaryIO

from pytest_fuselab.reproducers.sparse import SparseImage

SECTOR = 512
ALIGN = 2048  # first sector of each partition: a multiple of 1 MiB
ENTRIES, ENTRY_SIZE = 128, 128
ENTRY_SECTORS = ENTRIES * ENTRY_SIZE // SECTOR  # 32
LINUX_FS = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


def _align(sector: int) -> int:
    return -(-sector // ALIGN) * ALIGN


def layout(image_size: int, copies: int) -> tuple[list[tuple[int, int]], int]:
    """[(first, last)] sectors (inclusive) of each partition, and the disk's size in sectors."""
    length = -(-image_size // SECTOR)
    parts, first = [], ALIGN
    for _ in range(copies):
        parts.append((first, first + length - 1))
        first = _align(first + length)
    return parts, parts[-1][1] + 1 + ENTRY_SECTORS + 1  # the backup entries and header


def _guid(seed: bytes, what: str) -> bytes:
    """A GUID derived from the image, so the same image always makes the same disk."""
    return uuid.UUID(bytes=hashlib.sha256(seed + what.encode()).digest()[:16], version=4).bytes_le


def _entries(parts: list[tuple[int, int]], seed: bytes) -> bytes:
    table = bytearray(ENTRIES * ENTRY_SIZE)
    for i, (first, last) in enumerate(parts):
        name = f"copy{i + 1}".encode("utf-16-le")
        struct.pack_into("<16s16sQQQ72s", table, i * ENTRY_SIZE, LINUX_FS.bytes_le, _guid(seed, f"part{i}"),
                         first, last, 0, name)
    return bytes(table)


def _header(current: int, backup: int, entries_at: int, total: int, entries: bytes, seed: bytes) -> bytes:
    fields = [b"EFI PART", 0x00010000, 92, 0, 0, current, backup, ALIGN, total - ENTRY_SECTORS - 2,
              _guid(seed, "disk"), entries_at, ENTRIES, ENTRY_SIZE, zlib.crc32(entries)]
    fmt = "<8sIIIIQQQQ16sQIII"
    crc = zlib.crc32(struct.pack(fmt, *fields))
    fields[3] = crc
    return struct.pack(fmt, *fields).ljust(SECTOR, b"\0")


def _protective_mbr(total: int) -> bytes:
    mbr = bytearray(SECTOR)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                     min(total - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def _digest(image: bytes | SparseImage) -> bytes:
    """sha256 of the image's bytes; a sparse image is hashed extent by extent, its holes as zeros."""
    if isinstance(image, bytes):
        return hashlib.sha256(image).digest()
    h, done = hashlib.sha256(), 0
    for at, data in [*image.extents, (image.size, b"")]:
        while done < at:
            step = min(_CHUNK, at - done)
            h.update(_ZEROS[:step])
            done += step
        h.update(data)
        done += len(data)
    return h.digest()


def _write_copy(f: BinaryIO, image: bytes | SparseImage, base: int, data: list[int]) -> None:
    if isinstance(image, SparseImage):
        image.write_to(f, base)
        return
    for at in data:
        f.seek(base + at)
        f.write(image[at:at + _CHUNK])


def write_disk(path: Path, image: bytes | SparseImage, copies: int) -> list[tuple[int, int]]:
    """Write a disk file at `path` with `copies` partitions, each holding `image`; return each
    partition's (byte offset, size in bytes).  Runs of zeros stay holes (a sparse file)."""
    if copies < 1 or copies > ENTRIES:
        raise ValueError(f"a GPT disk holds 1 to {ENTRIES} copies, not {copies}")
    if not len(image):
        raise ValueError("an empty image cannot be put in a partition")
    parts, total = layout(len(image), copies)
    seed = _digest(image)
    entries = _entries(parts, seed)
    last = total - 1
    with open(path, "wb") as f:
        f.truncate(total * SECTOR)
        f.write(_protective_mbr(total))
        f.write(_header(1, last, 2, total, entries, seed))
        f.write(entries)
        data = [] if isinstance(image, SparseImage) else [
            at for at in range(0, len(image), _CHUNK) if image[at:at + _CHUNK] != _ZEROS[:len(image) - at]]
        for first, _ in parts:
            _write_copy(f, image, first * SECTOR, data)
        f.seek((last - ENTRY_SECTORS) * SECTOR)
        f.write(entries)
        f.write(_header(last, 1, last - ENTRY_SECTORS, total, entries, seed))
    return [(first * SECTOR, (end - first + 1) * SECTOR) for first, end in parts]
