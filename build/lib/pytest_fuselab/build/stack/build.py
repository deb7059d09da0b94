"""The chroot build of a stack (libfuse with meson, then e2fsprogs with autotools against it) into
a cached Layer that image.py lays over a guest root; builds are cached by content (keys.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pytest_fuselab import proc
from pytest_fuselab.build.recipe import Recipe
from pytest_fuselab.build.stack import buildroot
from pytest_fuselab.build.stack import patchseries
from pytest_fuselab.build.stack.keys import FORMAT, source_key, tree_files
from pytest_fuselab.build.stack.spec import Source, StackSpec
from pytest_fuselab.cache import build_once, cache_dir
from pytest_fuselab.errors import ImageError
from pytest_fuselab.text import name_problem

Progress = Callable[[str], None]
LIBDIR = "lib/x86_64-linux-gnu"
SETUID = ("fusermount3", "fuservicemount3")
DROPPED = ("dev", "usr/share/man", "usr/share/info", "usr/share/doc", "usr/share/locale")


@dataclass(frozen=True)
class Layer:
    """A built stack: a directory tree to lay over the guest's root, and what it was made from."""

    directory: Path
    name: str
    key: str

    @property
    def tree(self) -> Path:
        return self.directory / "layer"

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def manifest(self) -> dict[str, object]:
        return json.loads(self.manifest_path.read_text())  # type: ignore[no-any-return]

    def install(self, root: Path, log: Path) -> None:
        """Install into a guest root: files, setuid helpers, ldconfig, shipped units enabled."""
        install_tree(self.tree, root)
        for name in SETUID:
            for path in root.glob(f"usr/*bin/{name}"):
                os.chown(path, 0, 0)
                path.chmod(0o4755)
        proc.run(["chroot", str(root), "ldconfig"], ImageError, log)
        for unit in units_to_enable(self.tree):
            proc.run(["chroot", str(root), "systemctl", "enable", unit], ImageError, log)


def export(source: Source, root: buildroot.BuildRoot, workdir: str, log: Path) -> Path:
    """Put the component's source tree at <workdir>/src in the build root; return its host path."""
    work = root.host_path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / "src"
    package = source.debian_package
    if package:
        with buildroot.resolv_conf(root.root):
            root.run(["apt-get", "source", "-q", "--only-source", package], log, cwd=workdir)
        unpacked = [p for p in work.iterdir() if p.is_dir()]
        if len(unpacked) != 1:
            raise ImageError(f"apt-get source {package} left {[p.name for p in unpacked]} in {work}")
        unpacked[0].rename(src)
    elif source.ref:
        archive = work / "src.tar"
        with open(archive, "wb") as out:
            done = subprocess.run(["git", "-C", source.origin, "archive", "--format=tar", source.ref], stdout=out,
                                  stderr=subprocess.PIPE, check=False)
        if done.returncode != 0:
            raise ImageError(f"git archive {source.ref} in {source.origin} failed: "
                             f"{done.stderr.decode(errors='replace')[-1000:]}")
        with tarfile.open(archive) as tar:
            tar.extractall(src, filter="tar")
        archive.unlink()
    else:
        tree = Path(source.origin)
        for name in tree_files(tree):
            dest = src / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tree / name, dest, follow_symlinks=False)
    patchseries.apply([Path(p) for p in source.patches], src, log)
    return src


def meson_args(src: Path, options: tuple[str, ...] = ()) -> list[str]:
    """Debian-like install paths; only the options this tree knows (read from its options file)."""
    known = ""
    for name in ("meson_options.txt", "meson.options"):
        if (src / name).exists():
            known += (src / name).read_text()
    wanted = {"examples": "false", "tests": "false", "initscriptdir": "", "udevrulesdir": "/usr/lib/udev/rules.d",
              "useroot": "true"}
    return ["--prefix=/usr", f"--libdir={LIBDIR}", "--sysconfdir=/etc", "--buildtype=debugoptimized",
            *[f"-D{k}={v}" for k, v in wanted.items() if f"option('{k}'" in known
              and not any(o.startswith(f"-D{k}=") for o in options)], *options]


def configure_args(src: Path) -> list[str]:
    text = (src / "configure").read_text(errors="replace")
    args = ["--prefix=/usr", f"--libdir=/usr/{LIBDIR}", "--with-root-prefix=/usr", "--sysconfdir=/etc",
            "--disable-libblkid", "--disable-libuuid", "--disable-uuidd", "--disable-fsck", "--disable-nls",
            "--with-systemd-unit-dir=/usr/lib/systemd/system", "--with-udev-rules-dir=/usr/lib/udev/rules.d"]
    args += [flag for flag in ("--enable-fuse2fs", "--enable-fuse4fs") if f"enable_{flag[9:]}" in text]
    return args


def build_libfuse(root: buildroot.BuildRoot, source: Source, log: Path, progress: Progress) -> Path:
    src = root.host_path("/build/libfuse/src")
    progress(f"libfuse: meson setup and ninja ({source.describe()})")
    root.run(["meson", "setup", "/build/libfuse/build", "/build/libfuse/src", *meson_args(src, source.options)],
             log)
    root.run(["ninja", "-C", "/build/libfuse/build", f"-j{os.cpu_count() or 2}"], log)
    root.run(["meson", "install", "-C", "/build/libfuse/build", "--destdir", "/build/libfuse/dest"], log)
    dest = root.host_path("/build/libfuse/dest")
    if "-Dexamples=true" in source.options:
        examples = install_service_examples(root.host_path("/build/libfuse/build/example"), src / "example", dest)
        progress(f"libfuse: service examples installed: {', '.join(examples) or 'none found'}")
    return dest


def install_service_examples(built: Path, src: Path, dest: Path) -> list[str]:
    """libfuse's socket-activated examples (meson does not install examples): the program under
    /usr/libexec/libfuse-examples, its configured socket unit, and its service unit with the
    `ExecStart=/path/to/NAME` placeholder pointing at the installed program (the only change)."""
    units = dest / "usr/lib/systemd/system"
    names = []
    for socket in sorted(built.glob("*.socket")):
        name = socket.stem
        program, service = built / name, src / f"{name}@.service"
        if not (program.is_file() and service.is_file()):
            continue
        target = dest / "usr/libexec/libfuse-examples" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        units.mkdir(parents=True, exist_ok=True)
        shutil.copy2(program, target)
        shutil.copy2(socket, units / socket.name)
        text = re.sub(r"^ExecStart=/path/to/\S+", f"ExecStart=/usr/libexec/libfuse-examples/{name}",
                      service.read_text(), flags=re.M)
        (units / service.name).write_text(text)
        names.append(name)
    return names


def private_pkgconfig(root: buildroot.BuildRoot, dest: str) -> str:
    """A copy of the fresh fuse3.pc whose paths point into `dest`, for e2fsprogs to build against."""
    found = list(root.host_path(dest).glob("usr/lib/*/pkgconfig/fuse3.pc")) + list(
        root.host_path(dest).glob("usr/lib/pkgconfig/fuse3.pc"))
    if not found:
        raise ImageError(f"libfuse installed no fuse3.pc under {dest}")
    lines = []
    for line in found[0].read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("prefix", "exec_prefix", "libdir", "includedir") and value.startswith("/"):
            line = f"{key}={dest}{value}"
        lines.append(line)
    pcdir = root.host_path("/build/pkgconfig")
    shutil.rmtree(pcdir, ignore_errors=True)
    pcdir.mkdir(parents=True)
    (pcdir / "fuse3.pc").write_text("\n".join(lines) + "\n")
    return "/build/pkgconfig"


def build_e2fsprogs(root: buildroot.BuildRoot, source: Source, log: Path, progress: Progress) -> Path:
    src = root.host_path("/build/e2fsprogs/src")
    pcdir = private_pkgconfig(root, "/build/libfuse/dest")
    env = {"PKG_CONFIG_PATH": pcdir, "LD_LIBRARY_PATH": f"/build/libfuse/dest/usr/{LIBDIR}"}
    progress(f"e2fsprogs: configure against the fresh fuse3.pc, make ({source.describe()})")
    root.host_path("/build/e2fsprogs/build").mkdir()
    root.run(["../src/configure", *configure_args(src), *source.options], log, cwd="/build/e2fsprogs/build",
             env=env)
    root.run(["make", f"-j{os.cpu_count() or 2}"], log, cwd="/build/e2fsprogs/build", env=env)
    root.run(["make", "install", "DESTDIR=/build/e2fsprogs/dest"], log, cwd="/build/e2fsprogs/build", env=env)
    return root.host_path("/build/e2fsprogs/dest")


def merge(dests: list[Path], layer: Path) -> None:
    """The components' install trees into one layer, without what a guest does not need."""
    shutil.rmtree(layer, ignore_errors=True)
    layer.mkdir(parents=True)
    for dest in dests:
        def ignore(directory: str, names: list[str], top: Path = dest) -> list[str]:
            rel = Path(directory).relative_to(top)
            return [n for n in names if str(rel / n) in DROPPED]  # /dev/fuse made by libfuse's installer

        shutil.copytree(dest, layer, symlinks=True, dirs_exist_ok=True, ignore=ignore)
    for rel in DROPPED:
        shutil.rmtree(layer / rel, ignore_errors=True)
    for archive in layer.rglob("*.a"):
        archive.unlink()


def _inside(root: Path, rel: Path) -> Path:
    """`rel` under `root`, following symlinked directories the way the guest will (merged /usr)."""
    current = root
    for part in rel.parts:
        current = current / part
        while current.is_symlink() and current.is_dir():
            target = Path(os.readlink(current))
            current = (root / target.relative_to("/")) if target.is_absolute() else current.parent / target
    return current


def install_tree(layer: Path, root: Path) -> None:
    """Copy the layer over the guest root: modes kept, files and symlinks replaced."""
    for path in sorted(layer.rglob("*")):
        dest = _inside(root, path.parent.relative_to(layer)) / path.name
        if path.is_dir() and not path.is_symlink():
            if not dest.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            continue
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            dest.symlink_to(os.readlink(path))
        else:
            shutil.copy2(path, dest)


def units_to_enable(layer: Path) -> list[str]:
    """Units the stack ships with an [Install] section (templates are enabled through their users)."""
    units = []
    for unit in sorted(layer.glob("usr/lib/systemd/system/*")):
        if "@." not in unit.name and unit.is_file() and re.search(r"^\[Install\]", unit.read_text(), re.M):
            units.append(unit.name)
    return units


def stacks_dir() -> Path:
    return cache_dir() / "stacks"


def ensure(spec: StackSpec, progress: Progress, rebuild: bool = False) -> Layer:
    """The layer for `spec`, built once (under a lock) per content key."""
    problem = name_problem(spec.name)
    if problem:  # parse() checks names it reads; a spec made in code is checked here
        raise ImageError(f"stack name {problem} (it names the stack's cache directory)")
    root = buildroot.ensure(progress)
    stacks_dir().mkdir(parents=True, exist_ok=True)
    keylog = stacks_dir() / "keys.log"
    needs_apt = any(s.debian_package for s in spec.sources)
    if needs_apt:
        root.refresh(keylog, progress)
    keys = [source_key(s, root, keylog) for s in spec.sources]
    key = hashlib.sha256(json.dumps([FORMAT, root.directory.name, *keys]).encode()).hexdigest()
    layer = Layer(stacks_dir() / f"{spec.name}-{key[:12]}", spec.name, key)
    # One lock for every stack: they all build in the one build root.
    build_once(layer.directory, lambda work: _build(spec, root, layer, work, progress), problem=_unfinished,
               lock=stacks_dir() / "build.lock", what=f"stack {spec.name} (stacks share one build root)",
               progress=progress, rebuild=rebuild)
    return layer


def _unfinished(directory: Path) -> str | None:
    """Why a layer directory is not a finished build (None: it is)."""
    return None if (directory / "manifest.json").is_file() else "it has no manifest.json"


def _build(spec: StackSpec, root: buildroot.BuildRoot, layer: Layer, work: Path, progress: Progress) -> None:
    """Build `spec` into `work` (its layer tree, manifest and build.log); a failed build's log stays there."""
    log = work / "build.log"
    start = time.monotonic()
    progress(f"building stack {spec.name} in {root.directory}; log: {log}")
    shutil.rmtree(root.host_path("/build"), ignore_errors=True)
    for source in spec.sources:  # both trees and their series first: a patch that does not apply fails fast
        progress(f"{source.component}: source from {source.describe()}")
        export(source, root, f"/build/{source.component}", log)
    fuse_dest = build_libfuse(root, spec.libfuse, log, progress)
    e2fs_dest = build_e2fsprogs(root, spec.e2fsprogs, log, progress)
    merge([fuse_dest, e2fs_dest], work / "layer")
    versions = {"libfuse": _meson_version(root.host_path("/build/libfuse/src")),
                "e2fsprogs": _e2fsprogs_version(root.host_path("/build/e2fsprogs/src"))}
    manifest = {"format": FORMAT, "name": spec.name, "key": layer.key, "versions": versions,
                "sources": {s.component: s.describe() for s in spec.sources},
                "units": units_to_enable(work / "layer"), "build_seconds": round(time.monotonic() - start, 1),
                "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    shutil.rmtree(root.host_path("/build"), ignore_errors=True)
    progress(f"stack {spec.name} built in {manifest['build_seconds']} s: libfuse {versions['libfuse']}, "
             f"e2fsprogs {versions['e2fsprogs']}")


def _meson_version(src: Path) -> str:
    match = re.search(r"version\s*:\s*'([^']+)'", (src / "meson.build").read_text())
    return match.group(1) if match else "unknown"


def _e2fsprogs_version(src: Path) -> str:
    match = re.search(r'E2FSPROGS_VERSION\s+"([^"]+)"', (src / "version.h").read_text(errors="replace"))
    return match.group(1) if match else "unknown"


def layered_recipe(recipe: Recipe, layer: Layer) -> Recipe:
    """The recipe of the image with this layer: its own name, and the layer's manifest among its
    files, so the image's key includes the layer's key."""
    files = dict(recipe.files, **{"/usr/local/lib/fuselab/stack.json": str(layer.manifest_path)})
    return replace(recipe, name=f"{recipe.name}+{layer.name}", files=files)




def image_inputs(recipe: Recipe, spec: StackSpec | None, progress: Progress) -> tuple[Recipe, Layer | None]:
    """The recipe and layer an image with stack `spec` is built from (the layer built first if needed)."""
    if spec is None:
        return recipe, None
    layer = ensure(spec, progress)
    return layered_recipe(recipe, layer), layer
