"""Filesystem drivers a scenario can mount a disk with, inside a guest: the kernel's (any
filesystem of filesystems.py) and FUSE servers (ext2/3/4 only)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from pytest_fuselab.errors import CommandFailed, GuestError
from pytest_fuselab.guest.protocol import DriverSpec, ServerFate
from pytest_fuselab.judge.filesystems import FILESYSTEMS, lookup
from pytest_fuselab.vm.channel import Result
from pytest_fuselab.vm.guest import Guest

USER = "fuselab"  # the unprivileged account every image has
FUSESERVER = "python3 -S -m pytest_fuselab.guest.fuseserver"  # in every guest (guest/fuseserver.py)
SERVERS = "/run/fuselab/servers"  # where each FUSE server's fate is written, by mountpoint


@dataclass(frozen=True)
class Driver:
    """How to mount, check and unmount with one driver.

    `user` runs the FUSE server as that account (mounting through setuid fusermount3);
    `sandboxed` mounts as root and hands the connection to fuse2fs running in a transient
    systemd unit sandboxed like fuse4fs@.service (see guest/fuseserver.py); `service` mounts
    through libfuse's mount service (fuservicemount3 and the stack's socket-activated fuse4fs@).
    The lab's own FUSE servers run under a keeper that records their fate: exit status, signal,
    core dump.  `needs` names the capability (capabilities.py) the guest's stack must have."""

    name: str
    fstype: str  # what findmnt reports once mounted
    user: str | None = None
    sandboxed: bool = False
    service: bool = False
    server: str = "fuse2fs"  # the FUSE server's process name
    needs: str = ""

    @property
    def fuse(self) -> bool:
        return self.fstype.startswith("fuse")

    def wrap(self, command: str) -> str:
        """`command` as this driver's user would run it."""
        if self.user is None:
            return command
        return f"runuser -u {self.user} -- sh -c {shlex.quote(command)}"

    def prepare_command(self, mountpoint: str) -> str:
        """Run as root before mounting: the mountpoint, owned by the driver's user."""
        return (f"mkdir -p {mountpoint} && install -d -m 1777 {SERVERS} && rm -f {fate_path(mountpoint)}*"
                + (f" && chown {self.user}: {mountpoint}" if self.user else ""))

    @property
    def kept(self) -> bool:
        """The lab starts this driver's FUSE server under a keeper that records its fate."""
        return self.fuse and not self.service

    def server_argv(self, device: str, mountpoint: str, options: str = "") -> list[str]:
        """The FUSE server's command line, for a driver whose server the lab starts itself."""
        opts = ",".join(o for o in ("fakeroot" if self.user else "", options) if o)
        return ["fuse2fs", "-f", device, mountpoint] + (["-o", opts] if opts else [])

    def mount_command(self, device: str, mountpoint: str, options: str = "") -> str:
        if not self.fuse:
            return f"mount -t ext4{f' -o {options}' if options else ''} {device} {mountpoint}"
        if self.service:
            return f"fuservicemount3 {device} {mountpoint} -t ext4" + (f" -o {options}" if options else "")
        fate = fate_path(mountpoint)
        if self.sandboxed:
            return f"{FUSESERVER} sandbox --fate {fate} {device} {mountpoint}" + (f" -o {options}" if options else "")
        return (f"{FUSESERVER} start --fate {fate} --mountpoint {mountpoint} -- "
                + shlex.join(self.server_argv(device, mountpoint, options)))

    def _umount(self, mountpoint: str) -> str:
        umount = f"fusermount3 -u {mountpoint}" if self.user else f"umount {mountpoint}"
        if self.service:  # the instance belongs to systemd: wait for its process to go
            return (f"{umount} && (for i in $(seq 600); do pgrep -x {self.server} >/dev/null || exit 0; "
                    f"sleep 0.05; done; echo '{self.server} still runs 30 s after the unmount' >&2; exit 1)")
        return umount

    def unmount_command(self, mountpoint: str) -> str:
        """Unmount, and for a FUSE driver wait until its server has exited (and flushed)."""
        if self.kept:
            return f"{self._umount(mountpoint)} && {FUSESERVER} wait --fate {fate_path(mountpoint)}"
        return self._umount(mountpoint)

    def judge_spec(self, device: str, mountpoint: str, options: str = "", fstype: str = "") -> DriverSpec:
        """What the guest's judge (guest/judge.py) needs to run this driver on `device`, an image
        of `fstype` ("" or ext*: ext4; other types for the kernel driver only, see filesystems.py)."""
        fs = lookup("" if self.fuse else fstype) or FILESYSTEMS["ext4"]
        fate = fate_path(mountpoint) if self.kept else None
        if self.sandboxed:
            mount: list[str] = ["sandbox", fate_path(mountpoint), device, mountpoint, options]
        elif self.kept:
            mount = ["start", fate_path(mountpoint), mountpoint, *self.server_argv(device, mountpoint, options)]
        elif self.service:
            mount = ["sh", self.mount_command(device, mountpoint, options)]
        else:  # the kernel's driver: the mount command itself, no shell, no mount.TYPE helper (-i)
            options = fs.mount_options(options)
            mount = ["exec", "mount", "-i", "-t", fs.name, *(["-o", options] if options else []), device, mountpoint]
        unmount: str | list[str] = self._umount(mountpoint)  # a shell command, or an argv the judge runs
        if not self.service:
            unmount = ["fusermount3", "-u", mountpoint] if self.user else ["umount", mountpoint]
        return DriverSpec(name=self.name, device=device, mountpoint=mountpoint, user=self.user, mount=mount,
                          unmount=unmount, fate=fate, fstype=fs.name, readonly=fs.readonly, checker=list(fs.checker),
                          units=f"{self.server}@*" if self.service else None)  # systemd's instances: their fate

    def server_log(self, guest: Guest, mountpoint: str, lines: int = 40) -> str:
        """What the FUSE server said (to explain a refusal), from wherever this driver's server writes."""
        if self.service:  # fuse4fs@ writes to /dev/ttyprintk: the kernel log, lines marked [U]
            command = f"dmesg | grep -F '[U]' | tail -n {lines}"
        elif self.fuse:  # sandboxed too: systemd-run --pipe writes there
            command = f"tail -n {lines} {fate_path(mountpoint)}.log"
        else:
            command = f"dmesg | tail -n {lines}"
        return guest.run(command, check=False).stdout

    def try_mount(self, guest: Guest, device: str, mountpoint: str, timeout: float = 120) -> Result:
        """Attempt a mount and return what happened, refused or not."""
        guest.run(self.prepare_command(mountpoint))
        return guest.run(self.wrap(self.mount_command(device, mountpoint)), timeout=timeout, check=False)

    def mount(self, guest: Guest, device: str, mountpoint: str, timeout: float = 120) -> Result:
        """Mount, and make sure this driver really is what got mounted."""
        result = self.try_mount(guest, device, mountpoint, timeout)
        if not result.ok:
            raise CommandFailed(result)
        seen = mounted(guest, mountpoint)
        if seen != self.fstype:
            raise CommandFailed(Result(f"findmnt {mountpoint}", 1, seen,
                                       f"expected a {self.fstype} mount from driver {self.name}", 0.0))
        return result

    def unmount(self, guest: Guest, mountpoint: str, timeout: float = 60) -> Result:
        return guest.run(self.wrap(self.unmount_command(mountpoint)), timeout=timeout)


DRIVERS = {
    "kernel": Driver("kernel", "ext4"),
    "fuse2fs": Driver("fuse2fs", "fuse.ext4"),
    "fuse2fs-user": Driver("fuse2fs-user", "fuse.ext4", user=USER),
    "fuse2fs-sandbox": Driver("fuse2fs-sandbox", "fuse.ext4", sandboxed=True),
    "fuse4fs-service": Driver("fuse4fs-service", "fuse.ext4", service=True, server="fuse4fs",
                              needs="fuse4fs-service"),
}

FUSE_DRIVERS = [name for name, driver in DRIVERS.items() if driver.fuse]
KEPT_DRIVERS = [name for name, driver in DRIVERS.items() if driver.kept]  # fates known


def fate_path(mountpoint: str) -> str:
    """Where the keeper of the FUSE server mounted at `mountpoint` writes how it ended."""
    return f"{SERVERS}/{mountpoint.strip('/').replace('/', '-') or 'root'}.json"


def server_fate(guest: Guest, mountpoint: str) -> str:
    """How the FUSE server of `mountpoint` ended ("exit status 0", "killed by SIGSEGV (core
    dumped)"), or "" while it still runs; GuestError when its keeper's record is not one."""
    path = fate_path(mountpoint)
    r = guest.run(f"cat {path}", check=False)
    if not r.ok:
        return ""
    try:
        return ServerFate.from_json(json.loads(r.stdout)).text()
    except ValueError as exc:  # not JSON, or not a fate (protocol.ProtocolError)
        raise GuestError(f"the fate of the FUSE server at {mountpoint} ({path}) is not one: {exc}") from exc


def mounted(guest: Guest, mountpoint: str) -> str:
    """The filesystem type mounted at `mountpoint` in the guest, or "" when nothing is."""
    return guest.run(f"findmnt -n -o FSTYPE --mountpoint {mountpoint}", check=False).stdout.strip()


def abort_connection(guest: Guest, mountpoint: str) -> None:
    """Abort the FUSE connection behind `mountpoint` through /sys/fs/fuse/connections/N/abort."""
    major, minor = guest.run(f"findmnt -n -o MAJ:MIN --mountpoint {mountpoint}").stdout.strip().split(":")
    if major != "0":  # a FUSE mount sits on an anonymous device, named by its minor
        raise CommandFailed(Result(f"findmnt {mountpoint}", 1, f"{major}:{minor}",
                                   "not a FUSE mount: its device is not anonymous", 0.0))
    guest.run(f"echo 1 > /sys/fs/fuse/connections/{minor}/abort")
