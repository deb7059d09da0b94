"""A build root matching the guest: a Debian chroot made with debootstrap from the host's mirror.

It carries build-essential, meson, git and Debian's build dependencies of fuse3 and e2fsprogs
(`apt-get build-dep`, with deb-src lines derived from the host's apt sources at run time), is
cached under ~/.cache/fuselab/buildroot/ and reused by every stack build.  Commands run in it as
argv lists through chroot(8); nothing is mounted.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator

from pytest_fuselab import proc
from pytest_fuselab.cache import build_once, cache_dir, file_lock, require_space
from pytest_fuselab.errors import ImageError
from pytest_fuselab.build.image import APT_OPTS, host_mirror, remove_tree, require_root

Progress = Callable[[str], None]
FORMAT = 1
TOOLS = ["meson", "ninja-build", "pkgconf", "git", "ca-certificates", "dpkg-dev", "libsystemd-dev",
         "systemd-dev", "udev"]
BUILD_DEPS = ["fuse3", "e2fsprogs"]
LISTS_MAX_AGE = 6 * 3600
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
       "HOME": "/root"}


@dataclass(frozen=True)
class BuildRoot:
    """A cached chroot: `root` is its tree; `run` runs argv in it."""

    directory: Path
    suite: str

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def ready(self) -> Path:
        return self.directory / "ready"

    def run(self, argv: list[str], log: Path, cwd: str = "/", env: dict[str, str] | None = None) -> str:
        """Run `argv` inside the chroot, in `cwd` (a path inside it), logging to `log`."""
        command = ["chroot", str(self.root), "env", "-C", cwd, *argv]
        return proc.run(command, ImageError, log, env={**ENV, **(env or {})})

    def host_path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def apt(self, args: list[str], log: Path) -> str:
        return self.run(["apt-get", *APT_OPTS, "-y", "-q", *args], log)

    def refresh(self, log: Path, progress: Progress) -> None:
        """`apt-get update` when the package lists are older than a few hours."""
        stamp = self.directory / "lists-updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE:
            return
        with file_lock(self.directory / "apt.lock", f"apt-get update in {self.directory.name}", progress):
            if stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE:
                return  # another worker did it while we waited
            progress(f"apt-get update in the build root {self.directory.name}")
            with resolv_conf(self.root):
                self.apt(["update"], log)
            stamp.touch()


def sources_text(mirror: str, suite: str) -> str:
    """deb and deb-src lines for `suite` from the host's mirror (deb822)."""
    return (f"Types: deb deb-src\nURIs: {mirror}\nSuites: {suite}\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def key(suite: str, mirror: str) -> str:
    data = f"{FORMAT}\n{suite}\n{mirror}\n{' '.join(TOOLS)}\n{' '.join(BUILD_DEPS)}"
    return hashlib.sha256(data.encode()).hexdigest()


@contextlib.contextmanager
def resolv_conf(root: Path) -> Iterator[None]:
    """The host's resolv.conf in the chroot while apt needs the network."""
    path = root / "etc/resolv.conf"
    path.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def make(work: Path, suite: str, mirror: str, progress: Progress) -> None:
    """debootstrap a build root into `work`, add deb-src, install the tools and Debian's build dependencies."""
    staged = BuildRoot(work, suite)
    log = work / "buildroot.log"
    progress(f"debootstrap {suite} (buildd) for the build root; log: {log}")
    proc.run(["debootstrap", "--variant=buildd", "--components=main", "--include=" + ",".join(TOOLS),
              suite, str(staged.root), mirror], ImageError, log)
    (staged.root / "etc/apt/sources.list").unlink(missing_ok=True)
    (staged.root / "etc/apt/sources.list.d/fuselab.sources").write_text(sources_text(mirror, suite))
    progress(f"build dependencies of {', '.join(BUILD_DEPS)} from Debian")
    with resolv_conf(staged.root):
        staged.apt(["update"], log)
        staged.apt(["build-dep", "--no-install-recommends", *BUILD_DEPS], log)
    (work / "lists-updated").touch()
    staged.ready.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def _problem(directory: Path) -> str | None:
    return None if (directory / "ready").exists() else "it has no ready stamp"


def ensure(progress: Progress, suite: str = "sid") -> BuildRoot:
    """The cached build root for `suite` from the host's mirror, made once under a lock."""
    require_root("building a FUSE stack from source")
    mirror = host_mirror()
    base = cache_dir() / "buildroot"
    target = BuildRoot(base / f"{suite}-{key(suite, mirror)[:12]}", suite)
    if target.ready.exists():
        return target
    require_space(base, 3 << 30, "the stack build root")
    start = time.monotonic()

    def build(work: Path) -> None:
        make(work, suite, mirror, progress)
        progress(f"build root {target.directory.name} ready in {time.monotonic() - start:.0f} s")

    build_once(target.directory, build, problem=_problem, lock=target.directory.with_suffix(".lock"),
               what=f"build root {target.directory.name}", progress=progress, remove=remove_tree)
    return target
