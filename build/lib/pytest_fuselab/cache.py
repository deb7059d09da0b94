"""Where the lab keeps what it builds, and how each cached result is built once and healed."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pytest_fuselab.errors import HostError, ImageError
from pytest_fuselab.sparse import file_sha256

Progress = Callable[[str], None]
_BUILDING = re.compile(r"\.(?:build|old)-(\d+)$")  # build_once's work and replaced directories
_ASIDE = ".bad-"  # unusable results set aside for a person to look at
_digests: dict[tuple[int, int, int, int, int], str] = {}  # (dev, inode, size, mtime, ctime) -> sha256


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


def missing(path: Path) -> str | None:
    """The default check of build_once: a result is whole once it exists."""
    return None if path.exists() else "it is missing"


def remove_dir(path: Path) -> None:
    """Remove a file or a directory tree if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_builds(directory: Path, remove: Callable[[Path], None] = remove_dir) -> list[Path]:
    """Remove the `NAME.build-PID` (and `NAME.old-PID`) entries in `directory` whose process is gone; return them."""
    swept = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        match = _BUILDING.search(path.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            remove(path)
            swept.append(path)
    return swept


def set_aside(final: Path, reason: str, progress: Progress | None = None,
              remove: Callable[[Path], None] = remove_dir) -> Path | None:
    """Rename an unusable cached result to `NAME.bad-TIME` (keeping only the newest such) and say so."""
    if not final.exists():
        return None
    for older in final.parent.glob(final.name + _ASIDE + "*"):
        remove(older)
    aside = final.with_name(f"{final.name}{_ASIDE}{time.strftime('%Y%m%d-%H%M%S')}")
    final.rename(aside)
    if progress:
        progress(f"cached {final} is unusable ({reason}): set aside as {aside.name}, making it again")
    return aside


def build_once(final: Path, build: Callable[[Path], None], *, problem: Callable[[Path], str | None] = missing,
               lock: Path | None = None, what: str | None = None, progress: Progress | None = None,
               rebuild: bool = False, remove: Callable[[Path], None] = remove_dir) -> Path:
    """Return `final` once `problem(final)` is None, made by `build(work)` at most once across processes."""
    # check, lock, check again; an unusable `final` is set aside; `build` fills an empty NAME.build-PID
    # directory, renamed to `final` once it passes `problem`.  A failed build keeps its partial directory
    # (and logs) for a person; a later call sweeps it once its process is gone.
    if not rebuild and problem(final) is None:
        return final
    what = what or final.name
    with file_lock(lock or final.with_name(final.name + ".lock"), what, progress):
        reason = problem(final)
        if reason is None and not rebuild:
            return final  # another process built it while we waited
        sweep_builds(final.parent, remove)
        if reason is not None:
            set_aside(final, reason, progress, remove)
        work = final.with_name(f"{final.name}.build-{os.getpid()}")
        remove(work)
        work.mkdir(parents=True)
        build(work)
        if (bad := problem(work)) is not None:
            raise ImageError(f"building {what} gave an unusable result ({bad}); it is kept in {work}")
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        if final.exists():
            final.rename(old)
        work.rename(final)
        remove(old)
    return final


def digest_of(path: Path) -> str:
    """The sha256 of `path`, hashed once per process while its inode, size, mtime and ctime stay the same."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _digests:
        _digests[key] = file_sha256(path)
    return _digests[key]


def digest_problem(directory: Path, digests: object) -> str | None:
    """Which file of `directory` differs from the digests recorded when it was built (None: all match)."""
    if not isinstance(digests, dict):
        return None  # made before digests were recorded
    for name, want in sorted(digests.items()):
        try:
            if digest_of(directory / name) != want:
                return f"{name} does not match the digest recorded when it was built"
        except OSError as exc:
            return f"{name} cannot be read ({exc})"
    return None
