"""Deterministic races against a FUSE server that stalls, fails or crashes on command.

stallfs (pytest_fuselab/guest/stallfs.py, pyfuse3, in every guest) marks the moment a chosen
operation is reached; the test acts only then (unmount, abort, kill), so each race happens in
the same order every run.  The stalling server proves the ordering.
"""

from __future__ import annotations

import pytest

from pytest_fuselab.vm import background
from pytest_fuselab.judge.drivers import abort_connection, mounted

from pytest_fuselab.guest import module_command

MNT, STATE, SERVER = "/mnt/stall", "/run/stallfs", module_command("stallfs")


@pytest.fixture
def stallfs(fuselab_guest):
    """start(*faults) mounts stallfs at MNT with those faults and returns the server's job."""
    guest = fuselab_guest
    if guest.run("python3 -c 'import pyfuse3'", check=False).exit_status != 0:
        pytest.skip("python3-pyfuse3 is not in this image")

    def start(*faults: str) -> str:
        args = " ".join(f"--fault {f}" for f in faults)
        guest.run(f"rm -rf {STATE} && mkdir -p {MNT} {STATE}")
        server = background.start(guest, f"exec {SERVER} {MNT} --state {STATE} {args}", "stallfs")
        background.wait_for_path(guest, f"{STATE}/mounted")
        assert mounted(guest, MNT) == "fuse"
        return server

    return start


def python_io(guest, code: str):
    """Run a few lines of Python in the guest: exact errnos, unlike a shell's messages."""
    return guest.run(["python3", "-c", code], check=False)


def test_lazy_unmount_while_a_write_is_stalled(fuselab_guest, stallfs):
    guest = fuselab_guest
    server = stallfs("write:1:hang")
    writer = background.start(guest, f"echo payload > {MNT}/f && echo written", "writer")
    background.wait_for_path(guest, f"{STATE}/reached-write-1")  # the write is inside the server now
    guest.run(f"umount -l {MNT}")
    assert mounted(guest, MNT) == ""
    assert writer.running(), "the stalled writer should still wait"
    guest.run(f"touch {STATE}/release-write-1")
    assert writer.wait(), "the writer is still running after its write was released"
    assert "written" in writer.output()
    assert server.wait(), "the server did not exit once its last user was gone"


def test_server_crash_inside_fsync(fuselab_guest, stallfs):
    guest = fuselab_guest
    stallfs("fsync:1:crash")
    out = python_io(guest, f"import os; fd = os.open('{MNT}/f', os.O_CREAT | os.O_WRONLY); "
                           "os.write(fd, b'x'); os.fsync(fd)")
    assert out.exit_status != 0 and ("ConnectionAbortedError" in out.stderr or "not connected" in out.stderr), out
    ls = guest.run(f"ls {MNT}", check=False)
    assert "Transport endpoint is not connected" in ls.stderr, ls
    guest.run(f"umount {MNT}")
    assert mounted(guest, MNT) == ""


def test_abort_while_a_read_is_stalled(fuselab_guest, stallfs):
    guest = fuselab_guest
    stallfs("read:1:hang")
    guest.run(f"echo data > {MNT}/f")
    reader = background.start(guest, f"cat {MNT}/f", "reader")
    background.wait_for_path(guest, f"{STATE}/reached-read-1")
    abort_connection(guest, MNT)
    assert reader.wait(), "the reader is still waiting after the abort"
    out = reader.output()
    assert "not connected" in out or "connection abort" in out, out
    guest.run(f"touch {STATE}/release-read-1")
    guest.run(f"umount {MNT}")
    assert mounted(guest, MNT) == ""


def test_sigkill_of_a_reader_stuck_in_the_server(fuselab_guest, stallfs):
    guest = fuselab_guest
    stallfs("getattr:*:delay=0", "read:1:hang")
    guest.run(f"echo data > {MNT}/f")
    reader = background.start(guest, f"cat {MNT}/f", "reader")
    background.wait_for_path(guest, f"{STATE}/reached-read-1")
    reader.kill("KILL")
    assert reader.wait(10), "SIGKILL did not end a task waiting on the FUSE server"
    guest.run(f"touch {STATE}/release-read-1")
    assert guest.run(f"cat {MNT}/f").stdout == "data\n"
    guest.run(f"umount {MNT}")


def test_errors_from_the_server_reach_the_caller(fuselab_guest, stallfs):
    guest = fuselab_guest
    stallfs("write:1:error=ENOSPC", "fsync:1:error=EIO")
    full = python_io(guest, f"import os; os.write(os.open('{MNT}/a', os.O_CREAT | os.O_WRONLY), b'x')")
    assert "[Errno 28] No space left on device" in full.stderr, full
    sync = python_io(guest, f"import os; fd = os.open('{MNT}/b', os.O_CREAT | os.O_WRONLY); "
                            "os.write(fd, b'y'); os.fsync(fd)")
    assert "[Errno 5] Input/output error" in sync.stderr, sync
    guest.run(f"umount {MNT}")
