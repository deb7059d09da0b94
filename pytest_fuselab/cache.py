"""Where the lab keeps what it builds, and the file lock that makes each build happen once."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pytest_fuselab.errors import HostError


def cache_dir() -> Path:
    """$FUSELAB_CACHE_DIR, else $XDG_CACHE_HOME/fuselab, else ~/.cache/fuselab."""
    if os.environ.get("FUSELAB_CACHE_DIR"):
        return Path(os.environ["FUSELAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fuselab"


def require_space(directory: Path, needed: int, what: str) -> None:
    """Fail early, with numbers, when `directory` cannot hold `needed` more bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise HostError(f"not enough free disk for {what} in {directory}: {free / 2**30:.1f} GiB free, "
                        f"about {needed / 2**30:.1f} GiB needed; free some space or set FUSELAB_CACHE_DIR "
                        "to a larger disk (`fuselab image clean` removes cached images)")


@contextlib.contextmanager
def file_lock(path: Path, what: str, progress: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path`; say so if another process holds it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress(f"waiting for another process building {what} (lock {path})")
            start = time.monotonic()
            fcntl.flock(f, fcntl.LOCK_EX)
            if progress:
                progress(f"lock on {what} acquired after {time.monotonic() - start:.0f} s")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
