"""Images in C reproducers: the syz_mount_image calls the reader found, in their three layouts."""

from __future__ import annotations

import struct
from pathlib import Path

from pytest_fuselab.errors import ImageError
from .creader import CReader, Memory
from .executor import OLD_MAX_SEGMENTS, assemble, clamp_segment, inflate
from .extracted import Found, over_limit


def from_c(path: Path, text: str, limit: int) -> list[Found]:
    reader = CReader(path, text)
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


def _zlib_at(memory: Memory, addr: int, upto: int) -> bool:
    head, _ = memory.read(addr, 2, upto)
    return addr != 0 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


def _c_layout(memory: Memory, args: list[int], upto: int) -> str:
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


def _c_call(reader: CReader, args: list[int], upto: int, where: str, limit: int) -> Found | None:
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
        image = assemble(args[2], segments, limit, where, notes)
        flags, opts = args[5], args[6]
    else:
        size, addr = (args[3], args[7]) if layout == "transitional" else (args[5], args[6])
        if not size or not addr:
            return None
        if size > limit:
            over_limit(where, size, limit)
        raw, touched = memory.read(addr, size, upto)
        if not touched:
            raise ImageError(f"{where}: nothing is written at the image address {addr:#x} before the call; the "
                             "reproducer is damaged or cut short, get it again")
        image = inflate(raw, limit, where)
        flags, opts = (args[4], args[5]) if layout == "transitional" else (args[2], args[3])
    if not fstype:
        notes.append("the filesystem name is not written before the call")
    return Found(fstype, image, memory.cstring(opts, upto), flags, notes)


def _c_segments(memory: Memory, count: int, addr: int, upto: int, where: str, limit: int,
                notes: list[str]) -> list[tuple[int, bytes]]:
    if count > OLD_MAX_SEGMENTS:
        notes.append(f"{count} segments cut to {OLD_MAX_SEGMENTS}, as syzkaller's executor did")
        count = OLD_MAX_SEGMENTS
    table, _ = memory.read(addr, 24 * count, upto)
    segments, total = [], 0
    for data_addr, size, offset in struct.iter_unpack("<QQQ", table):
        offset, size = clamp_segment(offset, size, notes)
        total += size
        if total > limit:
            over_limit(where, None, limit)
        segments.append((offset, memory.read(data_addr, size, upto)[0]))
    return segments
