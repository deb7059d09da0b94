"""FUSE stacks built from source: libfuse (meson) then e2fsprogs (autotools), installed into a
guest image as a layer.

A stack is named by `--fuselab-stack`: `debian` (the released packages, no layer), `debian-source`
(`apt-get source fuse3` and `e2fsprogs`), a TOML file, or inline `libfuse=SRC[@REF],e2fsprogs=SRC[@REF],
libfuse-patches=P,e2fsprogs-patches=P`.  SRC is a directory, a git repository (with @REF: that commit;
without: the work tree as it is) or `debian:PACKAGE`.  Builds are cached by content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

from pytest_fuselab.build.stack import buildroot
from pytest_fuselab.build.stack import patchseries
from pytest_fuselab import proc
from pytest_fuselab.cache import cache_dir, file_lock
from pytest_fuselab.errors import ImageError
from pytest_fuselab.build.recipe import Recipe

Progress = Callable[[str], None]
FORMAT = 1
COMPONENTS = {"libfuse": "fuse3", "e2fsprogs": "e2fsprogs"}  # component -> Debian source package
LIBDIR = "lib/x86_64-linux-gnu"
SETUID = ("fusermount3", "fuservicemount3")
DROPPED = ("dev", "usr/share/man", "usr/share/info", "usr/share/doc", "usr/share/locale")


@dataclass(frozen=True)
class Source:
    """One component's input and how to build it."""

    component: str
    origin: str  # a directory, a git repository, or debian:PACKAGE
    ref: str = ""
    patches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def debian_package(self) -> str | None:
        return self.origin.split(":", 1)[1] if self.origin.startswith("debian:") else None

    def describe(self) -> str:
        text = self.origin + (f"@{self.ref}" if self.ref else "")
        return text + "".join(f" + {Path(p).name}" for p in self.patches)


@dataclass(frozen=True)
class StackSpec:
    name: str
    libfuse: Source
    e2fsprogs: Source

    @property
    def sources(self) -> tuple[Source, Source]:
        return (self.libfuse, self.e2fsprogs)


def _source(component: str, value: str | None, patches: list[str] | str | None = None,
            options: list[str] | None = None) -> Source:
    value = value or f"debian:{COMPONENTS[component]}"
    origin, ref = (value, "")
    if not value.startswith("debian:") and "@" in value:
        origin, ref = value.rsplit("@", 1)
    if not origin.startswith("debian:"):
        path = Path(origin).expanduser()
        if not path.is_dir():
            raise ValueError(f"{component} source {origin} is not a directory (give a source tree, "
                             "a git repository, or debian:PACKAGE)")
        origin = str(path.resolve())
    plist = [patches] if isinstance(patches, str) else list(patches or [])
    for p in plist:
        if not Path(p).expanduser().exists():
            raise ValueError(f"{component} patch series {p} does not exist")
    return Source(component, origin, ref, tuple(str(Path(p).expanduser().resolve()) for p in plist),
                  tuple(options or []))


def parse(value: str) -> StackSpec | None:
    """The stack named by a setting value; None for the released Debian packages."""
    value = value.strip()
    if value in ("", "debian"):
        return None
    if value == "debian-source":
        return StackSpec("debian-source", _source("libfuse", None), _source("e2fsprogs", None))
    if value.endswith(".toml"):
        return _from_toml(Path(value).expanduser())
    fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    unknown = set(fields) - {"name", "libfuse", "e2fsprogs", "libfuse-patches", "e2fsprogs-patches"}
    if unknown or not fields:
        raise ValueError("a stack is debian, debian-source, a .toml file, or "
                         "libfuse=SRC[@REF],e2fsprogs=SRC[@REF],libfuse-patches=P,e2fsprogs-patches=P"
                         + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
    spec = StackSpec(fields.get("name", "custom"),
                     _source("libfuse", fields.get("libfuse"), fields.get("libfuse-patches", [])),
                     _source("e2fsprogs", fields.get("e2fsprogs"), fields.get("e2fsprogs-patches", [])))
    return spec


def _from_toml(path: Path) -> StackSpec:
    if not path.is_file():
        raise ValueError(f"stack file {path} does not exist")
    data = tomllib.loads(path.read_text())
    parts = {}
    for component in COMPONENTS:
        section = data.get(component, {})
        base = path.parent
        src = section.get("source")
        if src and not src.startswith("debian:"):
            src = str((base / src.split("@")[0]).resolve()) + (f"@{src.split('@', 1)[1]}" if "@" in src else "")
        if section.get("ref"):
            src = f"{src}@{section['ref']}"
        patches = section.get("patches", [])
        patches = [str(base / p) for p in ([patches] if isinstance(patches, str) else patches)]
        parts[component] = _source(component, src, patches, section.get("options", []))
    return StackSpec(data.get("name", path.stem), parts["libfuse"], parts["e2fsprogs"])


# -- content keys -------------------------------------------------------------------------

def _git(tree: Path, *args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        raise ImageError(f"git {' '.join(args)} in {tree} failed: {exc.stderr.decode(errors='replace')[-500:]}"
                         ) from exc


def is_git(tree: Path) -> bool:
    return (tree / ".git").exists() or (tree / "HEAD").is_file() and (tree / "objects").is_dir()


def tree_files(tree: Path) -> list[str]:
    """Files of a work tree as a build sees them: tracked and untracked-not-ignored for git."""
    if is_git(tree):
        return sorted(n for n in _git(tree, "ls-files", "-z", "-co", "--exclude-standard").decode().split("\0")
                      if n and (tree / n).exists())
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if not p.is_dir() and ".git" not in p.parts)


def _tree_digest(tree: Path) -> str:
    h = hashlib.sha256()
    if is_git(tree):
        h.update(_git(tree, "rev-parse", "HEAD") + _git(tree, "diff", "HEAD", "--binary"))
        untracked = _git(tree, "ls-files", "-z", "-o", "--exclude-standard").decode().split("\0")
        names = [n for n in untracked if n]
    else:
        names = tree_files(tree)
    for name in sorted(names):
        p = tree / name
        h.update(name.encode() + b"\0" + (os.readlink(p).encode() if p.is_symlink() else p.read_bytes()))
    return h.hexdigest()


def source_key(source: Source, root: buildroot.BuildRoot | None, log: Path) -> str:
    """What decides a component's build: its input's content, patches and options."""
    package = source.debian_package
    if package:
        assert root is not None
        content = f"dsc:{dsc_identity(root, package, log)}"
    elif source.ref:
        content = "git:" + _git(Path(source.origin), "rev-parse", "--verify", f"{source.ref}^{{commit}}").decode().strip()
    else:
        content = "tree:" + _tree_digest(Path(source.origin))
    patches = patchseries.digest([Path(p) for p in source.patches]) if source.patches else ""
    data = json.dumps([FORMAT, source.component, content, patches, list(source.options)])
    return hashlib.sha256(data.encode()).hexdigest()


def dsc_identity(root: buildroot.BuildRoot, package: str, log: Path) -> str:
    """The .dsc's name and checksum as the archive lists them (apt-get source --print-uris)."""
    out = root.apt(["source", "--print-uris", package], log)
    match = re.search(r"^'[^']+' (\S+\.dsc) \d+ (\S+)$", out, re.M)
    if not match:
        raise ImageError(f"apt-get source --print-uris {package} listed no .dsc (is deb-src for the build root's "
                         f"suite on the host's mirror?); it said:\n{out[-1000:]}")
    return f"{match.group(1)} {match.group(2)}"


# -- building -----------------------------------------------------------------------------

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
    root = buildroot.ensure(progress)
    stacks_dir().mkdir(parents=True, exist_ok=True)
    keylog = stacks_dir() / "keys.log"
    needs_apt = any(s.debian_package for s in spec.sources)
    if needs_apt:
        root.refresh(keylog, progress)
    keys = [source_key(s, root, keylog) for s in spec.sources]
    key = hashlib.sha256(json.dumps([FORMAT, root.directory.name, *keys]).encode()).hexdigest()
    layer = Layer(stacks_dir() / f"{spec.name}-{key[:12]}", spec.name, key)
    if layer.manifest_path.exists() and not rebuild:
        return layer
    lock = file_lock(stacks_dir() / "build.lock", "a stack (the build root is shared)", progress)
    with lock:
        if layer.manifest_path.exists() and not rebuild:
            return layer
        return _build(spec, root, layer, progress)


def _build(spec: StackSpec, root: buildroot.BuildRoot, layer: Layer, progress: Progress) -> Layer:
    for stale in stacks_dir().glob("*.build-*"):  # failed builds keep their log until the next build
        if not Path(f"/proc/{stale.name.rsplit('-', 1)[-1]}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    work = layer.directory.with_name(layer.directory.name + f".build-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
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
    shutil.rmtree(layer.directory, ignore_errors=True)
    work.rename(layer.directory)
    progress(f"stack {spec.name} built in {manifest['build_seconds']} s: libfuse {versions['libfuse']}, "
             f"e2fsprogs {versions['e2fsprogs']}")
    return layer


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


# -- per-run settings in a guest ----------------------------------------------------------

def fuse_conf_text(options: str) -> str:
    """/etc/fuse.conf from `user_allow_other,mount_max=3`."""
    lines = ["# written by pytest-fuselab (--fuselab-fuse-conf)"]
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, _, value = item.partition("=")
        lines.append(f"{key.strip()} = {value.strip()}" if value else key.strip())
    return "\n".join(lines) + "\n"


def socket_dropin(mode: str) -> str:
    return f"# written by pytest-fuselab (--fuselab-socket-mode)\n[Socket]\nSocketMode={mode}\n"


def configure(guest: Any, socket_mode: str = "", fuse_conf: str | None = None) -> list[str]:
    """Apply stack settings in a running guest: fuse.conf, and a visible SocketMode= drop-in for every
    mount-service socket unit (restarted if it was listening).  Returns what was changed."""
    changed = []
    if fuse_conf is not None:
        guest.put("/etc/fuse.conf", fuse_conf_text(fuse_conf))
        changed.append(f"/etc/fuse.conf: {fuse_conf or 'no options'}")
    if socket_mode:
        units = guest.run("grep -l '^ListenSequentialPacket' /etc/systemd/system/*.socket "
                          "/usr/lib/systemd/system/*.socket 2>/dev/null | xargs -rn1 basename | sort -u",
                          check=False).stdout.split()
        for unit in units:
            guest.put(f"/etc/systemd/system/{unit}.d/fuselab-socket-mode.conf", socket_dropin(socket_mode))
            changed.append(f"{unit}: SocketMode={socket_mode}")
        if units:
            guest.run("systemctl daemon-reload")
            guest.run(["sh", "-c", 'for u in "$@"; do systemctl -q is-active "$u" && systemctl restart "$u"; done; '
                       "true", "-", *units])
    return changed


def configure_from(guest: Any, settings: Any) -> list[str]:
    """`configure` with the run's --fuselab-socket-mode and --fuselab-fuse-conf (nothing when unset)."""
    conf = settings.fuse_conf if getattr(settings, "fuse_conf", "") else None
    mode = getattr(settings, "socket_mode", "")
    return configure(guest, mode, conf) if (mode or conf is not None) else []


def image_inputs(recipe: Recipe, stack: str, progress: Progress) -> tuple[Recipe, Layer | None]:
    """The recipe and layer an image for `stack` is built from (the layer built first if needed)."""
    spec = parse(stack)
    if spec is None:
        return recipe, None
    layer = ensure(spec, progress)
    return layered_recipe(recipe, layer), layer


# -- `fuselab stack` ----------------------------------------------------------------------

def add_cli(sub: Any) -> None:
    p = sub.add_parser("stack", help="build a FUSE stack from source (libfuse, e2fsprogs) as an image layer")
    p.add_argument("action", choices=["build", "list"])
    p.add_argument("stack", nargs="?", default=None,
                   help="debian-source, a stack .toml, or libfuse=SRC[@REF],e2fsprogs=SRC[@REF][,...-patches=P] "
                        "(default: $FUSELAB_STACK)")
    p.add_argument("--rebuild", action="store_true", help="build even if a cached layer matches")
    p.add_argument("--image", action="store_true", help="also build the guest image with the layer")
    p.add_argument("--recipe", default="sid", help="image recipe for --image (default: sid)")


def cli(args: Any, progress: Progress) -> int:
    if args.action == "list":
        for path in sorted(stacks_dir().glob("*/manifest.json")) if stacks_dir().exists() else []:
            info = json.loads(path.read_text())
            print(f"{path.parent.name}  libfuse {info['versions']['libfuse']}  e2fsprogs {info['versions']['e2fsprogs']}  "
                  f"built {info['built']} in {info['build_seconds']} s  from {info['sources']}")
        return 0
    value = args.stack or os.environ.get("FUSELAB_STACK", "")
    try:
        spec = parse(value)
    except ValueError as exc:
        raise ImageError(f"stack {value!r}: {exc}") from None
    if spec is None:
        raise ImageError("name a stack to build: debian-source, a .toml file, or libfuse=...,e2fsprogs=...")
    layer = ensure(spec, progress, rebuild=args.rebuild)
    m: dict[str, Any] = layer.manifest()
    print(f"{layer.directory}  libfuse {m['versions']['libfuse']}  e2fsprogs {m['versions']['e2fsprogs']}  "
          f"units {', '.join(m['units']) or '-'}")
    if args.image:
        from pytest_fuselab.build import image
        from pytest_fuselab.build import recipe

        built = image.ensure(layered_recipe(recipe.load(args.recipe), layer), progress, layer=layer)
        print(f"{built.directory}")
    return 0
