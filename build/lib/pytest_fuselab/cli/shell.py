"""`fuselab shell`: SSH into a fresh guest, on a loopback port and with a key made for this run."""

from __future__ import annotations

import argparse
import socket
import subprocess
from pathlib import Path

from pytest_fuselab.cli.options import add_settings, settings_from
from pytest_fuselab.errors import HostError
from pytest_fuselab.vm.guest import Guest
from pytest_fuselab.lab import Lab
from pytest_fuselab.settings import Settings
from pytest_fuselab.workdirs import work_dir


def free_port() -> int:
    """A free TCP port on 127.0.0.1, chosen at run time."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_key(directory: Path) -> Path:
    """A fresh ed25519 key pair for this run only; returns the private key's path."""
    key = directory / "id_ed25519"
    proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fuselab-run", "-f", str(key)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise HostError(f"ssh-keygen failed: {proc.stderr.strip()} (install openssh-client)")
    return key


def enable_ssh(guest: Guest, public_key: str) -> None:
    """Authorise `public_key` for root in the guest and start its network and sshd."""
    guest.run("install -d -m 700 /root/.ssh")
    guest.put("/root/.ssh/authorized_keys", public_key, mode=0o600)
    guest.run("systemctl start fuselab-network.service ssh.service", timeout=120)


def ssh_argv(key: Path, port: int, *command: str) -> list[str]:
    return ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1", *command]


def run(settings: Settings, command: list[str] | None = None) -> int:
    """SSH into a fresh guest (interactive, or running `command`); the guest stops afterwards."""
    with work_dir("fuselab-shell-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o700)
        lab = Lab(settings, workdir)
        port = free_port()
        with lab.guest(ssh_port=port) as guest:
            key = make_key(workdir)
            enable_ssh(guest, key.with_suffix(".pub").read_text())
            if not command:
                print(f"fuselab: guest ready; ssh on 127.0.0.1:{port} with a key made for this session "
                      f"(console: {guest.paths.console}); the guest stops when you log out")
            return subprocess.call(ssh_argv(key, port, *(command or [])))


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab shell [-- COMMAND]`."""
    sh = sub.add_parser("shell", help="an SSH session in a fresh guest (interactive, or `shell -- CMD`)")
    sh.add_argument("remote", nargs=argparse.REMAINDER, help="a command to run over SSH instead of a login")
    add_settings(sh)


def cmd_shell(args: argparse.Namespace) -> int:
    return run(settings_from(args), args.remote)
