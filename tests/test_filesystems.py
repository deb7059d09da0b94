"""Every filesystem the guest kernel mounts (judge/filesystems.py): the table (unit), and the kernel
driver judging vfat, exfat, btrfs, xfs and squashfs in a real guest, each with its own checker; and
ext2 images the kernel refuses with EUCLEAN, made with debugfs -w, given a verdict by every driver
in seconds (the sandboxed fuse2fs once went silent on them until the host's timeout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_fuselab.judge import containment, filesystems
from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.reproducers import Extracted, extract
from pytest_fuselab.reproducers.sparse import SparseImage

# syzkaller's syz_mount_image$ variants (sys/linux/filesystem.txt), the kind of reproducers judged
SYZKALLER = ("adfs affs afs bcachefs befs bfs btrfs cramfs efs erofs exfat ext4 f2fs gfs2 gfs2meta hfs hfsplus "
             "hpfs iso9660 jffs2 jfs minix msdos nilfs2 ntfs ntfs3 ocfs2 omfs qnx4 qnx6 reiserfs romfs squashfs "
             "sysv ubifs udf ufs vfat vxfs xfs zonefs").split()


def test_every_syzkaller_filesystem_is_in_the_table_or_named_as_not_mountable():
    for fstype in SYZKALLER:
        if fstype == "afs":  # a network filesystem: no image
            continue
        assert filesystems.lookup(fstype) is not None, fstype
    assert filesystems.lookup("ntfs3").name == "ntfs"  # 7.2 builds ntfs, not ntfs3
    assert filesystems.lookup("ext2").name == filesystems.lookup("").name == "ext4"
    assert filesystems.not_judged("cramfs", fuse=False).startswith("n/a: the default guest cannot mount cramfs")
    assert filesystems.not_judged("tmpfs", fuse=False) == "n/a: the lab does not know how to mount 'tmpfs'"
    assert filesystems.not_judged("vfat", fuse=False) == ""


@pytest.mark.parametrize(("fstype", "checker", "readonly"), [
    ("vfat", ["fsck.fat", "-n"], False), ("exfat", ["fsck.exfat", "-n"], False),
    ("btrfs", ["btrfs", "check", "--readonly"], False), ("xfs", ["xfs_repair", "-n", "-o", "force_geometry"], False),
    ("f2fs", ["fsck.f2fs", "--dry-run", "-f"], False), ("jfs", ["jfs_fsck", "-n"], False),
    ("ext3", ["e2fsck", "-fn"], False), ("squashfs", ["unsquashfs", "-no-progress", "-lls"], True),
    ("iso9660", [], True),
])
def test_the_kernel_drivers_spec_mounts_the_type_and_runs_its_checker(fstype, checker, readonly):
    spec = DRIVERS["kernel"].judge_spec("/dev/vdb1", "/mnt/k", "utf8", fstype)
    kind = filesystems.lookup(fstype).name
    options = "ro,utf8" if readonly else "utf8"
    assert spec.mount == ["exec", "mount", "-i", "-t", kind, "-o", options, "/dev/vdb1", "/mnt/k"]
    assert (spec.fstype, spec.checker, spec.readonly) == (kind, checker, readonly)


def test_fuse_drivers_take_ext_images_only_and_say_n_a_otherwise():
    assert filesystems.not_judged("vfat", fuse=True) == "n/a: the FUSE drivers serve ext2/3/4 only (a vfat image)"
    assert filesystems.not_judged("ext2", fuse=True) == filesystems.not_judged("", fuse=True) == ""
    spec = DRIVERS["fuse2fs"].judge_spec("/dev/vdb1", "/mnt/f", "", "ext2")
    assert (spec.fstype, spec.checker, spec.readonly) == ("ext4", ["e2fsck", "-fn"], False)
    item = Extracted(Path("x.syz"), 0, "vfat", SparseImage(1 << 20), "", 0)
    verdicts = containment.skipped(item, "x.syz", [DRIVERS["fuse2fs"], DRIVERS["kernel"]])
    assert [(v.driver, v.verdict) for v in verdicts] == [("fuse2fs", "n/a")]


def test_the_recipe_installs_every_checker_package():
    from pytest_fuselab.build.recipe import load

    recipe = load("sid")
    missing = set(filesystems.packages()) - set(recipe.packages)
    assert not missing
    assert not any(p.startswith("kernel/fs") for p in recipe.prune_modules)
    assert "kernel/drivers/mtd" not in recipe.prune_modules  # romfs needs mtd's symbols


# -- real guests -------------------------------------------------------------------------------

MKFS = {  # made in the guest on the partition itself (the host has none of these tools)
    "vfat": "mkfs.vfat {dev}", "exfat": "mkfs.exfat {dev}", "btrfs": "mkfs.btrfs -q -f {dev}",
    "xfs": "mkfs.xfs -q -f {dev}", "squashfs": "mksquashfs /etc/systemd {dev} -noappend -quiet -no-progress",
}
EUCLEAN = {"root-not-a-directory.img": "sif <2> mode 0100644", "inode-table-illegal.img": "set_bg 0 inode_table 999999"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from pytest_fuselab.lab import Lab
    from pytest_fuselab.settings import resolve

    return Lab(resolve(), tmp_path_factory.mktemp("lab"), progress=lambda message: print(message, file=sys.stderr))


@pytest.fixture(scope="module")
def runner(lab, tmp_path_factory):
    runner = containment.ImageRunner(lab, tmp_path_factory.mktemp("run"))
    yield runner
    runner.close()


@pytest.mark.guest
def test_the_kernel_judges_every_filesystem_with_its_own_checker(runner, tmp_path):
    """vfat, exfat, btrfs, xfs and squashfs (a read walk): mounted, walked, unmounted and checked."""
    guest = runner._fresh_guest(1)
    blank = tmp_path / "blank.raw"
    with blank.open("wb") as f:
        f.truncate(320 << 20)  # xfs wants 300 MiB
    disk_file = tmp_path / "disk.raw"
    containment.partitions.write_disk(disk_file, SparseImage(320 << 20), len(MKFS))
    disk = guest.plug_partitioned(disk_file)
    parts = guest.partitions_of(disk, len(MKFS))
    for mkfs, part in zip(MKFS.values(), parts, strict=True):
        guest.run(mkfs.format(dev=part.path), timeout=120)
    got = {}
    for fstype, part in zip(MKFS, parts, strict=True):
        item = Extracted(blank, 0, fstype, SparseImage(320 << 20), "", 0)
        got[fstype] = containment.judge_drivers(guest, [part], fstype, item, [DRIVERS["kernel"]])[0]
    for fstype, v in got.items():
        steps = {s.name: s for s in v.steps}
        print(f"{fstype}: {v.verdict} {v.reached} {v.entries} entries {v.seconds} s; checker: {steps['fsck'].said[-80:]!r}")
        assert (v.verdict, v.reached) == ("clean", "checked"), (fstype, v)
        assert steps["fsck"].status == 0 and steps["walk"].status == 0, (fstype, v.steps)
        assert ("modify" in steps) is (fstype != "squashfs"), (fstype, v.steps)
        assert v.entries > 0 or fstype != "squashfs", v
    assert "Filesystem" in got["xfs"].steps[-1].said or "Phase" in got["xfs"].steps[-1].said


@pytest.fixture(scope="module")
def euclean(tmp_path_factory):
    """Two small ext2 images the kernel refuses with EUCLEAN, made with debugfs -w (bytes only)."""
    if not shutil.which("debugfs"):
        pytest.skip("debugfs (e2fsprogs) is not installed on the host")
    where = tmp_path_factory.mktemp("euclean")
    for name, request in EUCLEAN.items():
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "1024", str(where / name), "4M"], check=True)
        subprocess.run(["debugfs", "-w", "-R", request, str(where / name)], check=True, capture_output=True)
    return [extract(where / name)[0] for name in EUCLEAN]


@pytest.mark.guest
def test_every_driver_gives_a_verdict_in_seconds_on_images_the_kernel_refuses(runner, euclean):
    drivers = ["kernel", "fuse2fs", "fuse2fs-user", "fuse2fs-sandbox"]
    for item in euclean:
        start = time.monotonic()
        verdicts = {v.driver: v for v in runner.judge_item(item, drivers)}
        took = time.monotonic() - start
        print(item.source.name, f"{took:.1f} s", {d: (v.verdict, v.reached, v.seconds) for d, v in verdicts.items()})
        assert took < 60, (item.source.name, took, verdicts)
        kernel = verdicts["kernel"]
        assert (kernel.verdict, kernel.reached) == ("clean", "refused"), kernel
        assert "Structure needs cleaning" in kernel.refusal and "(exit status 32)" in kernel.refusal, kernel
        for name in drivers[1:]:
            v = verdicts[name]
            assert (v.verdict, v.reached, v.server) == ("contained", "checked", "exit status 0"), v
            assert v.seconds < 15, v
