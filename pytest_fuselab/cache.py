"""Where the lab keeps what it builds, and the file lock that makes each build happen once."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from collections.abc import Callable, Iterator


def cache_dir() -> Path:
    """$FUSELAB_CACHE_DIR, else $XDG_CACHE_HOME/fuselab, else ~/.cache/fuselab."""
    if os.environ.get("FUSELAB_CACHE_DIR"):
        return Path(os.environ["FUSELAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fuselab"


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
