"""hosts.toml: the machines a run spreads over, parsed into typed records with errors naming file and key."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_fuselab.errors import SettingError

ACCELS = ("auto", "kvm", "tcg")
DEFAULT_WORKDIR = ".fuselab"  # relative to the login directory on the host
HOST_KEYS = {"ssh", "name", "guests", "workdir", "accel", "python", "cache"}
TOP_KEYS = {"ssh_config", "python", "host"}
_NAME = re.compile(r"^[A-Za-z0-9][\w.@-]*$")
_SAFE_PATH = re.compile(r"^[\w./~+-]+$")  # paths go into xdist specs ('//' splits) and shell commands


@dataclass(frozen=True)
class Host:
    """One machine of hosts.toml."""

    ssh: str  # what ssh(1) connects to: user@host or an alias of ssh_config
    name: str  # how reports name it (default: the ssh target)
    guests: int | None = None  # guest slots; None: from the host's cores and memory
    workdir: str = DEFAULT_WORKDIR  # project environment, cache and temporary files there
    accel: str = "auto"
    python: str = "python3"  # the host's Python, used to create the environment
    cache: str = ""  # FUSELAB_CACHE_DIR there (default: WORKDIR/cache)

    @property
    def cache_dir(self) -> str:
        return self.cache or f"{self.workdir}/cache"

    @property
    def venv_python(self) -> str:
        return f"{self.workdir}/venv/bin/python"

    def env(self) -> dict[str, str]:
        """The environment of everything the lab runs on this host."""
        return {"FUSELAB_CACHE_DIR": self.cache_dir, "FUSELAB_ACCEL": self.accel, "TMPDIR": f"{self.workdir}/tmp"}


@dataclass(frozen=True)
class HostsFile:
    """A parsed hosts.toml."""

    path: Path
    hosts: tuple[Host, ...]
    ssh_config: Path | None = None

    def ssh_options(self) -> list[str]:
        """The options every ssh(1) call to these hosts takes."""
        return ["-F", str(self.ssh_config)] if self.ssh_config else []

    def named(self, names: list[str]) -> list[Host]:
        """The hosts called `names` (all of them when empty); an unknown name is an error."""
        if not names:
            return list(self.hosts)
        known = {h.name: h for h in self.hosts}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SettingError(f"{self.path}: no host named {', '.join(unknown)} (known: {', '.join(known)})")
        return [known[n] for n in names]


def _where(path: Path, index: int | None, key: str) -> str:
    return f"{path}: " + (f"host[{index}].{key}" if index is not None else key)


def _string(raw: Any, path: Path, index: int | None, key: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(raw, str) or not raw:
        raise SettingError(f"{_where(path, index, key)} must be a non-empty string, not {raw!r}")
    if pattern is not None and not pattern.match(raw):
        raise SettingError(f"{_where(path, index, key)} = {raw!r}: use letters, digits and ./_~+@- only")
    return raw


def _host(raw: Any, path: Path, index: int, defaults: dict[str, Any]) -> Host:
    if not isinstance(raw, dict):
        raise SettingError(f"{path}: host[{index}] must be a table ([[host]]), not {raw!r}")
    unknown = sorted(set(raw) - HOST_KEYS)
    if unknown:
        raise SettingError(f"{_where(path, index, unknown[0])}: unknown key (known: {', '.join(sorted(HOST_KEYS))})")
    if "ssh" not in raw:
        raise SettingError(f"{path}: host[{index}] has no ssh = \"user@host\" (or an alias of ssh_config)")
    ssh = _string(raw["ssh"], path, index, "ssh", _NAME)
    guests = raw.get("guests")
    if guests is not None and (not isinstance(guests, int) or isinstance(guests, bool) or not 1 <= guests <= 64):
        raise SettingError(f"{_where(path, index, 'guests')} = {guests!r}: give a whole number from 1 to 64")
    accel = raw.get("accel", "auto")
    if accel not in ACCELS:
        raise SettingError(f"{_where(path, index, 'accel')} = {accel!r}: must be one of {', '.join(ACCELS)}")
    values = {key: _string(raw[key], path, index, key, _SAFE_PATH)
              for key in ("workdir", "python", "cache") if key in raw}
    values.setdefault("python", defaults.get("python", "python3"))
    name = _string(raw.get("name", ssh), path, index, "name", _NAME)
    return Host(ssh=ssh, name=name, guests=guests, accel=accel, **values)


def parse(data: dict[str, Any], path: Path) -> HostsFile:
    """A HostsFile from the TOML document `data` read from `path`."""
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise SettingError(f"{path}: unknown key {unknown[0]!r} (known: ssh_config, python, [[host]])")
    ssh_config = None
    if "ssh_config" in data:
        ssh_config = (path.parent / Path(_string(data["ssh_config"], path, None, "ssh_config")).expanduser())
        if not ssh_config.is_file():
            raise SettingError(f"{path}: ssh_config = {data['ssh_config']!r}: no such file ({ssh_config})")
    defaults = {"python": _string(data["python"], path, None, "python", _SAFE_PATH)} if "python" in data else {}
    raw_hosts = data.get("host", [])
    if not isinstance(raw_hosts, list) or not raw_hosts:
        raise SettingError(f"{path}: no hosts: add at least one [[host]] table with ssh = \"user@host\"")
    hosts = tuple(_host(raw, path, i, defaults) for i, raw in enumerate(raw_hosts))
    seen: set[str] = set()
    for i, host in enumerate(hosts):
        if host.name in seen:
            raise SettingError(f"{_where(path, i, 'name')} = {host.name!r}: two hosts have this name; give one a name")
        seen.add(host.name)
    return HostsFile(path=path, hosts=hosts, ssh_config=ssh_config.resolve() if ssh_config else None)


def load(path: str | Path) -> HostsFile:
    """Read and check hosts.toml; every error names the file and the key."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SettingError(f"hosts file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"hosts file {path}: not valid TOML: {exc}") from None
    return parse(data, path.resolve())


def default_guests(cores: int, memory_mib: int, guest_mib: int = 1024, guest_cpus: int = 2) -> int:
    """Guest slots a host offers: its cores over each guest's vCPUs, and its memory less 2 GiB over each guest's."""
    by_cpu = cores // guest_cpus
    by_memory = (memory_mib - 2048) // (guest_mib + 256)  # QEMU's own overhead beside guest memory
    return max(1, min(by_cpu, by_memory))
