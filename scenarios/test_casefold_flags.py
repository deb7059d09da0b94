"""Case-folding flags: FS_IOC_FSGETXATTR reports FS_XFLAG_CASEFOLD / FS_XFLAG_CASENONPRESERVING.

The kernel series "Exposing case folding behavior" (seed 000) makes filesystems report how they
treat the case of names: FAT without `nocase` folds case (CASEFOLD); msdos, storing only upper-case
8.3 names, does not preserve it either (CASENONPRESERVING); msdos with `nocase` is POSIX (neither);
ext4 reports CASEFOLD on directories made case-insensitive with `chattr +F` on a casefold
filesystem.  Both flags are read-only: FS_IOC_FSSETXATTR must refuse them or leave them unchanged.
FUSE servers report what they report; through fuse2fs they must agree with kernel ext4 when they
answer at all.  A kernel without the series has no fileattr_get for FAT (ENOTTY): the tests skip.
"""

from __future__ import annotations

import json
import shlex

import pytest

from pytest_fuselab.guest import module_command
from pytest_fuselab.judge.drivers import DRIVERS, FUSE_DRIVERS

CASEFOLD = 0x00040000
CASENONPRESERVING = 0x00080000
BOTH = CASEFOLD | CASENONPRESERVING
MNT = "/mnt/casefold"
ENOTTY_REASON = "FS_IOC_FSGETXATTR on vfat fails with ENOTTY"

# In the guest: `PROBE get PATH...` and `PROBE set PATH XFLAGS` print JSON by path.
PROBE = module_command("probes.casefold")


def flags(guest, *paths: str) -> dict[str, dict]:
    return json.loads(guest.run([*PROBE.split(), "get", *paths]).stdout)


def try_set(guest, path: str, xflags: int) -> dict:
    return json.loads(guest.run([*PROBE.split(), "set", path, hex(xflags)]).stdout)[path]


def fat(guest, fuselab_disk, fstype: str, options: str = "") -> str:
    """A fresh FAT disk mounted at MNT as `fstype` with `options`; skips where the kernel has no
    FAT or no case-folding flags."""
    if not guest.run(f"modprobe {fstype}", check=False).ok:
        pytest.skip(f"kernel {guest.run('uname -r').stdout.strip()} has no {fstype} (CONFIG_{fstype.upper()}_FS)")
    disk = fuselab_disk("64M")
    guest.run(f"mkfs.vfat {disk.path} >/dev/null && mkdir -p {MNT}")
    mount = guest.run(f"mount -t {fstype} {'-o ' + options if options else ''} {disk.path} {MNT}", check=False)
    if not mount.ok:
        return mount.stderr.strip() or f"mount failed with status {mount.exit_status}"
    guest.run(f"mkdir {MNT}/DIR && echo x > {MNT}/FILE.TXT")  # upper case: 8.3 names for every variant
    if flags(guest, MNT)[MNT].get("error") == "ENOTTY":
        pytest.skip(f"kernel {guest.run('uname -r').stdout.strip()} lacks the case-folding flags series: "
                    f"{ENOTTY_REASON}")
    return ""


@pytest.mark.parametrize("fstype,options,expected", [
    ("vfat", "", CASEFOLD),
    ("msdos", "", BOTH),
    ("msdos", "nocase", 0),
], ids=["vfat", "msdos", "msdos-nocase"])
def test_fat_reports_case_folding(fuselab_guest, fuselab_disk, fstype, options, expected):
    """The flags as the series specifies them, on the root, a directory and a file; setting
    both flags is refused or changes nothing (they are read-only)."""
    refused = fat(fuselab_guest, fuselab_disk, fstype, options)
    assert not refused, f"mount -t {fstype} -o {options} was refused: {refused}"
    seen = flags(fuselab_guest, MNT, f"{MNT}/DIR", f"{MNT}/FILE.TXT")
    for path, result in seen.items():
        assert "xflags" in result, f"{path}: {result}"
        assert result["xflags"] & BOTH == expected, f"{path}: xflags {result['xflags']:#x}, expected {expected:#x}"
    for path in (MNT, f"{MNT}/FILE.TXT"):
        result = try_set(fuselab_guest, path, BOTH)
        assert result["after"] == result["before"], f"{path}: setting {BOTH:#x} changed the flags: {result}"
        assert result["set"] in ("accepted", "ENOTTY", "EOPNOTSUPP", "EINVAL", "EPERM"), result


def test_vfat_nocase(fuselab_guest, fuselab_disk):
    """vfat has no `nocase` (msdos only): the mount is refused, or the option has no effect."""
    refused = fat(fuselab_guest, fuselab_disk, "vfat", "nocase")
    if refused:
        assert "nocase" in refused or "Invalid argument" in refused or "bad option" in refused, refused
        return
    assert flags(fuselab_guest, MNT)[MNT]["xflags"] & BOTH == CASEFOLD


def ext4_casefold(guest, fuselab_disk) -> str:
    """A casefold ext4 disk with /cf (chattr +F) and /plain, each holding a file; returns the device."""
    if not fat_series(guest, fuselab_disk):
        pytest.skip(f"kernel {guest.run('uname -r').stdout.strip()} lacks the case-folding flags series: "
                    f"{ENOTTY_REASON}")
    disk = fuselab_disk("128M")
    guest.run(f"mkfs.ext4 -q -F -O casefold {disk.path} && mkdir -p {MNT} && mount -t ext4 {disk.path} {MNT}")
    made = guest.run(f"mkdir {MNT}/cf {MNT}/plain && chattr +F {MNT}/cf", check=False)
    if not made.ok:
        pytest.skip(f"ext4 casefold directories unavailable (CONFIG_UNICODE?): {made.stderr.strip()}")
    guest.run(f"echo x > {MNT}/cf/File && echo x > {MNT}/plain/File && umount {MNT}")
    return disk.path


def fat_series(guest, fuselab_disk) -> bool:
    """Whether this kernel has the series: vfat answers FS_IOC_FSGETXATTR (on a loop image)."""
    if not guest.run("modprobe vfat && modprobe loop", check=False).ok:
        return False
    guest.run("truncate -s 8M /tmp/probe.vfat && mkfs.vfat /tmp/probe.vfat >/dev/null && mkdir -p /mnt/probe "
              "&& mount -o loop /tmp/probe.vfat /mnt/probe")
    answer = flags(guest, "/mnt/probe")["/mnt/probe"]
    guest.run("umount /mnt/probe")
    return "error" not in answer


def test_ext4_casefold_directories(fuselab_guest, fuselab_disk):
    device = ext4_casefold(fuselab_guest, fuselab_disk)
    fuselab_guest.run(f"mount -t ext4 {device} {MNT}")
    seen = flags(fuselab_guest, MNT, f"{MNT}/cf", f"{MNT}/plain", f"{MNT}/plain/File")
    assert seen[f"{MNT}/cf"]["xflags"] & BOTH == CASEFOLD, seen
    for path in (MNT, f"{MNT}/plain", f"{MNT}/plain/File"):
        assert seen[path]["xflags"] & BOTH == 0, f"{path}: {seen[path]}"
    result = try_set(fuselab_guest, f"{MNT}/plain", CASENONPRESERVING)
    assert result["after"] & CASENONPRESERVING == 0, f"CASENONPRESERVING was set on ext4: {result}"
    fuselab_guest.run(f"umount {MNT}")


@pytest.mark.parametrize("driver", FUSE_DRIVERS)
def test_fuse_drivers_agree_with_ext4(fuselab_guest, fuselab_disk, record_property, driver):
    """Through a FUSE server the flags are the server's answer: when it answers, it must match
    kernel ext4 on the same disk, and never say CASENONPRESERVING (ext4 preserves case).
    A server that cannot mount casefold filesystems (fuse2fs 1.47) is checked on a plain one."""
    device = ext4_casefold(fuselab_guest, fuselab_disk)
    d = DRIVERS[driver]
    if not d.try_mount(fuselab_guest, device, MNT).ok:
        record_property("casefold_mount", f"{driver} refuses casefold ext4")
        device = fuselab_disk("64M").path
        fuselab_guest.run(f"mkfs.ext4 -q -F {device} && mount {device} {MNT} && mkdir {MNT}/cf {MNT}/plain "
                          f"&& umount {MNT}")
        d.mount(fuselab_guest, device, MNT)
    elif not d.fstype == (seen_type := fuselab_guest.run(f"findmnt -n -o FSTYPE {MNT}").stdout.strip()):
        pytest.fail(f"{driver} mounted {seen_type}, not {d.fstype}")
    paths = [MNT, f"{MNT}/cf", f"{MNT}/plain"]
    seen = json.loads(fuselab_guest.run(d.wrap(f"{PROBE} get {shlex.join(paths)}")).stdout)
    d.unmount(fuselab_guest, MNT)
    fuselab_guest.run(f"mount -t ext4 -o ro {device} {MNT}")
    kernel = flags(fuselab_guest, *paths)
    fuselab_guest.run(f"umount {MNT}")
    for path in paths:
        if "error" in seen[path]:
            assert seen[path]["error"] in ("ENOTTY", "ENOSYS", "EOPNOTSUPP", "EINVAL"), seen
            continue
        assert seen[path]["xflags"] & BOTH == kernel[path]["xflags"] & BOTH, \
            f"{driver} says {seen[path]['xflags']:#x} for {path}, kernel ext4 {kernel[path]['xflags']:#x}"
