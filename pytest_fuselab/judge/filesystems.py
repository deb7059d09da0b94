"""Every filesystem the kernel driver judges: its mount type, module, checker and whether it is read-only."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Filesystem:
    """One filesystem as the guest's kernel mounts and checks it (measured on sid's 7.2 kernel)."""

    name: str  # the kernel's mount type
    module: str  # the kernel module that provides it
    package: str = ""  # the Debian package that has its checker ("" when Debian ships none)
    checker: tuple[str, ...] = ()  # the checker's argv, the device appended; () = "no checker"
    readonly: bool = False  # a read walk, no modify step
    mountable: bool = True  # the default guest's kernel mounts it from a block device
    why: str = ""  # why it is not mountable, or what is special about it

    def mount_options(self, options: str) -> str:
        """`options` (syzkaller's) with "ro" first for a read-only filesystem."""
        if not self.readonly:
            return options
        return ",".join(o for o in ("ro", options) if o)


def _fs(name: str, module: str = "", package: str = "", checker: str = "", **kw: object) -> Filesystem:
    return Filesystem(name, module or name, package, tuple(checker.split()), **kw)  # type: ignore[arg-type]


NOT_BUILT = "sid's 7.2 kernel does not build it"
FILESYSTEMS = {fs.name: fs for fs in (
    _fs("ext4", package="e2fsprogs", checker="e2fsck -fn"),
    _fs("vfat", package="dosfstools", checker="fsck.fat -n"),
    _fs("msdos", package="dosfstools", checker="fsck.fat -n"),
    _fs("exfat", package="exfatprogs", checker="fsck.exfat -n"),
    _fs("btrfs", package="btrfs-progs", checker="btrfs check --readonly"),
    _fs("xfs", package="xfsprogs", checker="xfs_repair -n -o force_geometry"),
    _fs("f2fs", package="f2fs-tools", checker="fsck.f2fs --dry-run -f"),
    _fs("jfs", package="jfsutils", checker="jfs_fsck -n"),
    _fs("hfsplus", package="hfsplus", checker="hpfsck",
        why="hfsprogs (fsck.hfsplus) is not in sid; hpfsck of the hfsplus package checks without repairing"),
    _fs("hfs", why="no checker in sid (hfsprogs is gone)"),
    _fs("ntfs", package="ntfs-3g", checker="ntfsfix -n", why="7.2's ntfs driver; syzkaller's ntfs3 mounts as ntfs"),
    _fs("gfs2", package="gfs2-utils", checker="fsck.gfs2 -n"),
    _fs("minix", package="util-linux-extra", checker="fsck.minix -f"),
    _fs("nilfs2", why="nilfs-tools has no checker"),
    _fs("ocfs2", why="ocfs2-tools (fsck.ocfs2) pulls in the cluster stack: not installed"),
    _fs("udf", why="udftools has no checker"),
    _fs("squashfs", package="squashfs-tools", checker="unsquashfs -no-progress -lls", readonly=True),
    _fs("erofs", package="erofs-utils", checker="fsck.erofs", readonly=True),
    _fs("iso9660", "isofs", readonly=True),
    _fs("romfs", readonly=True),
    _fs("cramfs", package="util-linux-extra", checker="fsck.cramfs", readonly=True, mountable=False, why=NOT_BUILT),
    _fs("bfs"), _fs("adfs", readonly=True), _fs("affs"), _fs("befs", readonly=True), _fs("efs", readonly=True),
    _fs("hpfs"), _fs("omfs"), _fs("qnx4", readonly=True), _fs("qnx6", readonly=True), _fs("ufs"),
    _fs("vxfs", "freevxfs", readonly=True),
    _fs("zonefs", mountable=False, why="needs a zoned block device"),
    _fs("jffs2", mountable=False, why="mounts an MTD device, not a block device"),
    _fs("ubifs", mountable=False, why="mounts a UBI volume, not a block device"),
    _fs("gfs2meta", "gfs2", mountable=False, why="mounts the metadata of a gfs2 filesystem already mounted"),
    _fs("reiserfs", mountable=False, why=NOT_BUILT), _fs("sysv", mountable=False, why=NOT_BUILT),
    _fs("bcachefs", mountable=False, why=NOT_BUILT),
)}
ALIASES = {"ext2": "ext4", "ext3": "ext4", "ntfs3": "ntfs"}  # what the kernel mounts them as


def lookup(fstype: str) -> Filesystem | None:
    """The filesystem that mounts `fstype` ("" is ext4, as syzkaller's ext images), or None."""
    name = fstype or "ext4"
    return FILESYSTEMS.get(ALIASES.get(name, name))


def is_ext(fstype: str) -> bool:
    """Whether `fstype` is ext2/3/4 ("" counts: today's default), the only images FUSE drivers serve."""
    return not fstype or fstype.startswith("ext")


def not_judged(fstype: str, fuse: bool) -> str:
    """Why a driver (a FUSE one when `fuse`) gives "n/a" for an image of `fstype`, or "" when it judges it."""
    if fuse:
        return "" if is_ext(fstype) else f"n/a: the FUSE drivers serve ext2/3/4 only (a {fstype} image)"
    fs = lookup(fstype)
    if fs is None:
        return f"n/a: the lab does not know how to mount {fstype!r}"
    if not fs.mountable:
        return f"n/a: the default guest cannot mount {fs.name} ({fs.why})"
    return ""


def packages() -> list[str]:
    """The Debian packages the checkers come from (the image recipe installs them)."""
    return sorted({fs.package for fs in FILESYSTEMS.values() if fs.package and fs.mountable})
