"""Booted-guest snapshots, cached across runs: boot once, then every guest is a restore.

A snapshot is the root overlay of a booted guest (frozen, read-only) plus QEMU's saved
machine state.  It is keyed by the image, the kernel, QEMU's version and the machine spec,
and built once under a file lock however many workers ask for it at the same time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable

from pytest_fuselab.cache import cache_dir, file_lock, require_space
from pytest_fuselab.errors import BootError, GuestError
from pytest_fuselab.vm.guest import Guest
from pytest_fuselab.vm import qemu
from pytest_fuselab.vm.qemu import MachineSpec, guest_cmdline, qemu_version
from pytest_fuselab.sparse import file_sha256

Progress = Callable[[str], None]
FORMAT = 3  # bump when settle() changes what a snapshot holds


@dataclass(frozen=True)
class Snapshot:
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
        try:
            meta = self.meta()
        except (OSError, ValueError) as exc:
            return f"meta.json unreadable ({exc})"
        for path, key in ((self.root, "root_size"), (self.state, "state_size")):
            if not path.exists() or path.stat().st_size != meta.get(key):
                return f"{path.name} is missing or has the wrong size"
        return None


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


def save(guest: Guest, target: Snapshot) -> None:
    """Pause the guest, save its state, and freeze its root overlay as the snapshot's disk."""
    tmp = target.directory.with_name(target.directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    guest.machine.qmp("stop")
    guest.machine.qmp("migrate", uri=f"exec:cat > {tmp / 'state.bin'}")
    deadline = time.monotonic() + 120
    while (status := guest.machine.qmp("query-migrate").get("status")) not in ("completed", "failed"):
        if time.monotonic() > deadline:
            status = "timed out"
            break
        time.sleep(0.05)
    guest.shutdown()
    if status != "completed":
        raise BootError(f"saving the booted guest's state failed: migration {status}", guest.machine.argv)
    shutil.move(guest.paths.root, tmp / "root.qcow2")
    (tmp / "root.qcow2").chmod(0o444)
    meta = {"root_size": (tmp / "root.qcow2").stat().st_size, "state_size": (tmp / "state.bin").stat().st_size,
            "boot_seconds": round(guest.boot_seconds, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(target.directory, ignore_errors=True)
    tmp.rename(target.directory)


def ensure(spec: MachineSpec, base: Path, workdir: Path, progress: Progress, boot_timeout: float = 180,
           watchdog: float = 30) -> Snapshot:
    """Return the snapshot for `spec`, cold-booting and saving a guest once if there is none."""
    target = snapshot_for(spec, base)
    if target.problem() is None:
        return target
    with file_lock(target.directory.with_suffix(".lock"), "the booted-guest snapshot", progress):
        problem = target.problem()
        if problem is None:
            return target
        if target.directory.exists():
            progress(f"cached snapshot {target.directory} is unusable ({problem}): making it again")
        require_space(target.directory.parent, (spec.memory_mb + 256) << 20, "the booted-guest snapshot")
        progress(f"cold boot ({spec.accel}, {spec.cpus} vCPUs, {spec.memory_mb} MiB) to make the snapshot")
        with Guest(spec, workdir / "snapshot-boot") as guest:
            try:
                guest.boot(base, timeout=boot_timeout, watchdog=watchdog, progress=progress)
                settle(guest)
            except GuestError as exc:
                raise BootError(f"the first boot failed: {exc}", guest.machine.argv,
                                "console:\n" + guest.console_text()[-3000:]) from exc
            progress(f"guest up in {guest.boot_seconds:.1f} s; saving its state")
            save(guest, target)
        return target
