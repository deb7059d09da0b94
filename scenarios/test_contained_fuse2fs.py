"""Contained fuse2fs with the released stack: what the sandbox really takes away.

The fuse2fs-sandbox driver mounts as root and hands the FUSE connection to fuse2fs running in
a transient systemd unit sandboxed like e2fsprogs' fuse4fs@.service.  These tests look at the
running server from inside the guest (its /proc entries), not at the unit's settings.
"""

from __future__ import annotations

import pytest

from pytest_fuselab.vm import background
from pytest_fuselab.judge.drivers import DRIVERS, fate_path, mounted, server_fate
from pytest_fuselab.plugin.scenario import fresh_ext4, fsck_clean

MNT = "/mnt/contained"
SANDBOX = DRIVERS["fuse2fs-sandbox"]


@pytest.fixture
def contained(fuselab_guest, fuselab_disk):
    """A fresh ext4 disk mounted through the sandboxed driver; yields (guest, device, pid)."""
    guest = fuselab_guest
    disk = fuselab_disk("128M")
    fresh_ext4(guest, disk.path, owner=None)
    SANDBOX.mount(guest, disk.path, MNT)
    pid = guest.run("pgrep -x fuse2fs").stdout.strip()
    assert pid.isdigit(), f"expected one fuse2fs process, found {pid!r}"
    yield guest, disk.path, pid
    if mounted(guest, MNT):
        guest.run(f"umount -l {MNT}", check=False)


def status_fields(guest, pid: str) -> dict[str, str]:
    text = guest.run(f"cat /proc/{pid}/status").stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_server_has_no_root_no_capabilities_no_new_privileges(contained):
    guest, _, pid = contained
    status = status_fields(guest, pid)
    uids, gids = status["Uid"].split(), status["Gid"].split()
    assert "0" not in uids and "0" not in gids, f"fuse2fs runs with uid/gid {uids}/{gids}"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, f"{cap} is {status[cap]}"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "no seccomp filter on the server"


def test_server_has_no_network_and_a_read_only_system(contained):
    guest, _, pid = contained
    ns = guest.run(f"readlink /proc/1/ns/net /proc/{pid}/ns/net /proc/1/ns/mnt /proc/{pid}/ns/mnt").stdout.split()
    assert ns[0] != ns[1], "the server shares the network namespace of PID 1"
    assert ns[2] != ns[3], "the server shares the mount namespace of PID 1"
    interfaces = [line.split(":")[0].strip() for line in guest.run(f"cat /proc/{pid}/net/dev").stdout.splitlines()[2:]]
    assert interfaces == ["lo"], f"the server sees network interfaces {interfaces}"
    root = guest.run(f"findmnt -N {pid} -n -o OPTIONS --mountpoint /").stdout
    assert root.split(",")[0] == "ro", f"the server's / is mounted {root.strip()}"


def open_as_server(guest, pid: str, path: str):
    """Open `path` read-only from the server's cgroup, with its uid, gid and groups."""
    status = status_fields(guest, pid)
    uid, gid, groups = status["Uid"].split()[0], status["Gid"].split()[0], ",".join(status["Groups"].split())
    cgroup = guest.run(f"cat /proc/{pid}/cgroup").stdout.strip().partition("::")[2]
    assert "fuselab-fs-" in cgroup, f"fuse2fs is not in a unit of its own: {cgroup}"
    script = ('echo $$ > "$1/cgroup.procs" && exec setpriv --reuid "$2" --regid "$3" --groups "$4" '
              'python3 -S -c "import os, sys; os.open(sys.argv[1], os.O_RDONLY)" "$5"')
    return guest.run(["sh", "-c", script, "probe", f"/sys/fs/cgroup{cgroup}", uid, gid, groups, path], check=False)


def test_the_server_can_open_its_own_disk_and_no_other(contained):
    guest, device, pid = contained
    own = open_as_server(guest, pid, device)
    assert own.ok, f"the server's credentials cannot open its own disk {device}: {own.stderr}"
    root_disk = open_as_server(guest, pid, "/dev/vda")
    assert not root_disk.ok and "Operation not permitted" in root_disk.stderr, root_disk


def test_data_round_trip_and_a_clean_exit(contained):
    guest, device, _ = contained
    guest.run(f"head -c 3000000 /dev/urandom > /root/blob && cp /root/blob {MNT}/blob && sync {MNT}/blob")
    SANDBOX.unmount(guest, MNT)
    assert server_fate(guest, MNT) == "exit status 0"
    fsck_clean(guest, device)
    SANDBOX.mount(guest, device, MNT)
    guest.run(f"cmp /root/blob {MNT}/blob")
    SANDBOX.unmount(guest, MNT)


def test_a_crashing_server_costs_only_its_mount(contained):
    guest, device, pid = contained
    guest.run(f"echo before > {MNT}/f && sync {MNT}/f")
    guest.run(f"kill -SEGV {pid}")
    background.wait_for_path(guest, fate_path(MNT), seconds=10)
    assert server_fate(guest, MNT) == "killed by SIGSEGV (core dumped)"
    ls = guest.run(f"ls {MNT}", check=False)
    assert "Transport endpoint is not connected" in ls.stderr, ls
    guest.run(f"umount {MNT}")
    assert mounted(guest, MNT) == ""
    SANDBOX.mount(guest, device, MNT)  # the disk is usable again
    assert guest.run(f"cat {MNT}/f").stdout == "before\n"
    SANDBOX.unmount(guest, MNT)
