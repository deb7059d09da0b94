"""Filesystem images out of raw or compressed image files, syzkaller programs and C reproducers.

`extract(path)` returns every image a file holds with the filesystem type, mount options and flags its
reproducer mounts it with; `extract_all(paths)` also walks directories. Only bytes in this process:
nothing here mounts, loop-attaches or fscks an image. Programs are read in syzkaller's three layouts
(today's zlib+base64 image; November 2022's; the older size plus segments at offsets); C reproducers
by replaying their memcpy/memset/sprintf/store statements into a sparse memory. Mount options are
given as `mount -o` takes them, after the changes syzkaller's executor makes (`errors=continue` for
ext2/3/4, `nouuid` for xfs); each change and each option not understood is told in `notes`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from pytest_fuselab.errors import ImageError
from .cprog import from_c
from .executor import effective_options
from .extracted import DEFAULT_SIZE_LIMIT, Extracted, Found
from .files import as_text, from_raw, load
from .fstype import detect_fstype, family
from .syzprog import SYZ_CALL, from_syz

__all__ = ["DEFAULT_SIZE_LIMIT", "Extracted", "detect_fstype", "extract", "extract_all"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


def extract(path: Path, size_limit: int = DEFAULT_SIZE_LIMIT) -> list[Extracted]:
    """Every filesystem image in the file `path`, in file order; raise ImageError naming the file and
    the problem when there is none or the input is malformed."""
    found = _extract(Path(path), size_limit, skip_unknown=False)
    return found if found is not None else []


def extract_all(paths: list[Path], size_limit: int = DEFAULT_SIZE_LIMIT) -> list[Extracted]:
    """`extract` over files and directory trees (walked in sorted order, hidden entries skipped).
    Inside a directory, text files that are neither programs nor reproducers are skipped."""
    out: list[Extracted] = []
    for path in map(Path, paths):
        if path.is_dir():
            for member in _walk(path):
                out.extend(_extract(member, size_limit, skip_unknown=True) or [])
        else:
            out.extend(extract(path, size_limit))
    return out


def _walk(top: Path) -> list[Path]:
    """The files under `top`, sorted by their path below it, without hidden files and directories."""
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / name for name in files if not name.startswith(".")]
    return sorted(found, key=lambda path: path.relative_to(top).parts)


def _extract(path: Path, limit: int, skip_unknown: bool) -> list[Extracted] | None:
    data, compression = load(path, limit)
    name = Path(path.stem) if compression else path
    text = as_text(data)
    kind = _kind(name, text)
    if kind is None:
        if skip_unknown:
            log.info("skipping %s: neither an image nor a program with syz_mount_image", path)
            return None
        raise ImageError(f"{path}: unknown file type: it is text, but not a syzkaller program or C reproducer "
                         "(no syz_mount_image call in it); pass a raw or compressed filesystem image, a .syz "
                         "program or a C reproducer")
    if kind == "image":
        found = [from_raw(path, data, limit)]
    elif kind == "c":
        found = from_c(path, text or "", limit)
    else:
        found = from_syz(path, text or "", limit)
    if compression:
        for item in found:
            item.notes.insert(0, f"decompressed from {compression}")
    return [_finish(path, index, item) for index, item in enumerate(found)]


def _kind(name: Path, text: str | None) -> str | None:
    if text is None:
        return "image"
    if re.search(r"\bsyz_mount_image\s*\(", text):
        return "c"
    if SYZ_CALL.search(text):
        return "syz"
    if name.suffix == ".c":
        return "c"
    if name.suffix == ".syz" or "syz_mount_image$" in text:
        return "syz"
    return None


def _finish(path: Path, index: int, found: Found) -> Extracted:
    notes = list(found.notes)
    options, flags = "", found.flags
    if found.from_program:
        options, flags = effective_options(found.raw_options, found.fstype, flags, notes)
        seen = detect_fstype(found.image)
        if seen and found.fstype and family(seen) != family(found.fstype):
            notes.append(f"the image looks like {seen}, but the reproducer mounts it as {found.fstype}")
    return Extracted(path, index, found.fstype, found.image, options, flags, notes)
