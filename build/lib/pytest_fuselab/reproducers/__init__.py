"""Filesystem images out of raw or compressed image files, syzkaller programs and C reproducers.

`extract(path)` returns every image a file holds with the filesystem type, mount options and flags its
reproducer mounts it with; `iter_extract(paths)` also walks directories and yields the images one input at a
time (`extract_all` makes a list of them). Each input is held to one budget, the size limit: the bytes of all
its images, zero fills included; zero fills are kept as ranges (`SparseImage`), never as bytes. Inputs are
only regular files, refused by kind after a non-blocking open. Only bytes in this process:
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
from collections.abc import Iterable, Iterator
from pathlib import Path

from pytest_fuselab.errors import InputError, SettingError
from .cprog import from_c
from .executor import effective_options
from .extracted import DEFAULT_SIZE_LIMIT, Budget, Extracted, Found, bounded_notes
from .files import from_raw, load
from .fstype import detect_fstype, family
from .sparse import SparseImage
from .syzprog import SYZ_CALL, from_syz

__all__ = ["DEFAULT_SIZE_LIMIT", "Extracted", "SparseImage", "detect_fstype", "extract", "extract_all",
           "iter_extract"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())
_SNIFF_FSTYPE = 0x10100  # the bytes detect_fstype looks at


def extract(path: Path, size_limit: int = DEFAULT_SIZE_LIMIT) -> list[Extracted]:
    """Every filesystem image in the file `path`, in file order; raise InputError naming the file and
    the problem when there is none or the input is malformed."""
    _check_limit(size_limit)
    found = _extract(Path(path), size_limit, skip_unknown=False)
    return found if found is not None else []


def iter_extract(paths: Iterable[Path], size_limit: int = DEFAULT_SIZE_LIMIT) -> Iterator[Extracted]:
    """`extract` over files and directory trees (sorted, hidden entries and other text skipped), one input at a time."""
    _check_limit(size_limit)
    for path in map(Path, paths):
        if not path.is_dir():
            yield from extract(path, size_limit)
            continue
        count = 0
        for member in _walk(path):
            for item in _extract(member, size_limit, skip_unknown=True) or []:
                count += 1
                yield item
        if not count:
            raise InputError(f"{path}: no image, syzkaller program or C reproducer in this directory; pass a "
                             "directory that holds some")


def extract_all(paths: list[Path], size_limit: int = DEFAULT_SIZE_LIMIT) -> list[Extracted]:
    """All that `iter_extract` yields, in a list (which holds every image: prefer iter_extract for many)."""
    return list(iter_extract(paths, size_limit))


def _check_limit(size_limit: int) -> None:
    if not isinstance(size_limit, int) or isinstance(size_limit, bool) or size_limit <= 0:
        raise SettingError(f"size limit {size_limit!r}: must be a positive number of bytes")


def _walk(top: Path) -> list[Path]:
    """The files under `top`, sorted by their path below it, without hidden files and directories."""
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / name for name in files if not name.startswith(".")]
    return sorted(found, key=lambda path: path.relative_to(top).parts)


def _extract(path: Path, limit: int, skip_unknown: bool) -> list[Extracted] | None:
    budget = Budget(limit)
    loaded = load(path, budget)
    name = Path(path.stem) if loaded.compression else path
    text = loaded.text
    kind = "image" if text is None else _kind(name, text)
    if kind is None:
        if skip_unknown:
            log.info("skipping %s: neither an image nor a program with syz_mount_image", path)
            return None
        raise InputError(f"{path}: unknown file type: it is text, but not a syzkaller program or C reproducer "
                         "(no syz_mount_image call in it); pass a raw or compressed filesystem image, a .syz "
                         "program or a C reproducer")
    if loaded.image is not None:
        found = [from_raw(path, loaded.image, budget)]
    elif kind == "c":
        found = from_c(path, text or "", budget)
    else:
        found = from_syz(path, text or "", budget)
    for item in found:
        item.notes[:0] = ([f"decompressed from {loaded.compression}"] if loaded.compression else []) + loaded.notes
    return [_finish(path, index, item) for index, item in enumerate(found)]


def _kind(name: Path, text: str) -> str | None:
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
        seen = detect_fstype(found.image.read(0, _SNIFF_FSTYPE))
        if seen and found.fstype and family(seen) != family(found.fstype):
            notes.append(f"the image looks like {seen}, but the reproducer mounts it as {found.fstype}")
    return Extracted(path, index, found.fstype, found.image, options, flags, bounded_notes(notes))
