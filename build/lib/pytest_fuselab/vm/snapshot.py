"""Booted-guest snapshots, cached across runs: boot once, then every guest is a restore.

A snapshot is the root overlay of a booted guest (frozen, read-only) plus QEMU's saved
machine state.  It is keyed by the image, the kernel, QEMU's version and the machine spec,
and built once under a file lock however many workers ask for it at the same time.  Its files
are checked against digests recorded when it was saved; one that fails them, or that an older lab
saved without digests and that fails to restore, is set aside and made again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable

from qemu.qmp.error import QMPError

from pytest_fuselab.cache import build_once, cache_dir, digest_of, digest_problem, require_space
from pytest_fuselab.errors import BootError, FuselabError, GuestError
from pytest_fuselab.vm.guest import Guest
from pytest_fuselab.vm import qemu
from pytest_fuselab.vm.qemu import MachineSpec, guest_cmdline, qemu_version
from pytest_fuselab.sparse import file_sha256

Progress = Callable[[str], None]
FORMAT = 3  # bump when settle() changes what a snapshot holds


@dataclass(frozen=True)
class Snapshot:
    """A saved booted guest in the cache: frozen root overlay, machine state, meta.json."""

    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root.qcow2"

    @property
    def state(self) -> Path:
        return self.directory / "state.bin"

    @property
    def meta_path(self) -> Path:
        return self.directory / "meta.json"

    def meta(self) -> dict[str, object]:
        return json.loads(self.meta_path.read_text())  # type: ignore[no-any-return]

    def problem(self) -> str | None:
        """Why this snapshot cannot be used (missing, wrong size, digest mismatch), or None."""
        try:
            meta = self.meta()
        except (OSError, ValueError) as exc:
            return f"meta.json unreadable ({exc})"
        for path, key in ((self.root, "root_size"), (self.state, "state_size")):
            if not path.exists() or path.stat().st_size != meta.get(key):
                return f"{path.name} is missing or has the wrong size"
        return digest_problem(self.directory, meta.get("digests"))

    def record_digests(self) -> None:
        """Write the digests of root and state into meta.json (atomically)."""
        meta = {**self.meta(), "digests": {p.name: digest_of(p) for p in (self.root, self.state)}}
        tmp = self.meta_path.with_name(f"meta.json.{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(self.meta_path)


def snapshot_for(spec: MachineSpec, base: Path) -> Snapshot:
    data = {"format": FORMAT, "spec": {k: str(v) for k, v in asdict(spec).items() if v is not None},
            "cmdline": guest_cmdline(spec), "qemu": qemu_version(spec.qemu),
            "argv": qemu.build_argv(spec, qemu.RunPaths.in_dir(Path("/run"))),  # a state loads into the same machine
            "kernel": file_sha256(spec.kernel), "initrd": file_sha256(spec.initrd), "base": str(base),
            "base_mtime": base.stat().st_mtime_ns}
    if spec.modules is not None:  # a foreign kernel's modules disk (absent: keys stay as they were)
        data["modules"] = file_sha256(spec.modules)
    key = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    return Snapshot(cache_dir() / "snapshots" / key)


def settle(guest: Guest) -> None:
    """Let boot finish so every restore starts from the same quiet state."""
    guest.run("systemctl is-system-running --wait || true", timeout=120, check=False)
    # systemd calls boot done once udev's coldplug events are queued, not handled: under TCG udevd
    # then works through them for about 10 s, in every guest restored from an unsettled snapshot
    guest.run("udevadm settle --timeout=120", timeout=130, check=False)
    # page in what every sandboxed FUSE server start needs (systemd's executor, python, fuse2fs)
    guest.run("python3 -S -m pytest_fuselab.guest.fuseserver warm; fuse2fs -V", timeout=120, check=False)
    guest.judge({"drivers": []}, timeout=120)  # the resident judge starts, so every restore has it
    guest.run("sync", timeout=60)


def save(guest: Guest, work: Path) -> None:
    """Pause the guest, save its state, and freeze its root overlay as the snapshot's disk, in `work`."""
    guest.machine.qmp("stop")
    guest.machine.qmp("migrate", uri=qemu.save_state_uri(work / "state.bin"))
    deadline = time.monotonic() + 120
    while (status := guest.machine.qmp("query-migrate").get("status")) not in ("completed", "failed"):
        if time.monotonic() > deadline:
            status = "timed out"
            break
        time.sleep(0.05)
    guest.shutdown()
    if status != "completed":
        raise BootError(f"saving the booted guest's state failed: migration {status}", guest.machine.argv)
    shutil.move(guest.paths.root, work / "root.qcow2")  # the run directory may be on another filesystem
    (work / "root.qcow2").chmod(0o444)
    meta = {"root_size": (work / "root.qcow2").stat().st_size, "state_size": (work / "state.bin").stat().st_size,
            "boot_seconds": round(guest.boot_seconds, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (work / "meta.json").write_text(json.dumps(meta, indent=1))
    Snapshot(work).record_digests()


def make(spec: MachineSpec, base: Path, rundir: Path, work: Path, progress: Progress, boot_timeout: float,
         watchdog: float) -> None:
    """Cold-boot a guest from `base`, let it settle and save it into `work`."""
    require_space(work.parent, (spec.memory_mb + 256) << 20, "the booted-guest snapshot")
    progress(f"cold boot ({spec.accel}, {spec.cpus} vCPUs, {spec.memory_mb} MiB) to make the snapshot")
    with Guest(spec, rundir) as guest:
        try:
            guest.boot(base, timeout=boot_timeout, watchdog=watchdog, progress=progress)
            settle(guest)
        except GuestError as exc:
            raise BootError(f"the first boot failed: {exc}", guest.machine.argv,
                            "console:\n" + guest.console_text()[-3000:]) from exc
        progress(f"guest up in {guest.boot_seconds:.1f} s; saving its state")
        save(guest, work)


def checked(snap: Snapshot, spec: MachineSpec, rundir: Path, progress: Progress) -> str | None:
    """snap.problem(); a snapshot saved without digests must first restore (then its digests are recorded)."""
    problem = snap.problem()
    if problem is not None or "digests" in snap.meta():
        return problem
    progress(f"snapshot {snap.directory.name} has no digests (an older lab saved it): checking that it restores")
    try:
        with Guest(spec, rundir) as guest:
            guest.restore(snap.root, snap.state)
            guest.run("true", timeout=60)
    except (FuselabError, QMPError, OSError, EOFError) as exc:  # QMP just disconnects when QEMU rejects a state
        return f"restoring it failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    snap.record_digests()
    return None


def ensure(spec: MachineSpec, base: Path, workdir: Path, progress: Progress, boot_timeout: float = 180,
           watchdog: float = 30) -> Snapshot:
    """Return the snapshot for `spec`, cold-booting and saving a guest once if there is none (or it is unusable)."""
    target = snapshot_for(spec, base)
    build_once(target.directory,
               lambda work: make(spec, base, workdir / "snapshot-boot", work, progress, boot_timeout, watchdog),
               problem=lambda path: checked(Snapshot(path), spec, workdir / "snapshot-check", progress),
               lock=target.directory.with_suffix(".lock"), what="the booted-guest snapshot", progress=progress)
    return target
