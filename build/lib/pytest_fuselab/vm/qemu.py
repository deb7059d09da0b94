"""QEMU command lines as data: small functions that each return a list of arguments."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from pytest_fuselab.errors import HostError, SettingError

AGENT_PORT = "org.fuselab.agent"
CMDLINE_MAX = 2048  # COMMAND_LINE_SIZE on x86

# Every guest boots with these; a short hung-task timeout turns a stuck task into a report.
BASE_CMDLINE = [
    "console=ttyS0,115200",
    "root=/dev/vda",
    "rw",
    "panic=-1",
    "sysrq_always_enabled",
    "sysctl.kernel.hung_task_timeout_secs=20",
    "sysctl.kernel.hung_task_panic=0",
    "systemd.show_status=0",
    "net.ifnames=0",
]


@dataclass(frozen=True)
class MachineSpec:
    """Everything that decides what a guest is; two equal specs can share a snapshot."""

    kernel: Path
    initrd: Path
    accel: str = "tcg"
    memory_mb: int = 1024
    cpus: int = 2
    machine: str = "pc"
    qemu: str = "qemu-system-x86_64"
    cmdline: tuple[str, ...] = field(default_factory=tuple)
    modules: Path | None = None  # a foreign kernel's modules disk (kernel.py), read-only

    def with_accel(self, accel: str) -> MachineSpec:
        return replace(self, accel=accel)


@dataclass(frozen=True)
class RunPaths:
    """Per-guest files of one run: sockets, console, logs."""

    root: Path  # writable qcow2 overlay
    console: Path
    qmp: Path
    agent: Path
    log: Path
    ssh_port: int | None = None

    @classmethod
    def in_dir(cls, directory: Path, ssh_port: int | None = None, sockets: Path | None = None) -> RunPaths:
        """Files in `directory`; sockets in `sockets` (socket paths must stay under 108 bytes)."""
        sockets = sockets or directory
        return cls(root=directory / "root.qcow2", console=directory / "console.log",
                   qmp=sockets / "qmp.sock", agent=sockets / "agent.sock",
                   log=directory / "qemu.log", ssh_port=ssh_port)


def kernel_cmdline(extra: tuple[str, ...] | list[str] = ()) -> str:
    line = " ".join([*BASE_CMDLINE, *extra])
    if len(line) >= CMDLINE_MAX:
        raise SettingError(f"kernel command line is {len(line)} bytes, over the limit of {CMDLINE_MAX}: {line[:200]}…")
    return line


def opt_path(path: Path | str) -> str:
    """`path` as a value inside a QEMU option string (`file=`, `path=`): its commas doubled."""
    # -kernel, -initrd and -append take their argument whole and need no escaping; -drive file=
    # gets absolute paths so that a colon in a relative one is not read as a protocol prefix.
    return str(path).replace(",", ",,")


def shell_path(path: Path | str) -> str:
    """`path` quoted for a shell string (QEMU runs `exec:` migration URIs with /bin/sh -c)."""
    return shlex.quote(str(path))


def save_state_uri(path: Path) -> str:
    """The QMP `migrate` URI that writes a guest's state to the file `path`."""
    return f"exec:cat > {shell_path(path)}"


def load_state_uri(path: Path) -> str:
    """The QMP `migrate-incoming` URI that reads a guest's state from the file `path`."""
    return f"exec:cat {shell_path(path)}"


# Under TCG, `rep movsb`/`rep stosb` run one byte per step: a guest CPU without ERMS makes the
# kernel (page clearing, copies to and from user space) and glibc copy by words and vectors
# instead (a fuse2fs mount, which zeroes its 32 MiB cache, took a quarter less CPU).
TCG_CPU = "max,erms=off"
# QEMU's TCG finds translated code by virtual address as well as physical: with user-space ASLR
# each new process maps its libraries elsewhere and all the code it runs is translated afresh
# (a million translation blocks for 8 images, against 220,000 without).  `norandmaps` under TCG
# only: where KVM works, guests keep ASLR.
TCG_CMDLINE = ("norandmaps",)


def accel_args(accel: str, cpus: int) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host", "-smp", str(cpus)]
    if accel == "tcg":
        return ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU, "-smp", str(cpus)]
    raise SettingError(f"acceleration {accel!r} is not one of kvm, tcg")


def guest_cmdline(spec: MachineSpec) -> str:
    """The kernel command line a guest of `spec` boots with."""
    return kernel_cmdline((*spec.cmdline, *(TCG_CMDLINE if spec.accel == "tcg" else ())))


def boot_args(spec: MachineSpec) -> list[str]:
    return ["-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", guest_cmdline(spec)]


def root_disk_args(overlay: Path) -> list[str]:
    return ["-drive", f"file={opt_path(overlay.absolute())},format=qcow2,if=none,id=root,node-name=root-fmt,discard=unmap",
            "-device", "virtio-blk-pci,drive=root,id=root-dev,serial=fuselab-root"]


def modules_disk_args(image: Path | None) -> list[str]:
    if image is None:
        return []
    return ["-drive", f"file={opt_path(image.absolute())},format=raw,if=none,id=modules,readonly=on",
            "-device", "virtio-blk-pci,drive=modules,id=modules-dev,serial=fuselab-modules"]


def console_args(path: Path) -> list[str]:
    return ["-chardev", f"file,id=console,path={opt_path(path)}", "-serial", "chardev:console"]


def agent_args(sock: Path) -> list[str]:
    return ["-device", "virtio-serial-pci,id=vser",
            "-chardev", f"socket,id=agent,path={opt_path(sock)},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}"]


def qmp_args(sock: Path) -> list[str]:
    return ["-qmp", f"unix:{opt_path(sock)},server=on,wait=off"]


def net_args(ssh_port: int | None) -> list[str]:
    """User networking with no route out; SSH forwarded on loopback only when asked for."""
    netdev = "user,id=net0,restrict=on"
    if ssh_port:
        netdev += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
    return ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,id=net0-dev"]


DISK_BRIDGE = "disks"  # a PCI bridge for hot-plugged disks once the root bus is full


def bridge_args() -> list[str]:
    """A PCI-PCI bridge with 32 more slots for hot-plugged disks (the root bus has about 25 free)."""
    return ["-device", f"pci-bridge,id={DISK_BRIDGE},chassis_nr=1"]


def rng_args() -> list[str]:
    return ["-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng0"]


def build_argv(spec: MachineSpec, paths: RunPaths, incoming: Path | None = None) -> list[str]:
    argv = [spec.qemu, "-name", "fuselab", "-machine", spec.machine, "-m", str(spec.memory_mb),
            *accel_args(spec.accel, spec.cpus), "-nodefaults", "-display", "none",
            "-no-reboot", "-no-user-config",
            *boot_args(spec), *root_disk_args(paths.root), *modules_disk_args(spec.modules), *console_args(paths.console),
            *agent_args(paths.agent), *qmp_args(paths.qmp), *net_args(paths.ssh_port), *rng_args(),
            *bridge_args()]
    if incoming is not None:
        argv += ["-incoming", "defer"]
    return argv


def find_qemu(binary: str = "qemu-system-x86_64") -> str:
    path = shutil.which(binary)
    if path is None:
        raise HostError(f"QEMU binary {binary!r} not found on PATH: run `fuselab setup` "
                        "(or apt-get install qemu-system-x86 qemu-utils)")
    return path


def qemu_version(binary: str = "qemu-system-x86_64") -> str:
    out = subprocess.run([find_qemu(binary), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else out.strip().splitlines()[0]
