"""Debian's prebuilt kernels from the host's mirror: the packages of one kernel release unpacked
(no maintainer scripts) into the cache, as a bzImage, its config and its modules."""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_fuselab import proc
from pytest_fuselab.build import versions
from pytest_fuselab.cache import cache_dir, file_lock
from pytest_fuselab.errors import HostError, ImageError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DebianKernel:
    """An unpacked Debian kernel: `root` holds boot/ and usr/lib/modules/<release>/."""

    release: str
    root: Path

    @property
    def bzimage(self) -> Path:
        for candidate in (self.root / "boot" / f"vmlinuz-{self.release}", self.modules / "vmlinuz"):
            if candidate.is_file():
                return candidate
        raise ImageError(f"no vmlinuz for {self.release} under {self.root}")

    @property
    def modules(self) -> Path:
        return self.root / "usr/lib/modules" / self.release

    @property
    def config(self) -> Path:
        for candidate in (self.root / "boot" / f"config-{self.release}", self.modules / "config"):
            if candidate.is_file():
                return candidate
        raise ImageError(f"no config for {self.release} under {self.root}")


def stanzas(index: str, names: set[str]) -> dict[str, str]:
    """{package: Filename} for the `names` found in a Packages index."""
    found = {}
    for stanza in index.split("\n\n"):
        package = re.search(r"^Package: (\S+)$", stanza, re.M)
        filename = re.search(r"^Filename: (\S+)$", stanza, re.M)
        if package and filename and package.group(1) in names:
            found[package.group(1)] = filename.group(1)
    return found


def packages_for(release: str, index: str) -> dict[str, str]:
    """The packages that carry `release`: linux-image-R (older kernels), or linux-binary-R with
    linux-modules-R and linux-base-R (the split of Debian 14 era kernels)."""
    split = {f"linux-binary-{release}", f"linux-modules-{release}", f"linux-base-{release}"}
    found = stanzas(index, split | {f"linux-image-{release}"})
    if split <= set(found):
        return {p: found[p] for p in split}
    if f"linux-image-{release}" in found and not {f"linux-binary-{release}"} & set(found):
        return {f"linux-image-{release}": found[f"linux-image-{release}"]}
    raise ImageError(f"the archive has no complete package set for kernel {release} "
                     f"(found: {', '.join(sorted(found)) or 'nothing'})")


def release_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release.split("+")[0].split("-")[0]))


def newest(suite: str, pattern: str, mirror: str | None = None) -> str:
    r"""The newest release in `suite` matching `pattern` (e.g. r"6\.18\.\d+\+deb13-cloud-amd64")
    whose packages are complete: pinned versions leave the archive, series stay."""
    from pytest_fuselab.build.image import host_mirror

    index = versions.fetch_index((mirror or host_mirror()).rstrip("/"), suite, timeout=120)
    found: set[str] = set(re.findall(rf"^Package: linux-(?:image|binary)-({pattern})$", index, re.M))
    complete: list[str] = []
    for release in found:
        try:
            packages_for(release, index)
            complete.append(release)
        except ImageError:
            continue
    if not complete:
        raise ImageError(f"no complete kernel matching {pattern!r} in {suite}")
    return max(complete, key=release_key)


def fetch(release: str, suite: str, progress: Progress = lambda _: None, mirror: str | None = None) -> DebianKernel:
    """Download and unpack Debian's kernel `release` (e.g. 6.18.15+deb13-cloud-amd64) from `suite`
    of the host's mirror, once; later calls return the cached copy."""
    from pytest_fuselab.build.image import host_mirror

    target = cache_dir() / "debian-kernels" / release
    kernel = DebianKernel(release, target)
    with file_lock(target.with_suffix(".lock"), f"Debian kernel {release}", progress):
        if (target / ".complete").exists():
            return kernel
        mirror = (mirror or host_mirror()).rstrip("/")
        try:
            wanted = packages_for(release, versions.fetch_index(mirror, suite, timeout=120))
        except OSError as exc:
            raise HostError(f"cannot read {suite}'s package index from {mirror}: {exc}") from exc
        shutil.rmtree(target, ignore_errors=True)
        (target / "debs").mkdir(parents=True)
        for package, filename in sorted(wanted.items()):
            deb = target / "debs" / Path(filename).name
            progress(f"downloading {package} from {mirror} ({suite})")
            try:
                with urllib.request.urlopen(f"{mirror}/{filename}", timeout=300) as response, open(deb, "wb") as f:  # noqa: S310
                    shutil.copyfileobj(response, f)
            except OSError as exc:
                raise HostError(f"cannot download {mirror}/{filename}: {exc}") from exc
            proc.run(["dpkg-deb", "-x", str(deb), str(target)], ImageError)
            deb.unlink()
        (target / ".complete").write_text(" ".join(sorted(wanted)) + "\n")
    return kernel
