"""Images in C reproducers: the syz_mount_image calls the reader finds, in their three layouts."""

from __future__ import annotations

import struct
from pathlib import Path

from pytest_fuselab.errors import InputError
from .creader import CReader, cstring
from .executor import OLD_MAX_SEGMENTS, assemble, clamp_segment, inflate
from .extracted import Budget, Found, over_limit
from .sparse import Extents


PIECE_COST = 256  # bytes counted against the budget for each piece of memory a segment copies


def from_c(path: Path, text: str, budget: Budget) -> list[Found]:
    found: list[Found] = []

    def on_call(reader: CReader, args: list[int], pos: int) -> None:
        item = _c_call(reader.memory, args, f"{reader.where(pos)} (syz_mount_image)", budget)
        if item is not None:
            found.append(item)

    reader = CReader(path, text, on_call)
    reader.run()
    if not found:
        what = (f"its {reader.calls} syz_mount_image call(s) carry no image" if reader.calls
                else "it has no syz_mount_image call with constant arguments")
        raise InputError(f"{path}: no filesystem image in this C reproducer: {what}; pass a reproducer that "
                         "mounts an image")
    return found


def _zlib_at(memory: Extents, addr: int) -> bool:
    head = memory.read(addr, 2)
    return addr != 0 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


def _c_layout(memory: Extents, args: list[int]) -> str:
    """As _syz_layout; segments are told by the table at args[4] (an address, not chdir's 0 or 1)."""
    if len(args) == 8:
        return "transitional" if _zlib_at(memory, args[7]) else "segments"
    if len(args) != 7:
        return "unknown"
    if args[5] > 0 and _zlib_at(memory, args[6]):
        return "current"
    if args[4] > 1 and memory.touched(args[4], 8) or args[3] == args[4] == 0:
        return "segments"
    return "current"


def _c_call(memory: Extents, args: list[int], where: str, budget: Budget) -> Found | None:
    notes: list[str] = []
    layout = _c_layout(memory, args)
    if layout == "unknown":
        raise InputError(f"{where}: syz_mount_image has {len(args)} arguments, a layout this reader does not "
                         "know; pass the reproducer to the project with the syzkaller version that wrote it")
    fstype = cstring(memory, args[0]).decode("latin-1")
    if layout == "segments":
        segments = _c_segments(memory, args[3], args[4], where, budget, notes)
        if segments is None:
            return None
        image = assemble(args[2], segments[0], segments[1], budget, where, notes)
        flags, opts = args[5], args[6]
    else:
        size, addr = (args[3], args[7]) if layout == "transitional" else (args[5], args[6])
        if not size or not addr:
            return None
        if size > budget.left:
            over_limit(where, size, budget.limit, budget.used)
        if not memory.touched(addr, size):
            raise InputError(f"{where}: nothing is written at the image address {addr:#x} before the call; the "
                             "reproducer is damaged or cut short, get it again")
        image = inflate(memory.read(addr, size), budget, where)
        flags, opts = (args[4], args[5]) if layout == "transitional" else (args[2], args[3])
    if not len(image):
        return None  # an empty image (zlib of nothing, no segments) is no image
    if not fstype:
        notes.append("the filesystem name is not written before the call")
    return Found(fstype, image, cstring(memory, opts), flags, notes)


def _c_segments(memory: Extents, count: int, addr: int, where: str, budget: Budget,
                notes: list[str]) -> tuple[Extents, int] | None:
    """The segments of the table at `addr` written in an image, and the end of the last one."""
    if count > OLD_MAX_SEGMENTS:
        notes.append(f"{count} segments cut to {OLD_MAX_SEGMENTS}, as syzkaller's executor did")
        count = OLD_MAX_SEGMENTS
    if not count:
        return None
    image, total, end = Extents(), 0, 0
    for data_addr, size, offset in struct.iter_unpack("<QQQ", memory.read(addr, 24 * count)):
        offset, size = clamp_segment(offset, size, notes)
        total += size
        image.fill(offset, size, 0)
        for low, high, payload in memory.pieces(data_addr, size):
            total += PIECE_COST  # each piece is held as an extent of its own
            if total > budget.left:
                break
            if isinstance(payload, int):
                image.fill(offset + low - data_addr, high - low, payload)
            else:
                image.write(offset + low - data_addr, payload)
        if total > budget.left:
            over_limit(where, None, budget.limit, budget.used)
        end = max(end, offset + size)
    return image, end
