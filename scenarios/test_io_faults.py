"""Block-layer write errors under each driver (dm-flakey in the guest, switched on mid-run).

Data written and synced before the fault must survive; a write or fsync during the fault must
report the error to the caller (fsync or close), never succeed silently; the kernel must stay
clean (the plugin fails the test on any splat).
"""

from __future__ import annotations

import pytest

from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.plugin.scenario import fresh_ext4, fsck

MNT, DM = "/mnt/faulty", "fuselab-faulty"
WRITE = ("python3 -c \"import os, sys; fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_TRUNC); "
         "os.write(fd, os.urandom(1 << 20)); os.fsync(fd); os.close(fd); print('synced')\"")


def table(guest, device: str, target: str) -> None:
    sectors = guest.run(f"blockdev --getsz {device}").stdout.strip()
    spec = {"linear": f"linear {device} 0", "error-writes": f"flakey {device} 0 0 1 1 error_writes"}[target]
    if guest.run(f"dmsetup info {DM}", check=False).ok:
        guest.run(f"dmsetup suspend --nolockfs {DM} && dmsetup load {DM} --table '0 {sectors} {spec}' "
                  f"&& dmsetup resume {DM}")
    else:
        guest.run(f"dmsetup create {DM} --table '0 {sectors} {spec}' && chgrp disk /dev/mapper/{DM} "
                  f"$(readlink -f /dev/mapper/{DM}) && chmod 660 $(readlink -f /dev/mapper/{DM})")


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_write_errors_are_reported_and_synced_data_survives(fuselab_guest, fuselab_disk, driver, record_property):
    guest, d = fuselab_guest, DRIVERS[driver]
    if guest.run("command -v dmsetup && modprobe dm-flakey", check=False).exit_status != 0:
        pytest.skip("dmsetup or the dm-flakey module is missing from this image")
    disk = fuselab_disk("128M")
    table(guest, disk.path, "linear")
    dev = f"/dev/mapper/{DM}"
    fresh_ext4(guest, dev)
    d.mount(guest, dev, MNT)
    guest.run(d.wrap(f"{WRITE} {MNT}/before && sha256sum {MNT}/before > /tmp/before.sum"))
    table(guest, disk.path, "error-writes")
    during = guest.run(d.wrap(f"{WRITE} {MNT}/during"), check=False, timeout=120)
    record_property("during_fault", f"status {during.exit_status}: {during.stderr.strip()[-300:]}")
    assert during.exit_status != 0 and "synced" not in during.stdout, \
        f"a write during a block-layer fault was reported as synced: {during}"
    assert "Input/output error" in during.stderr or "Read-only file system" in during.stderr, during
    table(guest, disk.path, "linear")
    d.unmount(guest, MNT)
    again = d.try_mount(guest, dev, MNT)
    if not again.ok:  # fuse2fs refuses a filesystem marked with errors until it is checked
        words = again.stderr + d.server_log(guest, MNT)
        refusal = "fuse server failed mount" if d.service else "Errors detected; running e2fsck is required"
        assert refusal in words, f"{again}\n{words}"
        record_property("remount_after_fault", "refused until e2fsck")
        repair = guest.run(f"e2fsck -fy {dev}", check=False)
        assert repair.exit_status in (0, 1), repair  # 1: errors corrected
        d.mount(guest, dev, MNT)
    guest.run(d.wrap("sha256sum -c /tmp/before.sum"))
    d.unmount(guest, MNT)
    record_property("fsck_after_fault", fsck(guest, dev).exit_status)
    guest.run(f"dmsetup remove {DM}")
