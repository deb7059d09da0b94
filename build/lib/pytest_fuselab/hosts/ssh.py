"""ssh(1) to the hosts of hosts.toml: one ssh_config for the run, a probe, commands with the lab's environment."""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pytest_fuselab.cache import cache_dir
from pytest_fuselab.hosts.config import Host, HostsFile, default_guests

DEFAULTS = """Host *
    BatchMode yes
    ConnectTimeout 10
    ServerAliveInterval 5
    ServerAliveCountMax 3
"""
PROBE = ('echo "home=$HOME"; echo "cores=$(nproc)"; '
         "awk '/MemTotal/{print \"memory=\" int($2/1024)}' /proc/meminfo; "
         'echo "python=$(@PYTHON -c \'import sys; print(\"%d.%d\" % sys.version_info[:2])\' 2>/dev/null)"; '
         'test -x @WORKDIR/venv/bin/python && echo "ready=yes"; cat @WORKDIR/bundle.key 2>/dev/null | sed "s/^/bundle=/"')


def ssh_config(hosts: HostsFile) -> Path:
    """An ssh_config for every ssh call of a run: the user's (or ~/.ssh/config), then the lab's defaults."""
    user = hosts.ssh_config or (Path.home() / ".ssh" / "config")
    text = (f"Include {user}\n" if user.is_file() else "") + DEFAULTS
    path = cache_dir() / "hosts" / f"ssh_config-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def remote_command(host: Host, command: str) -> str:
    """`command` as a shell line on `host`, with the lab's environment for that host."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in host.env().items())
    return f"mkdir -p {shlex.quote(host.workdir)}/tmp && env {env} {command}"


def run(hosts: HostsFile, host: Host, command: str, timeout: float = 60,
        stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run one shell line on `host` with ssh(1); never raises for its status."""
    argv = ["ssh", "-F", str(ssh_config(hosts)), host.ssh, command]
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, 255, b"", f"ssh timed out after {timeout:g} s: {exc}".encode())


@dataclass(frozen=True)
class Reach:
    """What a first SSH call found on one host; `host` has its paths made absolute."""

    host: Host
    problem: str | None = None  # None: reachable
    cores: int = 0
    memory_mib: int = 0
    python: str = ""
    ready: bool = False  # the lab's environment exists there
    bundle: str = ""  # the project bundle installed there

    @property
    def guests(self) -> int:
        return self.host.guests or default_guests(self.cores, self.memory_mib)


def _absolute(path: str, home: str) -> str:
    if path.startswith("/"):
        return path
    return f"{home.rstrip('/')}/{path.removeprefix('~/')}" if path != "~" else home


def probe(hosts: HostsFile, host: Host, timeout: float = 30) -> Reach:
    """One SSH round trip: reachable or why not, cores, memory, Python, whether it is set up."""
    workdir = host.workdir if host.workdir.startswith("/") else f"$HOME/{host.workdir.removeprefix('~/')}"
    line = PROBE.replace("@PYTHON", host.python).replace("@WORKDIR", workdir)
    done = run(hosts, host, line, timeout)
    if done.returncode != 0 or b"home=" not in done.stdout:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return Reach(host, problem=(why[-1] if why else f"ssh exited with status {done.returncode}"))
    facts = dict(line.split("=", 1) for line in done.stdout.decode().splitlines() if "=" in line)
    home = facts.get("home", "/root")
    cache = _absolute(host.cache, home) if host.cache else ""
    absolute = dataclasses.replace(host, workdir=_absolute(host.workdir, home), cache=cache)
    return Reach(absolute, cores=int(facts.get("cores") or 1), memory_mib=int(facts.get("memory") or 0),
                 python=facts.get("python", ""), ready=facts.get("ready") == "yes", bundle=facts.get("bundle", ""))


def probe_all(hosts: HostsFile, chosen: list[Host] | None = None, timeout: float = 30) -> list[Reach]:
    """Probe hosts at once, in the order of hosts.toml."""
    targets = chosen if chosen is not None else list(hosts.hosts)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as pool:
        return list(pool.map(lambda h: probe(hosts, h, timeout), targets))
