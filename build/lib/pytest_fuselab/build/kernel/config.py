"""Kernel configs: read them (a tree's .config, a config-* file, the copy IKCONFIG embeds in a
bzImage) and check them against what the lab and its scenarios need, before anything boots."""

from __future__ import annotations

import bz2
import lzma
import os
import re
import stat
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_fuselab.errors import SettingError

Config = dict[str, str]  # "FUSE_FS" -> "y" | "m" | "n" | a value

LINE = re.compile(r"^CONFIG_(\w+)=(.*)$")
UNSET = re.compile(r"^# CONFIG_(\w+) is not set$")


@dataclass(frozen=True)
class Need:
    """One config option the lab needs; `where` says when it is needed."""

    option: str
    why: str
    where: str  # "initramfs": before root is mounted; "boot": by the guest's userspace; "scenario"


# The lab cannot boot or talk to a guest without these.  "initramfs" options may be modules
# only if the kernel comes with its modules (the lab's initramfs loads them).
NEEDS = [
    Need("BLK_DEV_INITRD", "the lab boots through its own initramfs", "core"),
    Need("RD_GZIP", "the lab's initramfs is gzip-compressed", "core"),
    Need("DEVTMPFS", "the initramfs mounts devtmpfs", "core"),
    Need("SERIAL_8250_CONSOLE", "the console (and splat detection) is ttyS0", "core"),
    Need("UNIX", "systemd and the agent use AF_UNIX sockets", "core"),
    Need("VIRTIO_PCI", "every lab device is virtio over PCI", "initramfs"),
    Need("VIRTIO_BLK", "the root disk, the modules disk and scenario disks are virtio-blk", "initramfs"),
    Need("EXT4_FS", "the root filesystem is ext4", "initramfs"),
    Need("VIRTIO_CONSOLE", "the lab's agent talks over virtio-serial", "boot"),
    Need("HOTPLUG_PCI_ACPI", "fuselab_disk hot-plugs virtio disks (ACPI PCI hot-plug on the pc machine)", "boot"),
    Need("CGROUPS", "systemd needs cgroups (v2)", "boot"),
    Need("INOTIFY_USER", "systemd needs inotify", "boot"),
    Need("SIGNALFD", "systemd needs signalfd", "boot"),
    Need("TIMERFD", "systemd needs timerfd", "boot"),
    Need("EPOLL", "systemd needs epoll", "boot"),
    Need("FHANDLE", "systemd needs name_to_handle_at", "boot"),
    Need("TMPFS", "systemd mounts /run and /tmp as tmpfs", "boot"),
    Need("FUSE_FS", "every FUSE driver (fuse2fs, stallfs, the service stack)", "boot"),
    Need("TTY_PRINTK", "fuse4fs@.service writes errors to /dev/ttyprintk", "scenario"),
    Need("PSI", "fuse4fs reclaims its cache on memory pressure (/proc/pressure)", "scenario"),
    Need("MEMCG", "the service cgroup's memory.pressure", "scenario"),
    Need("BLK_DEV_LOOP", "scenarios mount image files through loop devices", "scenario"),
    Need("BLK_DEV_DM", "test_io_faults.py builds dm devices", "scenario"),
    Need("DM_FLAKEY", "test_io_faults.py fails writes with dm-flakey", "scenario"),
    Need("VFAT_FS", "test_casefold_flags.py reads vfat's flags", "scenario"),
    Need("MSDOS_FS", "test_casefold_flags.py reads msdos's flags", "scenario"),
    Need("UNICODE", "test_casefold_flags.py makes ext4 casefold directories", "scenario"),
]


def parse(text: str) -> Config:
    """A .config's options; `# CONFIG_X is not set` reads as "n"."""
    config: Config = {}
    for line in text.splitlines():
        if match := LINE.match(line.strip()):
            config[match.group(1)] = match.group(2).strip('"')
        elif match := UNSET.match(line.strip()):
            config[match.group(1)] = "n"
    return config


def value(config: Config, option: str) -> str:
    return config.get(option.removeprefix("CONFIG_"), "n")


@dataclass(frozen=True)
class ConfigCheck:
    """What a config lacks: `fatal` refuses the boot; `scenario` only skips scenarios."""

    fatal: list[str]
    scenario: list[str]

    def explain(self) -> str:
        return "; ".join(self.fatal + self.scenario)


def check(config: Config, has_modules: bool) -> ConfigCheck:
    """Compare `config` with NEEDS. With no modules, modular options count as missing."""
    fatal: list[str] = []
    scenario: list[str] = []
    for need in NEEDS:
        have = value(config, need.option)
        if need.where == "core" and have != "y":
            problem = f"CONFIG_{need.option}={have} (must be y: {need.why})"
        elif have not in ("y", "m"):
            problem = f"CONFIG_{need.option} is not set ({need.why})"
        elif have == "m" and not has_modules:
            problem = f"CONFIG_{need.option}=m but the kernel comes without modules ({need.why})"
        else:
            continue
        (scenario if need.where == "scenario" else fatal).append(problem)
    return ConfigCheck(fatal, scenario)


def require(config: Config, has_modules: bool, source: str) -> ConfigCheck:
    """Raise SettingError naming every missing option the lab cannot do without."""
    checked = check(config, has_modules)
    if checked.fatal:
        raise SettingError(f"the kernel's config ({source}) lacks what the lab needs:\n  "
                           + "\n  ".join(checked.fatal)
                           + "\nenable these (e.g. with the fragment of `fuselab kernel build`) and rebuild")
    return checked


# -- bzImage --------------------------------------------------------------------------------

def setup_header(data: bytes) -> tuple[int, int, int]:
    """(start of the protected-mode code, payload offset, payload length) of an x86 bzImage."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise ValueError("not an x86 bzImage (no 'HdrS' boot header)")
    setup_sects = data[0x1F1] or 4
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        raise ValueError(f"boot protocol {version >> 8}.{version & 0xff} is too old to carry a payload offset")
    offset, length = struct.unpack_from("<II", data, 0x248)
    return (setup_sects + 1) * 512, offset, length


KERNEL_FILE_MAX = 256 << 20  # no bzImage is larger; the whole file is read to find its payload
VMLINUX_MAX = 512 << 20  # no decompressed kernel is larger: decompression stops here
IKCONFIG_MAX = 16 << 20  # the embedded config, compressed or not


def read_kernel(path: Path, size: int) -> bytes:
    """The first `size` bytes of `path`, a regular file of at most KERNEL_FILE_MAX bytes; else ValueError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read the kernel {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > KERNEL_FILE_MAX:
        os.close(fd)
        what = "is not a regular file" if not stat.S_ISREG(st.st_mode) else f"is over {KERNEL_FILE_MAX >> 20} MiB"
        raise ValueError(f"the kernel {path} {what}: give a bzImage file or a kernel tree")
    with os.fdopen(fd, "rb") as f:
        return f.read(size)


def release(path: Path) -> str:
    """The kernel release (`uname -r`) written in a bzImage's setup header."""
    data = read_kernel(path, 0x10000)
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        raise ValueError(f"{path} is not an x86 bzImage (no 'HdrS' boot header)")
    pointer = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
    text = data[pointer:pointer + 256].split(b"\0")[0].decode(errors="replace")
    if not text:
        raise ValueError(f"{path} carries no kernel version string")
    return text.split()[0]


def decompress(payload: bytes | memoryview, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The kernel inside a bzImage payload, whichever compressor made it, in pieces of at most `chunk` bytes."""
    head = bytes(payload[:6])
    if head.startswith(b"\x1f\x8b"):
        return _inflate(zlib.decompressobj(31), payload, chunk)
    if head.startswith(b"BZh"):
        return _unpack(bz2.BZ2Decompressor(), payload, chunk)
    if head.startswith((b"\xfd7zXZ\x00", b"\x5d\x00\x00")):
        form = lzma.FORMAT_XZ if head.startswith(b"\xfd") else lzma.FORMAT_ALONE
        return _unpack(lzma.LZMADecompressor(form), payload, chunk)
    tools = {b"\x28\xb5\x2f\xfd": ["zstd", "-dcq"], b"\x02\x21\x4c\x18": ["lz4", "-dcq"],
             b"\x89LZO": ["lzop", "-dcq"]}
    for magic, argv in tools.items():
        if head.startswith(magic):
            return _tool(argv, payload, chunk)
    raise ValueError(f"unknown compression of the kernel payload (starts {head.hex()})")


def _inflate(inflater: Any, payload: bytes | memoryview, chunk: int) -> Iterator[bytes]:
    """A zlib stream's output, `chunk` bytes at a time; trailing bytes are ignored."""
    data = payload
    while not inflater.eof and (out := inflater.decompress(data, chunk)):
        data = inflater.unconsumed_tail
        yield out


def _unpack(inflater: Any, payload: bytes | memoryview, chunk: int) -> Iterator[bytes]:
    """A bz2 or lzma stream's output, `chunk` bytes at a time; trailing bytes are ignored."""
    out = inflater.decompress(payload, chunk)
    while out:
        yield out
        if inflater.eof:
            return
        out = inflater.decompress(b"", chunk)


def _tool(argv: list[str], payload: bytes | memoryview, chunk: int) -> Iterator[bytes]:
    with tempfile.TemporaryFile() as staged:
        staged.write(payload)
        staged.seek(0)
        try:
            proc = subprocess.Popen(argv, stdin=staged, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ValueError(f"the kernel is compressed with {argv[0]}, which is not installed") from None
        assert proc.stdout is not None
        try:
            # the payload may end in padding a strict decompressor rejects: keep its output
            while out := proc.stdout.read(chunk):
                yield out
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()


def _between(pieces: Iterator[bytes], start: bytes, end: bytes) -> bytes | None:
    """The bytes between the markers `start` and `end` in a stream of at most VMLINUX_MAX bytes."""
    total, tail, found = 0, b"", None
    for piece in pieces:
        total += len(piece)
        if total > VMLINUX_MAX:
            raise ValueError(f"the kernel payload decompresses to more than {VMLINUX_MAX >> 20} MiB: not a kernel")
        if found is None:
            data = tail + piece
            at = data.find(start)
            tail = data[-len(start) + 1:]
            if at < 0:
                continue
            found, piece = bytearray(), data[at + len(start):]
        seen = max(len(found) - len(end) + 1, 0)
        found += piece
        stop = found.find(end, seen)
        if stop >= 0:
            return bytes(found[:stop])
        if len(found) > IKCONFIG_MAX:
            raise ValueError(f"the embedded config (IKCONFIG) is larger than {IKCONFIG_MAX >> 20} MiB")
    return bytes(found) if found is not None else None


def embedded(path: Path) -> str | None:
    """The config IKCONFIG embedded in a bzImage, or None if it has none; ValueError for what is no kernel."""
    data = read_kernel(path, KERNEL_FILE_MAX)
    start, offset, length = setup_header(data)
    blob = _between(decompress(memoryview(data)[start + offset:start + offset + length]), b"IKCFG_ST", b"IKCFG_ED")
    if blob is None:
        return None
    inflater = zlib.decompressobj(31)
    text = inflater.decompress(blob, IKCONFIG_MAX)
    if inflater.unconsumed_tail:
        raise ValueError(f"the embedded config (IKCONFIG) decompresses to more than {IKCONFIG_MAX >> 20} MiB")
    return text.decode(errors="replace")


def find(kernel: Path, tree: Path | None = None, modules: Path | None = None) -> tuple[Config, str] | None:
    """The config of `kernel` and where it came from: the tree's .config, the config embedded in
    the bzImage, config-<release> beside it, or <modules>/config; None when there is none."""
    if tree is not None and (tree / ".config").is_file():
        return parse((tree / ".config").read_text()), str(tree / ".config")
    try:
        text = embedded(kernel)
        rel = release(kernel) if text is None else ""
    except (ValueError, OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise SettingError(f"cannot read the kernel {kernel}: {exc}") from None
    if text is not None:
        return parse(text), f"embedded in {kernel} (IKCONFIG)"
    beside = [kernel.parent / f"config-{rel}", kernel.parent / "config"]
    if modules is not None:
        beside.append(modules / "config")
    for candidate in beside:
        if candidate.is_file():
            return parse(candidate.read_text()), str(candidate)
    return None
