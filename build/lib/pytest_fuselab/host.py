"""The host: what it needs installed (`fuselab setup`) and what it can do (`fuselab doctor`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from pytest_fuselab.vm import accel
from pytest_fuselab.build import image
from pytest_fuselab.build import recipe
from pytest_fuselab.cache import cache_dir
from pytest_fuselab.errors import FuselabError, HostError
from pytest_fuselab.vm.qemu import qemu_version

APT_PACKAGES = ["qemu-system-x86", "qemu-utils", "debootstrap", "busybox-static", "cpio",
                "e2fsprogs", "openssh-client", "zstd", "xz-utils", "ca-certificates", "kmod",
                "gcc", "libc6-dev",  # C reproducers are compiled static on the host (libc6-dev has libc.a)
                "openssh-server", "iproute2"]  # sshd and network namespaces: the test hosts of `fuselab hosts`
COMMANDS = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "debootstrap": "debootstrap",
            "cpio": "cpio", "mke2fs": "e2fsprogs", "ssh": "openssh-client",
            "depmod": "kmod", "gcc": "gcc"}
STATIC_LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.a")


def missing_commands() -> dict[str, str]:
    found = {cmd: pkg for cmd, pkg in COMMANDS.items() if shutil.which(cmd) is None}
    if not Path("/bin/busybox").exists() and not Path("/usr/bin/busybox").exists():
        found["busybox"] = "busybox-static"
    if not STATIC_LIBC.exists():
        found[str(STATIC_LIBC)] = "libc6-dev"
    return found


def apt_command() -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]


def setup(say: object = print) -> int:
    """Install the host packages as root; otherwise print the command to run."""
    printer = say if callable(say) else print
    command = " ".join(apt_command())
    if os.geteuid() != 0:
        printer(f"not root: run this as root to install what fuselab needs:\n  sudo apt-get update && sudo {command}")
        return 0 if not missing_commands() else 1
    if not shutil.which("apt-get"):
        raise HostError(f"apt-get not found: install the equivalents of {', '.join(APT_PACKAGES)} by hand")
    printer(f"installing: {' '.join(APT_PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"], [*apt_command(), "-qq"]):
        proc = subprocess.run(argv, env=env)
        if proc.returncode != 0:
            raise HostError(f"`{' '.join(argv)}` failed with status {proc.returncode}")
    still = missing_commands()
    if still:
        raise HostError(f"still missing after apt-get: {', '.join(still)}")
    printer("host ready")
    return 0


def probe_kernel() -> Path | None:
    """A kernel to probe KVM with: the default image's, else the host's own."""
    try:
        built = image.latest_built(recipe.load("sid"))
        if built is not None:
            return built.kernel
    except FuselabError:
        pass
    for candidate in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        if os.access(candidate, os.R_OK):
            return candidate
    return None


def doctor_lines(accel_setting: str = "auto") -> list[tuple[str, str]]:
    """(topic, finding) pairs describing this host for the lab."""
    rows: list[tuple[str, str]] = []
    try:
        rows.append(("qemu", f"qemu-system-x86_64 {qemu_version()}"))
    except (HostError, subprocess.CalledProcessError) as exc:
        rows.append(("qemu", f"MISSING: {exc}"))
    missing = missing_commands()
    rows.append(("host tools", "all present" if not missing else
                 "MISSING: " + ", ".join(f"{c} (package {p})" for c, p in missing.items()) + " — run `fuselab setup`"))
    rows.append(("/dev/kvm", accel.kvm_device_problem() or "present and answers the KVM API"))
    kernel = probe_kernel()
    if kernel is None:
        rows.append(("acceleration", "not probed: no kernel to probe with; build the image (`fuselab image build`)"))
    elif "qemu-system-x86_64" not in missing:
        choice = accel.choose(accel_setting, kernel, fresh=True)
        rows.append(("acceleration", f"{choice.accel.upper()} — {choice.reason} (probe kernel {kernel})"))
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    rows.append(("cache", f"{cache} ({free / 2**30:.1f} GiB free)" + ("  LOW: images need ~3 GiB" if free < 3 * 2**30 else "")))
    built = image.built_images()
    rows.append(("images", ", ".join(p.directory.name for p in built) or "none built yet (`fuselab image build`)"))
    rows.append(("user", "root" if os.geteuid() == 0 else "not root: image builds need sudo"))
    return rows
