"""One QEMU process, owned for its whole life: launch, QMP, shutdown, never orphaned."""

from __future__ import annotations

import ctypes
import enum
import logging
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.protocol import ConnectError

from pytest_fuselab.errors import MachineError
from pytest_fuselab.vm.qemu import MachineSpec, RunPaths, build_argv

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

PR_SET_PDEATHSIG = 1


class Runstate(enum.Enum):
    NEW = "new"
    BOOTING = "booting"
    READY = "ready"
    CRASHED = "crashed"
    STOPPED = "stopped"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_bytes()[-65536:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Machine:
    """Owns one QEMU process.  Use as a context manager; `shutdown()` is safe to call twice."""

    def __init__(self, spec: MachineSpec, paths: RunPaths) -> None:
        self.spec = spec
        self.paths = paths
        self.state = Runstate.NEW
        self.argv: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def launch(self, incoming: Path | None = None) -> None:
        """Start QEMU and connect QMP.  With `incoming`, QEMU waits for a saved state."""
        for sock in (self.paths.qmp, self.paths.agent):
            sock.unlink(missing_ok=True)
        self.argv = build_argv(self.spec, self.paths, incoming)
        log.debug("launching %s", shlex.join(self.argv))
        with open(self.paths.log, "ab") as out:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with_parent)
        (self.paths.log.parent / "qemu.pid").write_text(f"{self._proc.pid}\n")
        self.state = Runstate.BOOTING
        try:
            self._connect_qmp(deadline=time.monotonic() + 20)
        except BaseException:
            self.kill()
            raise

    def _connect_qmp(self, deadline: float) -> None:
        while True:
            if self.exitcode is not None:
                raise self.error(f"QEMU exited with status {self.exitcode} during start-up")
            if self.paths.qmp.exists():
                qmp = QEMUMonitorProtocol(str(self.paths.qmp))
                try:
                    qmp.connect(negotiate=True)
                    self._qmp = qmp
                    return
                except (ConnectError, OSError):
                    qmp.close()
            if time.monotonic() > deadline:
                raise self.error("QEMU did not answer on its QMP socket within 20 s")
            time.sleep(0.01)

    def error(self, message: str, cls: type[MachineError] = MachineError) -> MachineError:
        return cls(message, self.argv, tail(self.paths.log, 20))

    def qmp(self, command: str, **args: Any) -> Any:
        if self._qmp is None:
            raise MachineError(f"QMP command {command!r} on a machine that is not running")
        return self._qmp.cmd(command, **args)

    def events(self, wait: float | bool = False) -> list[dict[str, Any]]:
        return self._qmp.get_events(wait=wait) if self._qmp else []

    @property
    def exitcode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def shutdown(self, timeout: float = 3.0) -> None:
        """Ask QEMU to quit, then kill its process group if it does not."""
        if self._proc is None or self.state is Runstate.STOPPED:
            return
        if self.is_running() and self._qmp is not None:
            try:
                self._qmp.cmd("quit")
            except Exception:  # EOFError and friends: QEMU went away while answering
                pass
            self.wait(timeout)
        self.kill()

    def kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:
                pass
            self._qmp = None
        (self.paths.log.parent / "qemu.pid").unlink(missing_ok=True)
        self.state = Runstate.STOPPED
