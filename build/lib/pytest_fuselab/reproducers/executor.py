"""What syzkaller's executor does to an image and its mount options before it calls mount(2)."""

from __future__ import annotations

import zlib

from pytest_fuselab.errors import InputError
from .extracted import Budget, over_limit
from .sparse import Builder, Extents, SparseImage


MS_RDONLY = 0x1
CHUNK = 1 << 20
OLD_IMAGE_MAX_SIZE = 129 << 20  # what syzkaller's executor clamped segment images to
OLD_MAX_SEGMENTS = 4096
EXECUTOR_OPTS_MAX = 224  # the executor copies at most sizeof(opts) - 32 bytes of options


def inflate(raw: bytes | bytearray, budget: Budget, where: str) -> SparseImage:
    """Decompress a syzkaller image (a zlib stream) block by block, refusing more than the budget has left."""
    inflater, builder, view = zlib.decompressobj(), Builder(), memoryview(raw)
    try:
        for at in range(0, len(view), CHUNK):  # fed in pieces: the unconsumed input is never copied whole
            data: bytes | memoryview = view[at:at + CHUNK]
            while not inflater.eof:
                chunk = inflater.decompress(data, CHUNK)
                data = inflater.unconsumed_tail
                if builder.size + len(chunk) > budget.left:
                    over_limit(where, None, budget.limit, budget.used)
                builder.add(chunk)
                if not data and len(chunk) < CHUNK:  # a full chunk may leave more output pending
                    break
    except zlib.error as exc:
        raise InputError(f"{where}: the image is not a valid zlib stream ({exc}); the reproducer is damaged, "
                         "get it again") from exc
    if not inflater.eof:
        raise InputError(f"{where}: the image's zlib stream is truncated: its {len(raw)} compressed bytes end "
                         f"after {builder.size} bytes of image; the reproducer was cut short, get the complete one")
    budget.take(builder.size, where)
    return builder.image()


def assemble(size: int, image: Extents, end: int, budget: Budget, where: str, notes: list[str]) -> SparseImage:
    """An image of the old format: `size` zero bytes with the segments written in `image` (up to `end`) over them."""
    if size > OLD_IMAGE_MAX_SIZE:
        notes.append(f"declared image size {size:#x} cut to {OLD_IMAGE_MAX_SIZE:#x}, as syzkaller's executor did")
        size = OLD_IMAGE_MAX_SIZE
    if end > size:
        notes.append(f"segments reach {end:#x}, past the declared image size {size:#x}; image made {end:#x} bytes")
        size = end
    budget.take(size, where)
    return image.image(size)


def clamp_segment(offset: int, size: int, notes: list[str]) -> tuple[int, int]:
    """An old-format segment's offset and size as syzkaller's executor bounded them."""
    new_size = min(size, OLD_IMAGE_MAX_SIZE)
    new_offset = min(offset % OLD_IMAGE_MAX_SIZE, OLD_IMAGE_MAX_SIZE - new_size)
    if (new_offset, new_size) != (offset, size):
        notes.append(f"segment of {size:#x} bytes at {offset:#x} bounded to {new_size:#x} bytes at "
                     f"{new_offset:#x}, as syzkaller's executor did")
    return new_offset, new_size


def effective_options(raw: bytes, fstype: str, flags: int, notes: list[str]) -> tuple[str, int]:
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


def format_int(value: int, style: str) -> str:
    value &= (1 << 64) - 1
    return {"hex": f"0x{value:016x}", "dec": f"{value:020d}", "oct": f"{value:023o}"}[style]
