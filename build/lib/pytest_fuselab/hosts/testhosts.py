"""Test hosts on this machine: a network namespace each, a veth pair, its own sshd, workdir and cache (root only).

Host N answers on 10.213.N.2 (this side of its veth is 10.213.N.1/30); only these addresses are used.
`TestHosts` writes an ssh_config with an alias per host and a hosts.toml naming them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pytest_fuselab.errors import HostError

SSHD = "/usr/sbin/sshd"
SUBNET = "10.213"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise HostError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass
class TestHost:
    """One namespace host: its name, address, directory and sshd."""

    __test__ = False  # not a pytest test class
    index: int
    netns: str
    root: Path
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"host{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}.2"

    @property
    def workdir(self) -> Path:
        return self.root / "work"

    def pids(self) -> list[int]:
        """Every process in the namespace (ip netns pids)."""
        out = _run("ip", "netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def qemu_pids(self) -> list[int]:
        """The QEMU processes this host runs (they live in its namespace)."""
        return [p for p in self.pids() if _comm(p).startswith("qemu-system")]

    def kill(self) -> list[int]:
        """Kill its sshd (every sshd process in the namespace) and its QEMU processes, by pid; the killed pids."""
        victims = [p for p in self.pids() if _comm(p) in ("sshd", "sshd-session") or _comm(p).startswith("qemu")]
        for pid in victims:
            _signal(pid, signal.SIGKILL)
        return victims


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class TestHosts:
    """N test hosts under `root`; use as a context manager (teardown kills everything in their namespaces)."""

    __test__ = False
    root: Path
    count: int = 2
    first: int = 1  # index of the first host: 10.213.FIRST.2
    guests: int = 1
    accel: str = "tcg"
    hosts: list[TestHost] = field(default_factory=list)

    @property
    def key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    @property
    def hosts_toml(self) -> Path:
        return self.root / "hosts.toml"

    def __enter__(self) -> TestHosts:
        if os.geteuid() != 0 or not Path(SSHD).exists():
            raise HostError(f"test hosts need root and {SSHD} (apt-get install openssh-server)")
        self.root.mkdir(parents=True, exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fuselab-test", "-f", str(self.key))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.first = self._free_block()
        try:
            for index in range(self.first, self.first + self.count):
                self.hosts.append(self._make(index))
            self._write_configs()
            for host in self.hosts:
                self._wait_ssh(host)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _free_block(self) -> int:
        """The first index from `first` on whose subnets no interface of this machine uses yet, so that
        two runs at once (two CI jobs, a developer's and a test's) never answer for each other's hosts."""
        used = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
        start = self.first
        while any(f" {SUBNET}.{i}." in used for i in range(start, start + self.count)):
            start += self.count
            if start + self.count > 250:
                raise HostError(f"no free {SUBNET}.N.0/30 subnets left for test hosts (see `ip -4 addr`)")
        return start

    def _make(self, index: int) -> TestHost:
        host = TestHost(index, f"fuselab-t{os.getpid()}-{index}", self.root / f"host{index}")
        host.workdir.mkdir(parents=True, exist_ok=True)
        outer, inner = f"flh{os.getpid() % 10000}x{index}", f"fln{os.getpid() % 10000}x{index}"
        _run("ip", "netns", "add", host.netns)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", host.netns)
        _run("ip", "addr", "add", f"{SUBNET}.{index}.1/30", "dev", outer)
        _run("ip", "link", "set", outer, "up")
        for argv in (["addr", "add", f"{host.address}/30", "dev", inner], ["link", "set", inner, "up"],
                     ["link", "set", "lo", "up"]):
            _run("ip", "netns", "exec", host.netns, "ip", *argv)
        host.sshd = self._sshd(host)
        return host

    def _sshd(self, host: TestHost) -> subprocess.Popen[bytes]:
        hostkey = host.root / "ssh_host_ed25519_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey))
        shutil.copy(f"{self.key}.pub", host.root / "authorized_keys")
        options = {"ListenAddress": host.address, "Port": "22", "HostKey": str(hostkey),
                   "AuthorizedKeysFile": str(host.root / "authorized_keys"), "PermitRootLogin": "prohibit-password",
                   "PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no", "UsePAM": "no",
                   "StrictModes": "no", "PidFile": str(host.root / "sshd.pid"), "MaxStartups": "100",
                   "MaxSessions": "100", "Subsystem": f"sftp {_sftp_server()}"}
        argv = ["ip", "netns", "exec", host.netns, SSHD, "-D", "-e", "-f", "/dev/null"]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        log = open(host.root / "sshd.log", "ab")
        return subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def _write_configs(self) -> None:
        known = self.root / "known_hosts"
        known.write_text("".join(f"{h.address} {(h.root / 'ssh_host_ed25519_key.pub').read_text()}"
                                 for h in self.hosts))
        self.ssh_config.write_text("".join(
            f"Host {h.name}\n    HostName {h.address}\n    User root\n    IdentityFile {self.key}\n"
            f"    IdentitiesOnly yes\n    UserKnownHostsFile {known}\n    StrictHostKeyChecking yes\n"
            for h in self.hosts))
        self.hosts_toml.write_text(f'ssh_config = "{self.ssh_config}"\npython = "{_python()}"\n' + "".join(
            f'\n[[host]]\nssh = "{h.name}"\nguests = {self.guests}\nworkdir = "{h.workdir}"\naccel = "{self.accel}"\n'
            for h in self.hosts))

    def _wait_ssh(self, host: TestHost, deadline: float = 20) -> None:
        end = time.monotonic() + deadline
        while True:
            done = _run("ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=3",
                        host.name, "true", check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > end:
                raise HostError(f"test host {host.name} ({host.address}) does not answer ssh: {done.stderr.strip()}"
                                f"; sshd log: {host.root / 'sshd.log'}")
            time.sleep(0.2)

    def close(self) -> None:
        """Kill every process in each namespace, then delete the namespaces (their veths go with them)."""
        for host in self.hosts:
            for _ in range(50):
                pids = host.pids()
                if not pids:
                    break
                for pid in pids:
                    _signal(pid, signal.SIGKILL)
                time.sleep(0.1)
            if host.sshd is not None:
                host.sshd.wait(timeout=10)
            _run("ip", "netns", "delete", host.netns, check=False)
        self.hosts.clear()


def _sftp_server() -> str:
    for candidate in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server"):
        if Path(candidate).exists():
            return candidate
    return "internal-sftp"


def _python() -> str:
    """A Python of the controller's version for the hosts' environments (they share this machine's files)."""
    import sys

    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")
