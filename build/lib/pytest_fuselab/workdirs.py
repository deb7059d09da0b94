"""Work directories of one run under TMPDIR: owned through a lock, swept once their run is dead.

A run killed with SIGKILL cannot remove its work directory.  Each one therefore holds a marker
file locked with flock(2) for as long as the run lives; the kernel drops that lock when the
process dies, whatever killed it, so a directory whose marker can be locked belongs to nobody.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pytest_fuselab.errors import HostError

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

MARKER = ".fuselab-owner"
UNMARKED_AGE = 86400.0  # directories of versions without a marker are swept after a day
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def work_dir(prefix: str, need: int = 0, parent: Path | None = None) -> Iterator[Path]:
    """A fresh directory `prefix`XXXX under TMPDIR (or `parent`), removed afterwards, swept if the
    run dies.  `need` bytes must be free there; running out of space inside is a HostError."""
    parent = Path(parent or tempfile.gettempdir())
    sweep_work_dirs(prefix, parent)
    check_space(parent, need)
    path, owner = _create(prefix, parent)
    try:
        yield path
    except OSError as exc:
        if exc.errno in NO_SPACE and _inside(exc, path):
            raise no_space(parent, path, exc) from exc
        raise
    finally:
        shutil.rmtree(path, ignore_errors=True)
        owner.close()


def check_space(parent: Path, need: int) -> None:
    """Fail early, with numbers, when `parent` has less than `need` bytes free."""
    if need <= 0:
        return
    try:
        free = shutil.disk_usage(parent).free
    except OSError as exc:
        raise unusable(parent, exc) from exc
    if free < need:
        raise HostError(f"not enough free space for a work directory in {parent} (TMPDIR): "
                        f"{_mib(free)} free, about {_mib(need)} needed; free some space there or set "
                        "TMPDIR to a directory on a larger filesystem")


def _create(prefix: str, parent: Path) -> tuple[Path, IO[str]]:
    """Make the directory and its marker, locked before it gets the name sweepers look for."""
    path: Path | None = None
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        pending = path / (MARKER + ".new")
        owner = os.fdopen(os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "w")
        try:
            fcntl.flock(owner, fcntl.LOCK_EX)
            owner.write(f"{os.getpid()}\n")
            owner.flush()
            os.rename(pending, path / MARKER)
        except BaseException:
            owner.close()
            raise
    except OSError as exc:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        raise host_error(exc, parent, path) from exc
    return path, owner


def sweep_work_dirs(prefix: str, parent: Path | None = None) -> list[Path]:
    """Remove this user's `prefix`* directories whose run is dead (their marker lock is free)."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for directory in parent.glob(glob_escape(prefix) + "*"):
        try:
            info = directory.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            if _dead(directory, info):
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
                log.info("removed %s, the work directory of a dead run", directory)
        except OSError:
            continue  # gone meanwhile, or not ours to judge
    return removed


def _dead(directory: Path, info: os.stat_result) -> bool:
    """Whether no live process owns `directory` (checked with its marker's lock held)."""
    try:
        fd = os.open(directory / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:  # made by a version without markers, or being made right now
        return time.time() - info.st_mtime > UNMARKED_AGE
    with os.fdopen(fd) as marker:
        try:
            fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its run is alive
        return True


def _inside(exc: OSError, path: Path) -> bool:
    """Whether `exc` concerns `path` (an error without a file name, from write(2), may)."""
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    return not names or any(Path(os.fsdecode(n)).absolute().is_relative_to(path) for n in names)


def host_error(exc: OSError, parent: Path, path: Path | None = None) -> HostError:
    """The lab's error for `exc`, raised making or filling a temporary file or directory in `parent`."""
    return no_space(parent, path, exc) if exc.errno in NO_SPACE else unusable(parent, exc)


def no_space(parent: Path, path: Path | None, exc: OSError) -> HostError:
    try:
        free = f"{_mib(shutil.disk_usage(parent).free)} free now"
    except OSError:
        free = "free space unknown"
    where = f"the work directory {path}" if path else "a work directory"
    return HostError(f"{exc.strerror} in {where} under {parent} (TMPDIR; {free}): the lab needs space "
                     "there for the images it judges; free some or set TMPDIR to a directory on a "
                     "larger filesystem")


def unusable(parent: Path, exc: OSError) -> HostError:
    return HostError(f"cannot make a work directory in {parent} (TMPDIR): {exc.strerror or exc}; "
                     "set TMPDIR to a writable directory")


def glob_escape(text: str) -> str:
    """`text` matched literally by Path.glob."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"
