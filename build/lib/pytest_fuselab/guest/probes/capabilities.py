"""Guest-side probe of the FUSE stack (stdlib only, run as root): prints one JSON object.

Run as `python3 -S -m pytest_fuselab.guest.probes.capabilities`; the host reads the object into
`pytest_fuselab.capabilities.Capabilities` (one key per field).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import re
import shutil
import socket
import stat
import subprocess
from typing import TypedDict

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROGRAMS = ("fusermount3", "fuservicemount3", "mount.fuse3", "fuse2fs", "fuse4fs")
UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system")
PC_GLOBS = ("/usr/lib/*/pkgconfig/fuse3.pc", "/usr/*/pkgconfig/fuse3.pc", "/usr/local/lib/*/pkgconfig/fuse3.pc",
            "/usr/local/*/pkgconfig/fuse3.pc")
SO_PASSRIGHTS = 83  # asm-generic/socket.h, for Pythons that do not name it
SYS_FSOPEN, SYS_FSCONFIG = 430, 431  # x86_64
FSOPEN_CLOEXEC, FSCONFIG_SET_STRING = 1, 1


class Program(TypedDict):
    """A FUSE program found on PATH."""

    path: str
    setuid_root: bool
    mode: str  # oct(), e.g. 0o4755


class SocketUnit(TypedDict):
    """A socket unit listening on SOCK_SEQPACKET sockets (the mount service's)."""

    path: str
    listen: list[str]
    enabled: str  # systemctl is-enabled
    active: str  # systemctl is-active
    mode: str  # its effective SocketMode=
    service: bool  # whether NAME@.service lies next to it


def cmd(*argv: str) -> str:
    """A command's stripped stdout; empty when it cannot run."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def programs() -> dict[str, Program]:
    """The FUSE programs on PATH: where, whether setuid root, and their mode."""
    found: dict[str, Program] = {}
    for name in PROGRAMS:
        where = shutil.which(name, path=PATH)
        if where:
            st = os.stat(where)
            found[name] = {"path": where, "setuid_root": bool(st.st_mode & stat.S_ISUID) and st.st_uid == 0,
                           "mode": oct(stat.S_IMODE(st.st_mode))}
    return found


def libfuse_libraries() -> list[str]:
    """libfuse3 shared libraries the dynamic linker knows."""
    return sorted(set(re.findall(r"(\S*/libfuse3\.so\.\d+)\b", cmd("ldconfig", "-p"))))


def libfuse_version(libraries: list[str]) -> str | None:
    """fuse_pkgversion() of the newest library that loads."""
    for lib in reversed(libraries):
        try:
            function = ctypes.CDLL(lib).fuse_pkgversion
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_char_p
        version = function()
        if isinstance(version, bytes):
            return version.decode()
    return None


def fuse3_pc() -> dict[str, str]:
    """The variables of the first fuse3.pc found, and its path."""
    for pattern in PC_GLOBS:
        for path in glob.glob(pattern):
            pc: dict[str, str] = {}
            with open(path) as f:
                for line in f:
                    match = re.match(r"^([A-Za-z_][\w.]*)=(.*)$", line.strip())
                    if match:
                        pc[match.group(1)] = match.group(2)
            pc["path"] = path
            return pc
    return {}


def socket_units() -> dict[str, SocketUnit]:
    """Socket units listening on SOCK_SEQPACKET sockets (the mount service's), first directory wins."""
    units: dict[str, SocketUnit] = {}
    for directory in UNIT_DIRS:
        for path in sorted(glob.glob(directory + "/*.socket")):
            with open(path, errors="replace") as f:
                listen = re.findall(r"^\s*ListenSequentialPacket\s*=\s*(\S+)", f.read(), re.M)
            name = os.path.basename(path)
            if listen and name not in units:
                units[name] = {"path": path, "listen": listen, "enabled": cmd("systemctl", "is-enabled", name),
                               "active": cmd("systemctl", "is-active", name),
                               "mode": cmd("systemctl", "show", "-P", "SocketMode", name),
                               "service": os.path.exists(os.path.join(directory, name[:-len(".socket")] + "@.service"))}
    return units


def fuse_conf() -> dict[str, str | bool]:
    """/etc/fuse.conf's options (True for a bare option)."""
    conf: dict[str, str | bool] = {}
    try:
        with open("/etc/fuse.conf") as f:
            for raw in f:
                line = raw.split("#", 1)[0].strip()
                if line:
                    key, _, value = line.partition("=")
                    conf[key.strip()] = value.strip() or True
    except OSError:
        pass
    return conf


def so_passrights() -> str:
    """Whether the kernel knows SO_PASSRIGHTS: `yes` or `no: ERRNO`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_PASSRIGHTS", SO_PASSRIGHTS), 0)
    except OSError as exc:
        return "no: " + errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "yes"


def fsopen_fuse() -> tuple[str, str]:
    """Whether fsopen("fuse") works, and whether it takes a `subtype` parameter."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = int(libc.syscall(SYS_FSOPEN, b"fuse", FSOPEN_CLOEXEC))
    if fd < 0:
        return "no: " + errno.errorcode.get(ctypes.get_errno(), "?"), "no: fsopen(fuse) failed"
    try:
        done = int(libc.syscall(SYS_FSCONFIG, fd, FSCONFIG_SET_STRING, b"subtype", b"fuselabprobe", 0))
        return "yes", "yes" if done == 0 else "no: " + errno.errorcode.get(ctypes.get_errno(), "?")
    finally:
        os.close(fd)


def filesystems() -> list[str]:
    """The filesystem types the kernel knows now."""
    with open("/proc/filesystems") as f:
        return sorted(line.split()[-1] for line in f if line.strip())


def probe() -> dict[str, object]:
    """Everything the host's Capabilities reads."""
    libraries = libfuse_libraries()
    opened, subtype = fsopen_fuse()
    return {"kernel": os.uname().release, "programs": programs(), "libfuse_libraries": libraries,
            "libfuse_version": libfuse_version(libraries), "fuse3_pc": fuse3_pc(), "socket_units": socket_units(),
            "fuse_conf": fuse_conf(), "so_passrights": so_passrights(), "fsopen_fuse": opened,
            "fsopen_fuse_subtype": subtype, "filesystems": filesystems()}


def main() -> None:
    """Print the probe's findings as one JSON object."""
    print(json.dumps(probe()))


if __name__ == "__main__":
    main()
