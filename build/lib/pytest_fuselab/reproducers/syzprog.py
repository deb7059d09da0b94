"""Images in syzkaller programs: the syz_mount_image calls and their three argument layouts."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_fuselab.errors import InputError
from .executor import assemble, clamp_segment, inflate
from .extracted import Budget, Found, over_limit
from .sparse import Extents
from .syzlang import Data, Group, Int, Ptr, SyzParser, Value, int_value
from .syzoptions import syz_options


SYZ_CALL = re.compile(r"^[ \t]*(?:r\d+[ \t]*=[ \t]*)?syz_mount_image\$(?P<fs>\w+)\(", re.M | re.A)


def from_syz(path: Path, text: str, budget: Budget) -> list[Found]:
    found: list[Found] = []
    calls, line, counted = 0, 1, 0
    for match in SYZ_CALL.finditer(text):
        calls += 1
        line += text.count("\n", counted, match.start())  # lines counted once, from the last call on
        counted = match.start()
        call = f"syz_mount_image${match.group('fs')}"
        where = f"{path}: line {line} ({call})"
        parser = SyzParser(text, match.end(), path, call)
        args = parser.items(")")
        item = _syz_call(args, match.group("fs"), where, budget)
        if item is not None:
            found.append(item)
    if not found:
        what = (f"its {calls} syz_mount_image call(s) carry no image data" if calls
                else "it has no syz_mount_image call")
        raise InputError(f"{path}: no filesystem image in this program: {what}; pass a syzkaller program or "
                         "C reproducer that mounts an image")
    return found


def _syz_layout(args: list[Value]) -> str:
    """"current" (fs, dir, flags, opts, chdir, size, img), "transitional" (fs, dir, size, csize, flags,
    opts, chdir, img) or "segments" (fs, dir, size, nsegs, segments, flags, opts[, chdir])."""
    def compressed(value: Value) -> bool:
        return isinstance(value, Ptr) and isinstance(value.target, Data) and value.target.compressed

    if len(args) == 8:
        return "transitional" if compressed(args[7]) else "segments"
    if len(args) != 7:
        return "unknown"
    if compressed(args[6]):
        return "current"
    segments = args[4]
    return "segments" if isinstance(segments, Ptr) and isinstance(segments.target, Group) else "current"


def _syz_call(args: list[Value], call_fs: str, where: str, budget: Budget) -> Found | None:
    layout = _syz_layout(args)
    if layout == "unknown":
        raise InputError(f"{where}: syz_mount_image has {len(args)} arguments, a layout this reader does not "
                         "know; pass the program to the project with the syzkaller version that wrote it")
    notes: list[str] = []
    fstype = _syz_string(args[0])
    if not fstype:
        fstype = call_fs
        notes.append(f"no filesystem name in the call; {call_fs} taken from syz_mount_image${call_fs}")
    if layout == "segments":
        segments = _syz_segments(args[4], where, budget, notes)
        if segments is None:
            return None
        image = assemble(int_value(args[2]), segments[0], segments[1], budget, where, notes)
        flags, options = int_value(args[5]), args[6]
    else:
        image_arg = args[7] if layout == "transitional" else args[6]
        raw = image_arg.target.data if isinstance(image_arg, Ptr) and isinstance(image_arg.target, Data) else b""
        if not raw:
            return None
        image = inflate(raw, budget, where)
        flags, options = (int_value(args[4]), args[5]) if layout == "transitional" else (int_value(args[2]), args[3])
    if not len(image):
        return None  # an empty image (zlib of nothing, no segments) is no image
    raw_options = syz_options(options, call_fs, notes)
    return Found(fstype, image, raw_options, flags, notes)


def _syz_string(value: Value) -> str:
    if isinstance(value, Ptr) and isinstance(value.target, Data):
        return value.target.data.split(b"\0", 1)[0].decode("latin-1")
    return ""


def _syz_segments(value: Value, where: str, budget: Budget, notes: list[str]) -> tuple[Extents, int] | None:
    """The {data, len, offset} segments of the old format written in an image, and the end of the last."""
    if not isinstance(value, Ptr) or not isinstance(value.target, Group) or not value.target.items:
        return None
    image, total, end = Extents(), 0, 0
    for item in value.target.items:
        if not isinstance(item, Group):
            raise InputError(f"{where}: an image segment is not a {{data, len, offset}} struct; the program is "
                             "damaged, get it again")
        fields = list(item.items) + [Int(0)] * (3 - len(item.items))
        pointer = fields[0]
        data = pointer.target if isinstance(pointer, Ptr) and isinstance(pointer.target, Data) else Data(b"")
        declared = int_value(fields[1]) if len(item.items) > 1 else data.size
        offset, length = clamp_segment(int_value(fields[2]), declared, notes)
        total += length
        if total > budget.left:
            over_limit(where, None, budget.limit, budget.used)
        image.fill(offset, length, 0)
        image.write(offset, data.data[:length])
        end = max(end, offset + length)
    return image, end
