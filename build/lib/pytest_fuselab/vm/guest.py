"""A running guest: one Machine, one agent Channel, its console, its disks."""

from __future__ import annotations

import base64
import io
import itertools
import logging
import os
import re
import shlex
import shutil
import socket
import stat
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

from qemu.qmp import ExecuteError, QMPError

from pytest_fuselab import proc
from pytest_fuselab.judge import splats
from pytest_fuselab.vm.channel import Channel, Result, decode
from pytest_fuselab.errors import BootError, CommandFailed, GuestError, GuestLost, GuestTimeout, MachineError
from pytest_fuselab.guest.protocol import JudgeAnswer, JudgeSpec, ProtocolError
from pytest_fuselab.vm.machine import Machine, Runstate, tail
from pytest_fuselab.vm.qemu import DISK_BRIDGE, MachineSpec, RunPaths, load_state_uri
from pytest_fuselab.workdirs import host_error

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

Progress = Callable[[str], None]


_swept = False


def sweep_socket_dirs(tmp: Path | None = None, older_than: float = 120) -> list[Path]:
    """Remove socket directories of guests whose QEMU is gone (a run killed with SIGKILL cannot
    remove its own): no one accepts on their QMP socket any more.  Once per process."""
    global _swept
    if _swept and tmp is None:
        return []
    _swept = True
    removed = []
    for directory in Path(tmp or tempfile.gettempdir()).glob("fuselab-*"):
        qmp = directory / "qmp.sock"
        try:
            if directory.stat().st_uid != os.getuid() or time.time() - directory.stat().st_mtime < older_than:
                continue
            entries = list(directory.iterdir())
            if not entries and re.fullmatch(r"fuselab-[a-z0-9_]{8}", directory.name):
                raise ConnectionRefusedError  # its QEMU never started
            if qmp not in entries or not all(stat.S_ISSOCK(e.lstat().st_mode) for e in entries):
                continue  # not a guest's socket directory (work directories share the prefix)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                probe.connect(str(qmp))
        except ConnectionRefusedError:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
        except OSError:
            continue  # alive, busy or not ours to judge
    return removed


@dataclass
class Disk:
    """A virtio disk attached to a guest through QMP."""

    name: str
    host_path: Path
    path: str  # the device node inside the guest, /dev/vdX
    size: int


def create_overlay(overlay: Path, backing: Path, fmt: str = "qcow2") -> None:
    overlay.unlink(missing_ok=True)
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", fmt, str(overlay)],
             MachineError)


class Guest:
    """A guest the lab owns; `run()` executes commands in it through the agent."""

    def __init__(self, spec: MachineSpec, rundir: Path, ssh_port: int | None = None) -> None:
        rundir.mkdir(parents=True, exist_ok=True)
        self.rundir = rundir
        # Sockets live in a short private directory: only this process may connect to them.
        sweep_socket_dirs()
        try:
            self.sockets = Path(tempfile.mkdtemp(prefix="fuselab-"))
        except OSError as exc:  # a full or unwritable TMPDIR
            raise host_error(exc, Path(tempfile.gettempdir())) from exc
        self.paths = RunPaths.in_dir(rundir, ssh_port, self.sockets)
        self.machine = Machine(spec, self.paths)
        self.channel = Channel(self.paths.agent)
        self.disks: list[Disk] = []
        self.unplugging: list[Disk] = []  # device_del sent; blockdev-del once the guest let go (reap_unplugged)
        self._disk_numbers = itertools.count(1)  # disk names stay unique when disks are unplugged
        self.boot_seconds = 0.0
        self.killed = False  # killed on purpose by a test: its loss is not a verdict

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def state(self) -> Runstate:
        return self.machine.state

    # -- starting ---------------------------------------------------------------------------

    def boot(self, backing: Path, timeout: float = 180, watchdog: float = 30,
             progress: Progress | None = None) -> None:
        """Cold boot from the base image.  A boot that stalls (no console output for `watchdog`
        seconds) or dies is retried once: under TCG both happen now and then to good kernels."""
        for attempt in (1, 2):
            create_overlay(self.paths.root, backing)
            self.paths.console.write_bytes(b"")
            start = time.monotonic()
            self.machine.launch()
            self.channel = Channel(self.paths.agent)
            self.channel.connect()
            try:
                self._wait_ready(start + timeout, watchdog, progress)
                self.boot_seconds = time.monotonic() - start
                self.machine.state = Runstate.READY
                return
            except BootError as exc:
                self.machine.kill()
                self.channel.close()
                self.paths.root.unlink(missing_ok=True)
                if attempt == 2:
                    raise
                if progress:
                    progress(f"boot failed ({exc.args[0].splitlines()[0]}); retrying once")
                (self.rundir / "console-failed-boot.log").write_bytes(self.paths.console.read_bytes())

    def _wait_ready(self, deadline: float, watchdog: float, progress: Progress | None) -> None:
        last_size, last_change = -1, time.monotonic()
        while True:
            try:
                self.channel.request("ping", wait=1.0, time=time.time())
                return
            except GuestTimeout:
                pass
            except GuestLost as exc:
                status = self.machine.wait(5)
                splat = splats.scan(self.console_text())
                why = f"kernel splat: {splat[0].title}" if splat else str(exc)
                raise self.boot_error(f"QEMU exited while booting (status {status}): {why}") from exc
            size = self.paths.console.stat().st_size
            now = time.monotonic()
            if size != last_size:
                if progress and size // 16384 != last_size // 16384:
                    progress(f"booting: {size // 1024} KiB of console output")
                last_size, last_change = size, now
            if now - last_change > watchdog:
                raise self.boot_error(f"no console output for {watchdog:.0f} s (boot watchdog)")
            if now > deadline:
                raise self.boot_error("the guest agent did not answer before the boot deadline")

    def boot_error(self, message: str) -> BootError:
        return BootError(message, self.machine.argv, "console:\n" + tail(self.paths.console, 30))

    def restore(self, backing: Path, state: Path, timeout: float = 60) -> None:
        """Start a new QEMU from a saved state: the guest resumes where the snapshot left it."""
        create_overlay(self.paths.root, backing)
        self.paths.console.write_bytes(b"")
        start = time.monotonic()
        self.machine.launch(incoming=state)
        self.channel = Channel(self.paths.agent)
        self.channel.connect()
        self.machine.qmp("migrate-incoming", uri=load_state_uri(state))
        try:
            self._wait_incoming(start + timeout)
            self.machine.qmp("cont")  # the snapshot was taken paused
            self.channel.request("ping", wait=timeout, time=time.time())
        except (GuestLost, GuestTimeout) as exc:
            status = self._migration_status()
            self.machine.kill()
            raise BootError(f"restoring {state} failed ({exc}); migration status: {status}",
                            self.machine.argv, tail(self.paths.log, 10)) from exc
        self.boot_seconds = time.monotonic() - start
        self.machine.state = Runstate.READY

    def _wait_incoming(self, deadline: float) -> None:
        while True:
            status = self.machine.qmp("query-migrate").get("status")
            if status == "completed":
                return
            if status == "failed" or not self.machine.is_running():
                raise GuestLost(f"loading the saved state failed (status {status})")
            if time.monotonic() > deadline:
                raise GuestTimeout("loading the saved state took too long")
            time.sleep(0.02)

    def _migration_status(self) -> str:
        try:
            return str(self.machine.qmp("query-migrate").get("status"))
        except Exception as exc:
            return f"unknown ({exc})"

    # -- using ------------------------------------------------------------------------------

    def run(self, cmd: str | list[str], timeout: float = 60, check: bool = True,
            input: bytes | str = b"", env: dict[str, str] | None = None) -> Result:
        """Run `cmd` in the guest (a string goes through /bin/sh -c) and return its Result."""
        fields: dict[str, Any] = {"argv": cmd} if isinstance(cmd, list) else {"sh": cmd}
        data = input.encode() if isinstance(input, str) else input
        reply = self.channel.request("run", wait=timeout + 10, timeout=timeout, env=env or {},
                                     stdin=base64.b64encode(data).decode(), **fields)
        result = Result(cmd if isinstance(cmd, str) else shlex.join(cmd), reply["status"],
                        decode(reply["stdout"]), decode(reply["stderr"]), reply["duration"],
                        reply["timed_out"])
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def judge(self, spec: JudgeSpec | dict[str, Any], timeout: float, wait: float | None = None) -> JudgeAnswer | None:
        """The guest's judge's answer to `spec` (guest/judge.py), checked field by field, or None
        past `timeout` (the agent kills the judge then); GuestTimeout when the agent itself stays
        silent for `wait` seconds (default timeout + 30); GuestError, naming the field, when the
        answer breaks the protocol."""
        asked = spec if isinstance(spec, JudgeSpec) else JudgeSpec.from_json(spec)
        reply = self.channel.request("judge", wait=timeout + 30 if wait is None else wait, spec=asked.to_json(),
                                     timeout=timeout)
        if reply.get("timed_out") is True:
            return None
        try:
            return JudgeAnswer.from_json(reply.get("answer"), asked, where="answer")
        except ProtocolError as exc:
            raise GuestError(f"the guest's judge sent an answer the lab cannot take: {exc}") from exc

    def put(self, path: str, data: bytes | str | Path, mode: int = 0o644) -> None:
        """Write a file in the guest from bytes, text, or a host file."""
        raw = data.read_bytes() if isinstance(data, Path) else data.encode() if isinstance(data, str) else data
        self.channel.request("put", wait=60, path=path, mode=mode, data=base64.b64encode(raw).decode())

    def put_tree(self, directory: str, files: dict[str, bytes], mode: int = 0o644) -> None:
        """Write many files under `directory` in one round trip (a tar unpacked in the guest)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
        archive = f"/run/fuselab-agent/tree-{time.monotonic_ns()}.tar"
        self.put(archive, buf.getvalue())
        self.run(f"mkdir -p {shlex.quote(directory)} && tar -xf {archive} -C {shlex.quote(directory)} "
                 f"--no-same-owner && rm -f {archive}")

    def get(self, path: str) -> bytes:
        return base64.b64decode(self.channel.request("get", wait=60, path=path)["data"])

    def ping(self, timeout: float = 5.0) -> bool:
        try:
            self.channel.request("ping", wait=timeout)
            return True
        except (GuestLost, GuestTimeout):
            return False

    def console_text(self, since: int = 0) -> str:
        try:
            with open(self.paths.console, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def console_offset(self) -> int:
        try:
            return self.paths.console.stat().st_size
        except OSError:
            return 0

    def splats(self, since: int = 0, suppress: tuple[str, ...] = ()) -> list[splats.Splat]:
        return splats.scan(self.console_text(since), suppress)

    # -- disks ------------------------------------------------------------------------------

    def attach_disk(self, host_path: Path, fmt: str = "raw", name: str | None = None,
                    shared: bool = False, block_size: int | None = None, timeout: float = 30) -> Disk:
        """Hot-plug `host_path` as a virtio disk and return it once the guest sees it.
        `block_size` sets the logical and physical sector size the guest sees (512, 4096)."""
        name = name or f"disk{next(self._disk_numbers)}"
        self._plug(host_path, fmt, name, shared, block_size)
        return self._seen(host_path, name, timeout)

    def attach_disks(self, host_paths: list[Path], fmt: str = "raw", timeout: float = 30) -> list[Disk]:
        """Hot-plug several disks at once (the guest probes them together)."""
        names = [f"disk{next(self._disk_numbers)}" for _ in host_paths]
        for path, name in zip(host_paths, names, strict=True):
            self._plug(path, fmt, name, False, None)
        return [self._seen(path, name, timeout) for path, name in zip(host_paths, names, strict=True)]

    def attach_partitions(self, host_path: Path, count: int, timeout: float = 30) -> list[Disk]:
        """Hot-plug `host_path` (a raw disk file with a partition table, partitions.write_disk) and
        return its first `count` partitions, once the guest sees them, as disks of their own."""
        return self.partitions_of(self.plug_partitioned(host_path), count, timeout)

    def plug_partitioned(self, host_path: Path) -> Disk:
        """Hot-plug `host_path` without waiting for the guest to see it (see partitions_of)."""
        disk = Disk(f"disk{next(self._disk_numbers)}", host_path, "", 0)
        self._plug(host_path, "raw", disk.name, False, None)
        self.disks.append(disk)
        return disk

    def partitions_of(self, disk: Disk, count: int, timeout: float = 30) -> list[Disk]:
        """The first `count` partitions of the plugged `disk`, once the guest sees them."""
        reply = self.channel.request("disk", wait=timeout + 5, serial=f"fuselab-{disk.name}", timeout=timeout,
                                     partitions=count)
        disk.path, disk.size = reply["path"], int(reply["size"])
        return [Disk(f"{disk.name}p{i + 1}", disk.host_path, part["path"], int(part["size"]))
                for i, part in enumerate(reply["partitions"][:count])]

    def _plug(self, host_path: Path, fmt: str, name: str, shared: bool, block_size: int | None) -> None:
        file_opts: dict[str, Any] = {"driver": "file", "filename": str(host_path)}
        if shared:
            file_opts["locking"] = "off"
        self.machine.qmp("blockdev-add", driver=fmt, **{"node-name": name}, file=file_opts,
                         cache={"direct": shared, "no-flush": False})
        device: dict[str, Any] = {"driver": "virtio-blk-pci", "drive": name, "id": f"{name}-dev",
                                  "serial": f"fuselab-{name}"}
        if shared:
            device["share-rw"] = True
        if block_size:
            device["logical_block_size"] = device["physical_block_size"] = block_size
        try:
            self.machine.qmp("device_add", **device)
        except ExecuteError as exc:  # the root bus is full: the bridge has 32 more slots
            if "no slot" not in str(exc):
                raise
            self.machine.qmp("device_add", bus=DISK_BRIDGE, **device)

    def _seen(self, host_path: Path, name: str, timeout: float) -> Disk:
        reply = self.channel.request("disk", wait=timeout + 5, serial=f"fuselab-{name}", timeout=timeout)
        size = reply.get("size") or int(self.run(["blockdev", "--getsize64", reply["path"]]).stdout)
        disk = Disk(name, host_path, reply["path"], int(size))
        self.disks.append(disk)
        return disk

    def unplug(self, disk: Disk) -> None:
        """Hot-unplug a disk plugged by attach_*/plug_partitioned (not one of its partitions): QMP
        device_del now; its block node goes (blockdev-del) once the guest has let the device go,
        in reap_unplugged, which this calls.  Its PCI slot counts in `disks` until then."""
        if disk not in self.disks or disk in self.unplugging:
            return
        try:
            self.machine.qmp("device_del", id=f"{disk.name}-dev")
        except (QMPError, MachineError, OSError, EOFError) as exc:  # gone already, or QEMU is
            log.debug("device_del %s: %s", disk.name, exc)
            return
        self.unplugging.append(disk)
        self.reap_unplugged()

    def reap_unplugged(self) -> list[Disk]:
        """The disks whose device the guest has released: their block nodes deleted, out of `disks`."""
        gone: list[Disk] = []
        for disk in list(self.unplugging):
            try:
                self.machine.qmp("blockdev-del", **{"node-name": disk.name})
            except ExecuteError:  # the guest has not finished ejecting the device yet
                continue
            except (QMPError, MachineError, OSError, EOFError):
                return gone
            self.unplugging.remove(disk)
            self.disks.remove(disk)
            gone.append(disk)
        return gone

    # -- stopping ---------------------------------------------------------------------------

    def kill(self) -> None:
        """Pull the plug (SIGKILL to QEMU), as a crash of the whole machine would."""
        self.killed = True
        self.machine.kill()
        self.channel.close()

    def shutdown(self) -> None:
        """Stop QEMU (soft, then hard); safe to call more than once."""
        self.channel.close()
        self.machine.shutdown(timeout=1.0)
        shutil.rmtree(self.sockets, ignore_errors=True)
