"""Build guest images from recipes: debootstrap, Debian's kernel, our initramfs, mke2fs -d.

Nothing here mounts anything on the host: the root tree becomes an ext4 image with
`mke2fs -d`, and the image is kept read-only with a qcow2 overlay per guest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Protocol

from pytest_fuselab.build import initramfs
from pytest_fuselab import proc
from pytest_fuselab.build import versions
from pytest_fuselab.cache import build_once, cache_dir, digest_of, digest_problem, require_space
from pytest_fuselab.errors import HostError, ImageError
from pytest_fuselab.build.recipe import Recipe

Progress = Callable[[str], None]


class Layer(Protocol):
    """Files laid over the guest root after the recipe (stack.Layer: a FUSE stack built from source)."""

    @property
    def directory(self) -> Path: ...

    def manifest(self) -> dict[str, object]: ...

    def install(self, root: Path, log: Path) -> None: ...

APT_OPTS = ["-o", "Acquire::Check-Valid-Until=false", "-o", "Debug::NoLocking=1"]
FORMAT = 1  # bump when the layout of a built image changes
_NOT_IMAGE = re.compile(r"\.(build|old|bad)-")  # build_once's work, replaced and set-aside directories


@dataclass(frozen=True)
class Image:
    """A built image in the cache: read-only base disk, kernel, initramfs, manifest."""

    directory: Path

    @property
    def base(self) -> Path:
        return self.directory / "base.qcow2"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.gz"

    @property
    def modules(self) -> Path:
        return self.directory / "modules.dep"

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def manifest(self) -> dict[str, object]:
        return json.loads(self.manifest_path.read_text())  # type: ignore[no-any-return]

    def problem(self) -> str | None:
        """Why this cached image cannot be used, or None if it is whole (its files match the manifest's digests)."""
        try:
            manifest = self.manifest()
        except (OSError, ValueError) as exc:
            return f"manifest unreadable ({exc})"
        sizes = manifest.get("sizes", {})
        assert isinstance(sizes, dict)
        for name, size in sizes.items():
            path = self.directory / name
            if not path.exists():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
        try:
            proc.run(["qemu-img", "check", "-q", str(self.base)], ImageError)
        except ImageError as exc:
            return f"base.qcow2 fails qemu-img check: {exc}"
        return digest_problem(self.directory, manifest.get("digests"))


def host_mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line sources); FUSELAB_MIRROR wins."""
    if os.environ.get("FUSELAB_MIRROR"):
        return os.environ["FUSELAB_MIRROR"]
    texts = [p.read_text() for p in sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for text in texts:
        for uri in re.findall(r"^URIs:\s*(.+)$", text, re.M):
            for u in uri.split():
                if "/debian" in u and "security" not in u:
                    return str(u)
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.exists():
            for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", path.read_text(), re.M):
                if "/debian" in m.group(1) and "security" not in m.group(1):
                    return m.group(1)
    raise HostError("no Debian mirror found in /etc/apt/sources.list{,.d}: set FUSELAB_MIRROR to one")


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise HostError(f"{what} needs root (debootstrap and chroot): run it with sudo, "
                        "for example `sudo fuselab image build`")


def debootstrap(recipe: Recipe, root: Path, log: Path) -> None:
    mirror = host_mirror()
    proc.run(["debootstrap", f"--variant={recipe.variant}", "--components=main",
              "--include=" + ",".join(recipe.packages), recipe.suite, str(root), mirror], ImageError, log)


def chroot(root: Path, command: str, log: Path) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    return proc.run(["chroot", str(root), "/bin/sh", "-c", command], ImageError, log, env=env)


def install_kernel(recipe: Recipe, root: Path, log: Path) -> str:
    """Unpack the kernel binary and module packages (no maintainer scripts); return the version."""
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    opts = " ".join(APT_OPTS)
    chroot(root, f"apt-get {opts} -qq update", log)
    plan = chroot(root, f"apt-get {opts} -s install --no-install-recommends {recipe.kernel_package}", log)
    wanted = [m for m in re.findall(r"^Inst (\S+)", plan, re.M)
              if re.match(r"linux-(binary|modules|image)-\d", m)]
    if not wanted:
        raise ImageError(f"no kernel packages found for {recipe.kernel_package!r}; apt planned:\n{plan[-2000:]}")
    chroot(root, f"cd /var/cache/apt/archives && apt-get {opts} -qq download {' '.join(wanted)}", log)
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        proc.run(["dpkg-deb", "-x", str(deb), str(root)], ImageError, log)
        deb.unlink()
    (root / "etc/resolv.conf").unlink()
    versions = sorted(p.name for p in (root / "usr/lib/modules").iterdir() if (p / "modules.order").exists()
                      or any(p.glob("kernel")))
    if not versions:
        raise ImageError(f"the kernel packages {wanted} left no modules under /usr/lib/modules")
    return versions[-1]


def find_vmlinuz(root: Path, version: str) -> Path:
    for candidate in (root / "boot" / f"vmlinuz-{version}", root / "usr/lib/modules" / version / "vmlinuz"):
        if candidate.exists():
            return candidate
    raise ImageError(f"no vmlinuz for kernel {version} in the guest root")


def prune_modules(recipe: Recipe, root: Path, version: str, log: Path) -> None:
    moddir = root / "usr/lib/modules" / version
    for rel in recipe.prune_modules:
        shutil.rmtree(moddir / rel, ignore_errors=True)
    chroot(root, f"depmod {version}", log)


def customize(recipe: Recipe, root: Path, log: Path) -> None:
    """Install the recipe's files, users and units into the guest root."""
    for guest, host in recipe.file_sources().items():
        dest = root / guest.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(host, dest)
        dest.chmod(0o755 if host.suffix == ".py" or "/sbin/" in guest else 0o644)
    for user in recipe.users:
        groups = ",".join(str(g) for g in user.get("groups", []))  # type: ignore[attr-defined]
        chroot(root, f"useradd -m -s /bin/sh {'-G ' + groups if groups else ''} {user['name']}", log)
    systemd = root / "etc/systemd/system"
    (systemd / "default.target").unlink(missing_ok=True)
    (systemd / "default.target").symlink_to(f"/etc/systemd/system/{recipe.default_target}"
                                            if (systemd / recipe.default_target).exists()
                                            else f"/usr/lib/systemd/system/{recipe.default_target}")
    for unit in recipe.enable:
        chroot(root, f"systemctl enable {unit}", log)
    for path in recipe.setuid:
        target = root / path.lstrip("/")
        if not target.exists():
            raise ImageError(f"recipe {recipe.name}: setuid file {path} is not in the image")
        target.chmod(0o4755)
    chroot(root, "passwd -d root", log)
    (root / "etc/hostname").write_text("fuselab\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / junk).glob("*"):
            if p.is_file():
                p.unlink()


def package_versions(root: Path, log: Path) -> dict[str, str]:
    out = chroot(root, "dpkg-query -W -f '${Package} ${Version}\\n'", log)
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def make_disk(root: Path, out: Path, size_mb: int, log: Path) -> None:
    raw = out.with_suffix(".raw")
    proc.run(["mke2fs", "-q", "-t", "ext4", "-L", "fuselab-root", "-d", str(root), str(raw), f"{size_mb}M"],
             ImageError, log)
    proc.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out)], ImageError, log)
    raw.unlink()
    out.chmod(0o444)


def images_dir() -> Path:
    return cache_dir() / "images"


def recipe_key(recipe: Recipe) -> str:
    """What decides an image apart from the archive: the recipe and its files (the lab's /init
    travels in a layer of its own, see initramfs.lab_layer)."""
    data = f"{recipe.digest()}\n{FORMAT}".encode()
    return hashlib.sha256(data).hexdigest()


def image_key(recipe: Recipe, archive: dict[str, str]) -> str:
    """The recipe key plus the versions the archive offers for the recipe's packages."""
    data = recipe_key(recipe) + json.dumps(archive, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def image_for(recipe: Recipe, archive: dict[str, str] | None = None) -> Image:
    return Image(images_dir() / f"{recipe.name}-{image_key(recipe, archive or {})[:12]}")


def latest_built(recipe: Recipe) -> Image | None:
    """The newest usable image built from this very recipe, whatever the archive had then."""
    mine = [img for img in built_images() if img.problem() is None
            and img.manifest().get("recipe_key") == recipe_key(recipe)]
    return max(mine, key=lambda img: img.manifest_path.stat().st_mtime, default=None)


def build(recipe: Recipe, target: Image, progress: Progress, archive: dict[str, str] | None = None,
          layer: Layer | None = None, rebuild: bool = False) -> Image:
    """Build `recipe` into `target.directory` once, under a lock (built aside, renamed into place when whole)."""
    def fill(work: Path) -> None:
        require_root("building a guest image")
        require_space(images_dir(), 3 << 30, f"building image {target.directory.name}")
        try:
            _build(recipe, work, progress, archive, layer)
        finally:
            unmount_below(work)  # an interrupted debootstrap leaves /proc mounted in the chroot
        progress(f"image {target.directory.name} built")

    build_once(target.directory, fill, problem=lambda path: Image(path).problem(), what=f"image {target.directory.name}",
               lock=target.directory.with_suffix(".lock"), progress=progress, rebuild=rebuild, remove=remove_tree)
    return target


def _build(recipe: Recipe, work: Path, progress: Progress, archive: dict[str, str] | None,
           layer: Layer | None) -> None:
    root = work / "root"
    log = work / "build.log"
    start = time.monotonic()
    step = _stepper(progress, start)
    step(f"debootstrap {recipe.suite} ({len(recipe.packages)} packages) into {root}; log: {log}")
    debootstrap(recipe, root, log)
    step(f"kernel from Debian's {recipe.kernel_package}")
    version = install_kernel(recipe, root, log)
    prune_modules(recipe, root, version, log)
    step(f"guest files, users and units; kernel {version}")
    customize(recipe, root, log)
    if layer is not None:
        step(f"stack layer {layer.directory.name}")
        layer.install(root, log)
    versions = package_versions(root, log)
    shutil.copyfile(find_vmlinuz(root, version), work / "vmlinuz")
    moddir = root / "usr/lib/modules" / version
    shutil.copyfile(moddir / "modules.dep", work / "modules.dep")
    step(f"initramfs with {', '.join(recipe.initramfs_modules)}")
    initramfs.build(moddir, recipe.initramfs_modules, work / "initrd.gz", work)
    step(f"root disk with mke2fs -d ({recipe.size_mb} MiB)")
    make_disk(root, work / "base.qcow2", recipe.size_mb, log)
    shutil.rmtree(root)
    files = ("base.qcow2", "vmlinuz", "initrd.gz", "modules.dep")
    manifest = {"format": FORMAT, "recipe": recipe.name, "recipe_key": recipe_key(recipe),
                "archive_versions": archive or {},
                "kernel_version": version, "packages": versions, "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "stack": layer.manifest() if layer else None,
                "build_seconds": round(time.monotonic() - start, 1),
                "sizes": {f: (work / f).stat().st_size for f in files},
                "digests": {f: digest_of(work / f) for f in files}}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _stepper(progress: Progress, start: float) -> Progress:
    return lambda msg: progress(f"[{time.monotonic() - start:5.0f}s] {msg}")


def ensure(recipe: Recipe, progress: Progress, rebuild: bool = False, refresh: bool = False,
           layer: Layer | None = None) -> Image:
    """Return the cached image for `recipe` and the archive's current package versions,
    building it once (under a lock) if needed.  Offline, the newest build of the recipe serves."""
    archive = versions.archive_versions(host_mirror(), recipe.suite, [*recipe.packages, recipe.kernel_package],
                                        progress, refresh)
    target = image_for(recipe, archive)
    if not rebuild and target.problem() is None:
        return target
    previous = latest_built(recipe)
    if not archive and previous is not None and not rebuild:
        return previous
    if previous is not None and previous != target and not target.directory.exists():
        changes = versions.describe_changes(versions.kept_for(previous.manifest_path), archive)
        progress(f"the archive moved on since {previous.directory.name} ({changes}): building a new image")
    return build(recipe, target, progress, archive, layer, rebuild)


def built_images() -> list[Image]:
    if not images_dir().exists():
        return []
    return [Image(p) for p in sorted(images_dir().iterdir()) if p.is_dir() and not _NOT_IMAGE.search(p.name)]


def unmount_below(path: Path) -> None:
    """Undo what a chroot step left mounted under `path` (deepest first, lazily)."""
    prefix = str(path.resolve()) + "/"
    targets = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for target in sorted((t for t in targets if t.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def remove_tree(path: Path) -> None:
    """rmtree that never walks into a mounted /proc or /sys left in a build root."""
    if path.exists():
        unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)


def clean(everything: bool = False, keep: set[Path] | None = None) -> list[Path]:
    """Remove built images but those in `keep` (all of them with `everything`), stale build
    directories, and snapshots whose image is gone."""
    removed: list[Path] = []
    keep = set() if everything else (keep or set())
    for p in sorted(images_dir().iterdir()) if images_dir().exists() else []:
        if p.is_dir() and p not in keep:
            building = ".build-" in p.name and Path(f"/proc/{p.name.rsplit('-', 1)[-1]}").exists()
            if not building:
                remove_tree(p)
                removed.append(p)
    snapshots = cache_dir() / "snapshots"
    for p in sorted(snapshots.iterdir()) if snapshots.exists() else []:
        backing = p / "root.qcow2"
        if p.is_dir() and (everything or not _backing_exists(backing)):
            shutil.rmtree(p)
            removed.append(p)
    return removed


def _backing_exists(overlay: Path) -> bool:
    try:
        info = json.loads(proc.run(["qemu-img", "info", "--output=json", str(overlay)], ImageError))
    except (ImageError, ValueError):
        return False
    backing = info.get("backing-filename")
    return bool(backing) and Path(backing).exists()
