"""Unmount races: the FUSE server killed mid-write, lazy unmount with I/O in flight, an abort
through fusectl, umount racing open/stat loops, and many mount/unmount cycles.

After each: processes see clean errors (ENOTCONN, EBUSY) and the mount can be removed; the
plugin then fails the test on any kernel splat or any task left in D state.
"""

from __future__ import annotations

import time

import pytest

from pytest_fuselab.vm import background
from pytest_fuselab.judge.drivers import DRIVERS, FUSE_DRIVERS, abort_connection, mounted, server_fate
from pytest_fuselab.plugin.scenario import fresh_ext4, fsck_clean

MNT = "/mnt/race"


def fresh_fs(guest, disk_factory):
    disk = disk_factory("256M")
    fresh_ext4(guest, disk.path)
    return disk


@pytest.mark.parametrize("driver", FUSE_DRIVERS)
def test_server_killed_mid_write(fuselab_guest, fuselab_disk, driver):
    guest, d = fuselab_guest, DRIVERS[driver]
    disk = fresh_fs(guest, fuselab_disk)
    d.mount(guest, disk.path, MNT)
    writer = background.start(guest, f"dd if=/dev/zero of={MNT}/big bs=64k count=100000", "writer", d.wrap)
    time.sleep(2)
    guest.run(f"pkill -KILL -x {d.server}")
    assert writer.wait(), "the writer did not notice that its server died"
    out = writer.output()
    assert "Transport endpoint is not connected" in out or "Software caused connection abort" in out, out
    ls = guest.run(d.wrap(f"ls {MNT}"), check=False)
    assert ls.exit_status != 0 and "Transport endpoint is not connected" in ls.stderr, ls
    d.unmount(guest, MNT)
    assert mounted(guest, MNT) == ""
    assert d.service or server_fate(guest, MNT) == "killed by SIGKILL"


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_lazy_unmount_with_open_files_and_io(fuselab_guest, fuselab_disk, driver):
    guest, d = fuselab_guest, DRIVERS[driver]
    disk = fresh_fs(guest, fuselab_disk)
    d.mount(guest, disk.path, MNT)
    writer = background.start(guest, f"exec 3>{MNT}/log; i=0; while :; do i=$((i+1)); echo line $i >&3; done",
                              "lazy", d.wrap)
    time.sleep(1)
    guest.run(f"umount -l {MNT}")
    assert mounted(guest, MNT) == "", "the mount is still visible after umount -l"
    time.sleep(1)
    assert writer.running(), "the writer died when its mount was detached"
    writer.kill()
    assert writer.wait()
    if d.fuse and not d.service:
        deadline = time.monotonic() + 30
        while not server_fate(guest, MNT) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert server_fate(guest, MNT) == "exit status 0", "fuse2fs did not exit after the last user went away"
    fsck_clean(guest, disk.path)
    d.mount(guest, disk.path, MNT)
    lines = guest.run(d.wrap(f"wc -l < {MNT}/log")).stdout.strip()
    assert int(lines) > 0
    d.unmount(guest, MNT)


@pytest.mark.parametrize("driver", FUSE_DRIVERS)
def test_abort_through_fusectl(fuselab_guest, fuselab_disk, driver):
    guest, d = fuselab_guest, DRIVERS[driver]
    disk = fresh_fs(guest, fuselab_disk)
    d.mount(guest, disk.path, MNT)
    guest.run(d.wrap(f"echo before > {MNT}/f"))
    abort_connection(guest, MNT)
    cat = guest.run(d.wrap(f"cat {MNT}/f"), check=False)
    assert cat.exit_status != 0 and ("not connected" in cat.stderr or "aborted" in cat.stderr), cat
    guest.run(f"umount {MNT}")  # root may always remove an aborted mount
    assert mounted(guest, MNT) == ""


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_umount_races_open_and_stat_loops(fuselab_guest, fuselab_disk, driver):
    guest, d = fuselab_guest, DRIVERS[driver]
    disk = fresh_fs(guest, fuselab_disk)
    d.mount(guest, disk.path, MNT)
    guest.run(d.wrap(f"echo data > {MNT}/f && mkdir {MNT}/d"))
    loops = [background.start(guest, f"while :; do stat {MNT}/f >/dev/null; cat {MNT}/f >/dev/null; ls {MNT}/d; done",
                              f"loop{i}", d.wrap) for i in range(3)]
    busy = 0
    for _ in range(20):
        result = guest.run(d.wrap(d.unmount_command(MNT)), check=False)
        if result.ok:
            break
        busy += 1
        assert "busy" in (result.stderr + result.stdout).lower(), result
    else:
        guest.run(f"umount -l {MNT}")
    for loop in loops:
        loop.kill()
        assert loop.wait()
    assert mounted(guest, MNT) == ""
    fsck_clean(guest, disk.path)


CYCLES = {"kernel": 300, "fuse2fs": 40, "fuse2fs-user": 40, "fuse2fs-sandbox": 15, "fuse4fs-service": 15}


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_mount_unmount_cycles(fuselab_guest, fuselab_disk, driver, record_property):
    guest, d = fuselab_guest, DRIVERS[driver]
    disk = fresh_fs(guest, fuselab_disk)
    guest.run(d.prepare_command(MNT))
    n = CYCLES[driver]
    # a FUSE driver's unmount command waits for its server to exit (it holds the disk O_EXCL)
    body = f"{d.mount_command(disk.path, MNT)} && echo $i > {MNT}/last && {d.unmount_command(MNT)} || exit 1"
    result = guest.run(d.wrap(f"for i in $(seq {n}); do {body}; done"), timeout=1200)
    record_property("cycles_per_s", round(n / result.duration, 2))
    d.mount(guest, disk.path, MNT)
    assert guest.run(d.wrap(f"cat {MNT}/last")).stdout.strip() == str(n)
    d.unmount(guest, MNT)
    fsck_clean(guest, disk.path)
