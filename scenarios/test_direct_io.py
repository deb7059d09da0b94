"""Direct I/O through each driver: aligned and misaligned buffers, offsets and lengths, on
1k and 4k filesystems over disks with 512 and 4096-byte sectors; mixed buffered and direct
access; statx DIOALIGN as reported versus as honoured; every byte checked after a remount.

What a driver does not support (an O_DIRECT open refused, no DIOALIGN) is recorded as a
result in the test's properties, not treated as a crash.
"""

from __future__ import annotations

import json

import pytest

from pytest_fuselab.guest import module_command
from pytest_fuselab.judge.drivers import DRIVERS, FUSE_DRIVERS, USER

MNT = "/mnt/dio"
PROBE = module_command("probes.dio_probe")
GEOMETRIES = [(1024, 512), (4096, 512), (4096, 4096)]  # (filesystem block, disk sector)
SEED = 7


@pytest.mark.parametrize("fs_block,sector", GEOMETRIES, ids=[f"fs{b}-sector{s}" for b, s in GEOMETRIES])
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_direct_io(fuselab_guest, fuselab_disk, driver, fs_block, sector, record_property):
    guest, d = fuselab_guest, DRIVERS[driver]
    disk = fuselab_disk("128M", block_size=sector)
    guest.run(f"mkfs.ext4 -q -F -b {fs_block} -E root_owner=$(id -u {USER}):$(id -g {USER}) {disk.path}")
    d.mount(guest, disk.path, MNT)
    report = json.loads(guest.run(d.wrap(f"{PROBE} write {MNT}/f {SEED}")).stdout)
    record_property("dio", json.dumps(report, sort_keys=True))
    d.unmount(guest, MNT)
    d.mount(guest, disk.path, MNT)
    if report.get("open") != "ok":
        assert report["open"] in ("EINVAL", "EOPNOTSUPP"), report  # refused cleanly: a result
    else:
        check = json.loads(guest.run(d.wrap(f"{PROBE} verify {MNT}/f {SEED}"), input=json.dumps(report)).stdout)
        assert check["corrupt"] == [], f"regions not intact after remount: {check['corrupt']}"
        honoured(report)
        assert report["mixed"]["buffered_then_direct"] is True, report["mixed"]
        assert report["mixed"]["direct_then_buffered"] is True, report["mixed"]
    d.unmount(guest, MNT)
    fsck = guest.run(f"e2fsck -fn {disk.path}", check=False)
    assert fsck.exit_status == 0, fsck


def honoured(report: dict) -> None:
    """Whatever statx promises must work; a failure must be a clean EINVAL, and a write that
    succeeds must read back."""
    align = report["dioalign"]
    for name, case in report["cases"].items():
        write = case["write"]
        if write["ok"]:
            assert case["read_back_ok"], f"{name}: direct write of {write['bytes']} bytes did not read back"
            continue
        assert write["errno"] == "EINVAL", f"{name}: {write}"
        if align.get("supported"):
            promised = (case["offset"] % align["offset"] == 0 and case["length"] % align["offset"] == 0
                        and case["misalign"] % align["mem"] == 0)
            assert not promised, f"{name}: within DIOALIGN {align} yet refused: {write}"


@pytest.mark.parametrize("driver", FUSE_DRIVERS)
def test_fuse2fs_direct_io_option(fuselab_guest, fuselab_disk, driver, record_property):
    """`-o direct_io` asks the FUSE server to bypass the page cache; record what fuse2fs says."""
    guest, d = fuselab_guest, DRIVERS[driver]
    disk = fuselab_disk("64M")
    guest.run(f"mkfs.ext4 -q -F -E root_owner=$(id -u {USER}):$(id -g {USER}) {disk.path}")
    guest.run(d.prepare_command(MNT))
    result = guest.run(d.wrap(d.mount_command(disk.path, MNT, "direct_io")), check=False)
    record_property("direct_io_option", f"status {result.exit_status}: {result.stderr.strip()[-200:]}")
    if not result.ok:
        words = result.stderr + d.server_log(guest, MNT)
        # refused cleanly, not a crash (fuservicemount3 only says the server failed the mount)
        refusal = "fuse server failed mount" if d.service else "unknown option"
        assert refusal in words.lower(), f"{result}\n{words}"
        said = next(line for line in words.splitlines() if refusal in line.lower())
        pytest.xfail(f"{driver} rejects -o direct_io: {said.strip()}")
    report = json.loads(guest.run(d.wrap(f"{PROBE} write {MNT}/f {SEED}")).stdout)
    assert report.get("open") == "ok", report
    d.unmount(guest, MNT)
