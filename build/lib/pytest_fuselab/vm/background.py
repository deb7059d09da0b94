"""Commands left running in a guest while a test acts: start them, wait for them, read them."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from pytest_fuselab.vm.guest import Guest

DIRECTORY = "/run/fuselab/background"


@dataclass(frozen=True)
class Job:
    """A command running detached in a guest; its output goes to a file there."""

    guest: Guest
    name: str
    pid: str

    @property
    def output_path(self) -> str:
        return f"{DIRECTORY}/{self.name}.out"

    def running(self) -> bool:
        return self.guest.run(f"kill -0 {self.pid}", check=False).ok

    def wait(self, seconds: float = 30) -> bool:
        """True once the job has exited, False if it still runs after `seconds`."""
        deadline = time.monotonic() + seconds
        while self.running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def kill(self, signal: str = "TERM") -> None:
        self.guest.run(f"kill -{signal} {self.pid}", check=False)

    def output(self) -> str:
        return self.guest.run(f"cat {self.output_path}").stdout


def start(guest: Guest, command: str, name: str, wrap: Callable[[str], str] | None = None) -> Job:
    """Start `command` detached (through `wrap`, e.g. a driver's `wrap` to run as its user)."""
    guest.run(f"mkdir -p -m 1777 {DIRECTORY}")
    inner = f"nohup sh -c {shlex.quote(command)} > {DIRECTORY}/{name}.out 2>&1 & echo $!"
    return Job(guest, name, guest.run(wrap(inner) if wrap else inner).stdout.strip())


def wait_for_path(guest: Guest, path: str, seconds: float = 30) -> None:
    """Wait until `path` exists in the guest (a marker a server or a job writes)."""
    guest.run(f"for i in $(seq {int(seconds * 20)}); do [ -e {path} ] && exit 0; sleep 0.05; done; "
              f"echo 'no {path} after {seconds} s' >&2; exit 1", timeout=seconds + 10)
