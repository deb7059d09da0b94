"""Kernels from anywhere: a bzImage file or a kernel build tree, with its modules on a small
read-only disk that the lab's /init mounts on /lib/modules/<release> (the root image stays as built)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_fuselab.build import initramfs
from pytest_fuselab.build.kernel import config as kconfig
from pytest_fuselab import proc
from pytest_fuselab.cache import cache_dir, file_lock
from pytest_fuselab.errors import HostError, SettingError

Progress = Callable[[str], None]
TREE_IMAGE = Path("arch/x86/boot/bzImage")
MODULES_SERIAL = "fuselab-modules"  # the modules disk's virtio serial; /init looks for it


@dataclass(frozen=True)
class Kernel:
    """A kernel that is not the image's own, with what the lab found out about it."""

    bzimage: Path
    release: str
    modules: Path | None  # the directory named after the release, with modules.dep
    config: kconfig.Config | None
    config_source: str
    tree: Path | None = None

    @property
    def disk(self) -> Path | None:
        """The modules as an ext4 image (built once, cached by content)."""
        return modules_disk(self.modules) if self.modules else None

    def describe(self) -> str:
        where = f"tree {self.tree}" if self.tree else str(self.bzimage)
        mods = f"modules {self.modules}" if self.modules else "no modules"
        return f"kernel {self.release} from {where}, {mods}, config {self.config_source}"


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def is_tree(path: Path) -> bool:
    return path.is_dir() and (path / "Makefile").is_file()


def tree_bzimage(tree: Path) -> Path:
    image = tree / TREE_IMAGE
    if not image.is_file():
        raise SettingError(f"the kernel tree {tree} has no {TREE_IMAGE}: build it first "
                           f"(`fuselab kernel build {tree}`, or make bzImage modules)")
    return image


def locate(kernel: Path | None, modules: Path | None, progress: Progress) -> Kernel | None:
    """The kernel the settings name (None: the image's own), its modules and its config, checked.
    Raises SettingError naming each missing config option before anything boots."""
    if kernel is None:
        if modules is not None:
            raise SettingError(f"modules {modules} given without a kernel: set --fuselab-kernel too")
        return None
    tree = kernel if kernel.is_dir() else None
    bzimage = tree_bzimage(tree) if tree else kernel
    try:
        release = kconfig.release(bzimage)
    except ValueError as exc:
        raise SettingError(str(exc)) from None
    moddir = version_dir(modules, release) if modules else None
    if moddir is None and tree is not None:
        moddir = install_tree_modules(tree, bzimage, release, progress)
    found = kconfig.find(bzimage, tree, moddir)
    result = Kernel(bzimage, release, moddir, found[0] if found else None,
                    found[1] if found else "unknown", tree)
    if result.config is None:
        progress(f"{result.describe()}: no config found (no .config, IKCONFIG or config-{release}), "
                 "so it is not checked before booting")
    else:
        checked = kconfig.require(result.config, moddir is not None, result.config_source)
        if checked.scenario:
            progress(f"kernel {release} lacks what some scenarios need (they will skip or fail): "
                     + "; ".join(checked.scenario))
    if moddir is None and result.config is not None and kconfig.value(result.config, "MODULES") == "y":
        progress(f"kernel {release} is modular but comes without modules: only built-in drivers work")
    return result


def version_dir(path: Path, release: str) -> Path:
    """The modules of `release` under `path`: path/lib/modules/R, path/usr/lib/modules/R, path/R
    or path itself; with modules.dep made by depmod if it has none."""
    path = path.expanduser().resolve()
    for candidate in (path / "lib/modules" / release, path / "usr/lib/modules" / release, path / release, path):
        if candidate.is_dir() and candidate.name == release:
            return with_depmod(candidate, release)
    found = sorted(p.name for p in (path / "lib/modules", path / "usr/lib/modules", path)
                   for p in (p.iterdir() if p.is_dir() else []) if (p / "modules.order").exists()
                   or (p / "kernel").is_dir())
    raise SettingError(f"no modules for kernel {release} in {path}" + (f" (found modules for: {', '.join(found)})"
                       if found else "") + "; give the directory that `make modules_install "
                       "INSTALL_MOD_PATH=DIR` filled, or DIR/lib/modules/<release> itself")


def with_depmod(moddir: Path, release: str) -> Path:
    """`moddir`, or a depmod'ed copy of it (hard links, cached) when it has no modules.dep."""
    if (moddir / "modules.dep").is_file():
        return moddir
    key = hashlib.sha256(f"{moddir}\n{listing_key(moddir)}".encode()).hexdigest()[:16]
    base = kernels_dir() / f"depmod-{key}"
    target = base / "lib/modules" / release
    with file_lock(base.with_suffix(".lock"), f"modules.dep for {moddir}"):
        if not (target / "modules.dep").is_file():
            shutil.rmtree(base, ignore_errors=True)
            target.parent.mkdir(parents=True)
            copy_tree(moddir, target)
            proc.run([depmod(), "-b", str(base), release], HostError)
    return target


def depmod() -> str:
    for candidate in ("depmod", "/usr/sbin/depmod", "/sbin/depmod"):
        if shutil.which(candidate):
            return candidate
    raise HostError("depmod not found: install kmod (`fuselab setup`)")


def copy_tree(source: Path, target: Path) -> None:
    """Hard-link copy where the filesystem allows it, a real copy elsewhere."""
    if subprocess.run(["cp", "-al", str(source), str(target)], capture_output=True).returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        proc.run(["cp", "-a", str(source), str(target)], HostError)


def install_tree_modules(tree: Path, bzimage: Path, release: str, progress: Progress) -> Path | None:
    """`make modules_install INSTALL_MOD_PATH=` into a place the lab owns (one per tree, redone
    when the tree's kernel changed); None when the tree built no modules."""
    if not (tree / "modules.order").is_file():
        return None
    base = kernels_dir() / f"tree-{hashlib.sha256(str(tree).encode()).hexdigest()[:12]}"
    stamp = base / "stamp"
    want = f"{release}\n{stat_key(bzimage)}\n{stat_key(tree / 'modules.order')}\n"
    with file_lock(base.with_suffix(".lock"), f"the modules of {tree}", progress):
        if not (stamp.is_file() and stamp.read_text() == want):
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            progress(f"make modules_install INSTALL_MOD_PATH={base} (tree {tree})")
            proc.run(["make", "-C", str(tree), "-s", f"-j{os.cpu_count() or 1}", "modules_install",
                      f"INSTALL_MOD_PATH={base}"], SettingError, base / "modules_install.log")
            stamp.write_text(want)
    return version_dir(base, release)


def stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def listing_key(directory: Path) -> str:
    """A key for a tree's content: every file's path, size and mtime (cheap, no reading)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            h.update(f"{path.relative_to(directory)}\0{stat_key(path)}\n".encode())
    return h.hexdigest()


def modules_disk(moddir: Path) -> Path:
    """An ext4 image of `moddir` made with `mke2fs -d` (no mount), cached by content."""
    key = hashlib.sha256(f"{moddir.name}\n{listing_key(moddir)}".encode()).hexdigest()[:16]
    out = kernels_dir() / f"modules-{moddir.name}-{key}.ext4"
    if out.is_file():
        return out
    with file_lock(out.with_suffix(".lock"), f"the modules disk of {moddir}"):
        if out.is_file():
            return out
        size = sum(p.stat().st_size for p in moddir.rglob("*") if p.is_file() and not p.is_symlink())
        mib = size * 13 // 10 // 2**20 + 16
        partial = out.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        proc.run(["mke2fs", "-q", "-t", "ext4", "-O", "^has_journal", "-L", "fuselab-mods", "-d", str(moddir),
                  str(partial), f"{mib}M"], HostError)
        partial.chmod(0o444)
        partial.rename(out)
    return out


def base_initrd(kernel: Kernel, names: list[str]) -> Path:
    """An initramfs (busybox, the boot modules of this kernel) for `kernel`; the lab's layer goes on top.
    Modules built into the kernel are skipped (modules.builtin), so it adapts to the config."""
    mods = kernel.modules
    wanted = ["virtio_pci", *names] if mods else []
    source = f"{mods}\n{listing_key(mods)}" if mods else "none"
    key = hashlib.sha256(f"{kernel.release}\n{source}\n{wanted}".encode()).hexdigest()[:16]
    out = kernels_dir() / f"initrd-{kernel.release}-{key}.gz"
    if out.is_file():
        return out
    with file_lock(out.with_suffix(".lock"), f"the initramfs of kernel {kernel.release}"):
        if not out.is_file():
            work = kernels_dir() / f"work-{key}-{os.getpid()}"
            work.mkdir(parents=True, exist_ok=True)
            try:
                initramfs.build(mods or work, wanted, work / "initrd.gz", work)
                (work / "initrd.gz").rename(out)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return out
