"""Settings, resolved in one place: command line > FUSELAB_* environment > ini > default."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Collection, Mapping

from pytest_fuselab.build.stack.spec import StackSpec, label, parse as parse_stack
from pytest_fuselab.errors import SettingError


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value
    return parse


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be a positive number of seconds")
    return number


def _kernel(value: str) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "Makefile").is_file():
            raise ValueError(f"{path} is a directory but not a kernel build tree (no Makefile)")
        return path.resolve()  # a build tree: kernel.py finds arch/x86/boot/bzImage and the modules
    if not path.is_file():
        raise ValueError(f"no kernel image at {path} (give a bzImage/vmlinuz file or a kernel build tree)")
    with open(path, "rb") as f:
        f.seek(0x202)
        if f.read(4) != b"HdrS":
            raise ValueError(f"{path} is not an x86 bzImage (no 'HdrS' boot header); "
                             "give arch/x86/boot/bzImage, not vmlinux")
    return path.resolve()


def _directory(what: str) -> Callable[[str], Path | None]:
    def parse(value: str) -> Path | None:
        if not value:
            return None
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(f"no {what} directory at {path}")
        return path.resolve()
    return parse


def _stack(value: str) -> StackSpec | None:
    return parse_stack(value)  # checks the sources exist; the build happens when an image needs it


def _socket_mode(value: str) -> str:
    if value and not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError("must be an octal mode such as 0666")
    return value


def _fuse_conf(value: str) -> str | None:
    """The options as `user_allow_other,mount_max=N`; None (leave the guest's fuse.conf alone) when empty."""
    items = []
    for item in filter(None, (v.strip() for v in value.split(","))):
        match = re.fullmatch(r"mount_max\s*=\s*(\d+)", item)
        if item != "user_allow_other" and not match:
            raise ValueError(f"{item!r}: fuse.conf options are user_allow_other and mount_max=N")
        items.append(f"mount_max={match.group(1)}" if match else item)
    return ",".join(items) or None


def _hosts(value: str) -> Path | None:
    """A hosts.toml path (read and checked on the controller, by pytest_fuselab.hosts.config)."""
    return Path(value).expanduser() if value else None


def _lines(value: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in value.splitlines() if line.strip())


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    default: str
    parse: Callable[[str], Any]
    metavar: str = "VALUE"
    show: Callable[[Any], str] | None = None  # how the parsed value reads in the header (default: str, '-' if unset)

    @property
    def env(self) -> str:
        return "FUSELAB_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--fuselab-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "fuselab_" + self.name


OPTIONS = [
    Option("image", "guest image recipe: a name in pytest_fuselab/recipes/ or a .toml path", "sid", str, "NAME"),
    Option("kernel", "boot this kernel instead of the image's Debian kernel: a bzImage file or a kernel build "
           "tree (its arch/x86/boot/bzImage and modules)", "", _kernel, "PATH"),
    Option("accel", "acceleration: auto (probe KVM, else TCG), kvm or tcg", "auto",
           _choice("auto", "kvm", "tcg"), "auto|kvm|tcg"),
    Option("memory", "guest memory in MiB", "1024", _positive_int, "MIB"),
    Option("cpus", "guest vCPUs", "2", _positive_int, "N"),
    Option("keep", "keep guest artifacts (console, QEMU command, dmesg) for all, failed or no tests",
           "failed", _choice("all", "failed", "none"), "all|failed|none"),
    Option("boot_timeout", "seconds a cold boot may take", "180", _seconds, "SECONDS"),
    Option("watchdog", "seconds without console output before a boot is called stalled", "30",
           _seconds, "SECONDS"),
    Option("command_timeout", "default seconds for one guest command", "120", _seconds, "SECONDS"),
    Option("budget", "seconds one hostile image may take through every driver before the host stops waiting "
           "(fuselab repro, bench, the hostile-image scenarios)", "150", _seconds, "SECONDS"),
    Option("suppress", "regexes (one per line) of kernel splat titles to ignore", "", _lines, "REGEX"),
    Option("corpus", "directory of hostile images for scenarios/hostile_images (default: a small generated one)",
           "", _directory("corpus"), "DIR"),
    Option("stack", "FUSE stack: debian (released packages), debian-source, a stack .toml, or "
           "libfuse=SRC[@REF],e2fsprogs=SRC[@REF][,libfuse-patches=P][,e2fsprogs-patches=P]", "debian",
           _stack, "STACK", show=label),
    Option("socket_mode", "SocketMode= for the stack's mount-service sockets in each guest (e.g. 0666)", "",
           _socket_mode, "OCTAL"),
    Option("fuse_conf", "/etc/fuse.conf in each guest, e.g. user_allow_other,mount_max=3", "", _fuse_conf,
           "OPTS"),
    Option("modules", "the kernel's modules: a directory filled by make modules_install INSTALL_MOD_PATH=DIR, "
           "or DIR/lib/modules/<release>", "", _directory("modules"), "DIR"),
    Option("hosts", "spread the run over the machines of this hosts.toml (pytest-xdist workers over SSH, one per "
           "guest slot; see `fuselab hosts`)", "", _hosts, "HOSTS_TOML"),
]


@dataclass(frozen=True)
class Settings:
    image: str = "sid"
    kernel: Path | None = None
    modules: Path | None = None
    accel: str = "auto"
    memory: int = 1024
    cpus: int = 2
    keep: str = "failed"
    boot_timeout: float = 180.0
    watchdog: float = 30.0
    command_timeout: float = 120.0
    budget: float = 150.0  # seconds per hostile image (judge/containment.py)
    suppress: tuple[str, ...] = ()
    corpus: Path | None = None
    stack: StackSpec | None = None  # None: the released Debian packages
    socket_mode: str = ""
    fuse_conf: str | None = None  # None: the guest's fuse.conf as the image has it
    hosts: Path | None = None  # None: run here
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        """Every setting as name=value, for the pytest header."""
        shown = []
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            text = opt.show(value) if opt.show else str(value) if value not in (None, ()) else "-"
            shown.append(f"{opt.name}={text}")
        return ", ".join(shown)


def resolve(cli: Mapping[str, Any] | None = None, ini: Mapping[str, Any] | None = None,
            env: Mapping[str, str] | None = None, only: Collection[str] | None = None) -> Settings:
    """Pick each setting (those in `only`, if given) from the first source that has it; a bad value names its source."""
    cli, ini = cli or {}, ini or {}
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        if only is not None and opt.name not in only:
            continue
        candidates = [(opt.flag, cli.get(opt.name)), (opt.env, env.get(opt.env)),
                      (f"ini {opt.ini}", ini.get(opt.name))]
        source, raw = next(((s, r) for s, r in candidates if r not in (None, "", [], ())), ("default", opt.default))
        if isinstance(raw, list):
            raw = "\n".join(raw)
        try:
            values[opt.name] = opt.parse(str(raw))
        except ValueError as exc:
            raise SettingError(f"{opt.name} from {source} = {raw!r}: {exc}") from None
        sources[opt.name] = source
    return Settings(**values, sources=sources)
