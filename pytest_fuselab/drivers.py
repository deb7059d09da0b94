"""Filesystem drivers a scenario can mount an ext4 disk with, inside a guest."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .channel import Result
from .errors import CommandFailed
from .guest import Guest

USER = "fuselab"  # the unprivileged account every image has


@dataclass(frozen=True)
class Driver:
    """How to mount, check and unmount with one driver; `user` runs it unprivileged."""

    name: str
    fstype: str  # what findmnt reports once mounted
    user: str | None = None

    def wrap(self, command: str) -> str:
        """`command` as this driver's user would run it."""
        if self.user is None:
            return command
        return f"runuser -u {self.user} -- sh -c {shlex.quote(command)}"

    def mount_command(self, device: str, mountpoint: str, options: str = "") -> str:
        if self.fstype == "ext4":
            return f"mount -t ext4{f' -o {options}' if options else ''} {device} {mountpoint}"
        return (f"fuse2fs {device} {mountpoint}" + (" -o fakeroot" if self.user else "")
                + (f" -o {options}" if options else ""))

    def unmount_command(self, mountpoint: str) -> str:
        return f"fusermount3 -u {mountpoint}" if self.user else f"umount {mountpoint}"

    def try_mount(self, guest: Guest, device: str, mountpoint: str, timeout: float = 120) -> Result:
        """Attempt a mount and return what happened, refused or not."""
        guest.run(f"mkdir -p {mountpoint}" + (f" && chown {self.user}: {mountpoint}" if self.user else ""))
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
}


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
