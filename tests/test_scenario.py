"""The scenario helpers (pytest_fuselab/plugin/scenario.py) send the commands the scenarios used to write out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_fuselab.plugin import scenario


class FakeGuest:
    """A transport that records commands and answers each with one exit status."""

    def __init__(self, status: int = 0) -> None:
        self.status, self.calls = status, []

    def run(self, command, timeout=60, check=True):
        self.calls.append((command, timeout, check))
        return SimpleNamespace(exit_status=self.status, command=command)


def test_fresh_ext4_is_owned_by_the_lab_user_unless_told():
    guest = FakeGuest()
    scenario.fresh_ext4(guest, "/dev/vdb")
    scenario.fresh_ext4(guest, "/dev/vdc", "-O mmp", "-E mmp_update_interval=5", owner=None)
    assert [c for c, _, _ in guest.calls] == [
        "mkfs.ext4 -q -F -E root_owner=$(id -u fuselab):$(id -g fuselab) /dev/vdb",
        "mkfs.ext4 -q -F -O mmp -E mmp_update_interval=5 /dev/vdc"]
    assert scenario.mkfs_command("/dev/vdb", "-b 4096") == \
        "mkfs.ext4 -q -F -b 4096 -E root_owner=$(id -u fuselab):$(id -g fuselab) /dev/vdb"


def test_fsck_clean_passes_a_clean_disk_and_fails_with_the_result():
    guest = FakeGuest()
    assert scenario.fsck_clean(guest, "/dev/vdb").exit_status == 0
    assert guest.calls == [("e2fsck -fn /dev/vdb", 60, False)]
    with pytest.raises(AssertionError, match="e2fsck -fn /dev/vdb"):
        scenario.fsck_clean(FakeGuest(status=4), "/dev/vdb")
    assert scenario.fsck(FakeGuest(status=4), "/dev/vdb", timeout=180).exit_status == 4
