"""Choose KVM or TCG by booting a real probe guest under KVM with a deadline."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pytest_fuselab.build import initramfs
from pytest_fuselab.cache import cache_dir
from pytest_fuselab.errors import HostError
from pytest_fuselab.vm.machine import _die_with_parent
from pytest_fuselab.vm.qemu import qemu_version
from pytest_fuselab.workdirs import work_dir

KVM_GET_API_VERSION = 0xAE00
PROBE_MARK = b"fuselab-probe-ok"


@dataclass(frozen=True)
class Choice:
    accel: str  # "kvm" or "tcg"
    reason: str


def kvm_device_problem(dev: str = "/dev/kvm") -> str | None:
    """Why /dev/kvm cannot be used at all, or None."""
    if not os.path.exists(dev):
        return f"{dev} does not exist (no KVM module, or no nested virtualisation)"
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {dev}: {exc.strerror} (add yourself to the kvm group)"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return f"KVM_GET_API_VERSION on {dev} failed: {exc.strerror}"
    finally:
        os.close(fd)
    return None if version == 12 else f"{dev} answers KVM API version {version}, expected 12"


def probe_initramfs(directory: Path) -> Path:
    """A tiny initramfs whose /init prints the probe mark and powers off."""
    tree = directory / "tree"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2(initramfs.find_busybox(), tree / "bin" / "busybox")
    (tree / "init").write_text(f"#!/bin/busybox sh\necho {PROBE_MARK.decode()}\n/bin/busybox poweroff -f\n")
    (tree / "init").chmod(0o755)
    out = directory / "probe.cpio"
    listing = "\n".join(["bin", "bin/busybox", "init"]).encode()
    with open(out, "wb") as f:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"], cwd=tree, input=listing,
                       stdout=f, check=True)
    return out


def probe_kvm(kernel: Path, qemu: str, deadline: float = 20.0) -> str | None:
    """Boot `kernel` under KVM to a tiny initramfs; return why it failed, or None if it booted."""
    problem = kvm_device_problem()
    if problem:
        return problem
    with work_dir("fuselab-probe-") as tmp:
        initrd = probe_initramfs(Path(tmp))
        argv = [qemu, "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "256", "-nodefaults",
                "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
                "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1 quiet"]
        return _run_probe(argv, deadline, Path(tmp) / "probe.out")


def _run_probe(argv: list[str], deadline: float, output: Path) -> str | None:
    with open(output, "w+b") as out:  # in the work directory: its space and errors are the lab's
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
        start = time.monotonic()
        try:
            while time.monotonic() - start < deadline:
                out.seek(0)
                text = out.read()
                if PROBE_MARK in text:
                    return None
                if proc.poll() is not None:
                    last = text.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                    return f"a KVM probe guest failed (QEMU status {proc.returncode}: {last[0]})"
                time.sleep(0.1)
            return f"a KVM probe guest did not reach its initramfs within {deadline:.0f} s"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()


def _probe_key(kernel: Path, qemu: str) -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    stat = kernel.stat()
    return f"{boot_id}:{qemu_version(qemu)}:{kernel}:{stat.st_size}:{stat.st_mtime_ns}"


def choose(setting: str, kernel: Path, qemu: str = "qemu-system-x86_64",
           fresh: bool = False) -> Choice:
    """Resolve `auto|kvm|tcg` into an accelerator, with the reason for the choice."""
    if setting == "tcg":
        return Choice("tcg", "TCG asked for (accel=tcg)")
    record = cache_dir() / "accel-probe.json"
    key = _probe_key(kernel, qemu)
    cached: dict[str, str | None] = {}
    if record.exists() and not fresh:
        try:
            cached = json.loads(record.read_text())
        except ValueError:
            cached = {}
    if cached.get("key") == key:
        problem = cached.get("problem")
    else:
        problem = probe_kvm(kernel, qemu)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"key": key, "problem": problem}))
    if problem is None:
        return Choice("kvm", "KVM probe guest booted")
    if setting == "kvm":
        raise HostError(f"accel=kvm was asked for, but KVM does not work here: {problem}")
    return Choice("tcg", f"KVM rejected: {problem}; using TCG")
