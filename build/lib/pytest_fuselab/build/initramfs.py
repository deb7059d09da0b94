"""Build the small initramfs: static busybox, the root disk's modules, then switch_root."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

from pytest_fuselab.errors import ImageError

INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod /modules/$m || echo "fuselab-initramfs: insmod $m failed"; done
root=/dev/vda
for i in $(seq 1 400); do [ -b $root ] && break; sleep 0.05; done
mkdir -p /newroot
if ! mount -t ext4 -o rw $root /newroot; then
    echo "fuselab-initramfs: cannot mount $root"; echo c > /proc/sysrq-trigger
fi
if [ -n "$fuselab_modules" ]; then  # a foreign kernel's modules come on a disk of their own (kernel.py)
    v=$(uname -r); m=
    for i in $(seq 1 400); do
        for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "$fuselab_modules" ] && m=/dev/${b##*/}; done
        [ -n "$m" ] && [ -b "$m" ] && break; sleep 0.05
    done
    mkdir -p /newroot/lib/modules/$v
    mount -t ext4 -o ro "$m" /newroot/lib/modules/$v || echo "fuselab-initramfs: cannot mount the modules disk ($m)"
fi
if [ -d /fuselab ]; then  # the lab's guest programs travel in their own initramfs layer
    mkdir -p /newroot/usr/local/sbin /newroot/usr/local/lib/fuselab
    mkdir -p /newroot/var/lib/fuselab/cores /newroot/etc/sysctl.d && chmod 1777 /newroot/var/lib/fuselab/cores
    # core dumps of FUSE servers land there, sandboxed or not (replaces Debian's "core" in the cwd)
    echo "kernel.core_pattern=/var/lib/fuselab/cores/core.%e.%p" > /newroot/etc/sysctl.d/10-coredump-debian.conf
    cp -r /fuselab/lib/. /newroot/usr/local/lib/fuselab/
    printf '%s\\n' 'import runpy, sys' 'sys.path.insert(0, "/usr/local/lib/fuselab")' \
        'runpy.run_module("pytest_fuselab.guest.agent", run_name="__main__")' > /newroot/usr/local/sbin/fuselab-agent
    mkdir -p /newroot/etc/udev/rules.d && cp /fuselab/rules/*.rules /newroot/etc/udev/rules.d/
    mkdir -p /newroot/etc/systemd/journald.conf.d && cp /fuselab/journald.conf /newroot/etc/systemd/journald.conf.d/fuselab.conf
fi
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot ${fuselab_init:-/sbin/init}
"""


def module_closure(modules_dir: Path, names: list[str]) -> list[str]:
    """Return the relative module paths needed for `names`, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[module_name(path)] = path
    ordered: list[str] = []

    def visit(path: str) -> None:
        if path in ordered:
            return
        for dep in deps.get(path, []):
            visit(dep)
        ordered.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key not in by_name:
            builtin = (modules_dir / "modules.builtin").read_text() if (modules_dir / "modules.builtin").exists() else ""
            if f"/{name}.ko" in builtin or f"/{key}.ko" in builtin:
                continue  # built into the kernel
            raise ImageError(f"kernel module {name!r} not found in {modules_dir}/modules.dep")
        visit(by_name[key])
    return ordered


def module_name(path: str) -> str:
    base = Path(path).name
    return base.split(".ko")[0].replace("-", "_")


def decompress(src: Path) -> bytes:
    data = src.read_bytes()
    if src.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if src.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if src.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc", str(src)], check=True, capture_output=True).stdout
    return data


def find_busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).exists():
            return Path(candidate)
    raise ImageError("static busybox not found on the host: install busybox-static (`fuselab setup`)")


def build(modules_dir: Path, names: list[str], out: Path, work: Path) -> Path:
    """Write an initramfs (newc cpio, gzip) to `out` that loads `names` and boots /dev/vda."""
    tree = work / "initramfs"
    if tree.exists():
        shutil.rmtree(tree)
    for sub in ("bin", "dev", "proc", "sys", "modules", "newroot"):
        (tree / sub).mkdir(parents=True)
    shutil.copy2(find_busybox(), tree / "bin" / "busybox")
    listing = []
    for rel in module_closure(modules_dir, names) if names else []:
        name = module_name(rel) + ".ko"
        (tree / "modules" / name).write_bytes(decompress(modules_dir / rel))
        listing.append(name)
    (tree / "modules.list").write_text("\n".join(listing) + "\n")
    init = tree / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    out.write_bytes(pack(tree))
    shutil.rmtree(tree)
    return out


def pack(tree: Path) -> bytes:
    """A gzip-compressed newc cpio archive of `tree`, owned by root."""
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    cpio = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"], cwd=tree,
                          input="\n".join(files).encode(), capture_output=True)
    if cpio.returncode != 0:
        raise ImageError(f"cpio failed building an initramfs: {cpio.stderr.decode(errors='replace')}")
    return gzip.compress(cpio.stdout, compresslevel=6, mtime=0)


def lab_layer(base: Path, files: dict[str, Path], cache: Path) -> Path:
    """The image's initramfs with a second archive appended: this lab's /init and guest programs.

    They belong to this version of the lab, not to the image: changing them never forces an
    image rebuild (a later archive's files replace the earlier ones).  Cached by content."""
    import hashlib
    import tempfile

    h = hashlib.sha256(base.read_bytes() + INIT_SCRIPT.encode())
    for name, path in sorted(files.items()):
        h.update(name.encode() + b"\0" + path.read_bytes())
    out = cache / f"initrd-{h.hexdigest()[:16]}.gz"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tree = Path(tmp) / "tree"
        (tree / "fuselab").mkdir(parents=True)
        for name, path in files.items():
            (tree / "fuselab" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tree / "fuselab" / name)
        (tree / "init").write_text(INIT_SCRIPT)
        (tree / "init").chmod(0o755)
        partial = Path(tmp) / "initrd.gz"
        partial.write_bytes(base.read_bytes() + pack(tree))
        partial.rename(out)
    return out
