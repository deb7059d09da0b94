"""Drivers and the FUSE server keeper: commands, fates (unit), and real servers in a guest."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest

from pytest_fuselab.vm import background
from pytest_fuselab.vm.channel import Result
from pytest_fuselab.judge.drivers import DRIVERS, FUSE_DRIVERS, KEPT_DRIVERS, fate_path, mounted, server_fate

GUEST_PROGRAM = Path(__file__).resolve().parent.parent / "pytest_fuselab" / "guest" / "fuseserver.py"


def load_guest_program(cores: Path):
    """The guest program, loaded on the host, its core dumps going to `cores`."""
    spec = importlib.util.spec_from_file_location("guest_fuseserver", GUEST_PROGRAM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.CORES = str(cores)
    return module


class FakeGuest:
    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def run(self, command: str, check: bool = True, **_: object) -> Result:
        path = command.removeprefix("cat ")
        if path in self.files:
            return Result(command, 0, self.files[path], "", 0.0)
        return Result(command, 1, "", f"cat: {path}: No such file or directory", 0.0)


def test_fuse_drivers_and_fate_paths():
    assert FUSE_DRIVERS == ["fuse2fs", "fuse2fs-user", "fuse2fs-sandbox", "fuse4fs-service"]
    assert KEPT_DRIVERS == ["fuse2fs", "fuse2fs-user", "fuse2fs-sandbox"]
    assert DRIVERS["fuse4fs-service"].mount_command("/dev/vdb", "/mnt/x") == "fuservicemount3 /dev/vdb /mnt/x -t ext4"
    assert fate_path("/mnt/hostile") == "/run/fuselab/servers/mnt-hostile.json"
    assert "fakeroot" in DRIVERS["fuse2fs-user"].mount_command("/dev/vdb", "/mnt/x")
    assert "fakeroot" not in DRIVERS["fuse2fs"].mount_command("/dev/vdb", "/mnt/x")
    assert DRIVERS["fuse2fs-sandbox"].mount_command("/dev/vdb", "/mnt/x", "ro").endswith("sandbox --fate "
                                                                                        "/run/fuselab/servers/mnt-x.json "
                                                                                        "/dev/vdb /mnt/x -o ro")
    assert DRIVERS["kernel"].mount_command("/dev/vdb", "/mnt/x", "errors=continue") == \
        "mount -t ext4 -o errors=continue /dev/vdb /mnt/x"
    assert DRIVERS["kernel"].unmount_command("/mnt/x") == "umount /mnt/x"
    assert "wait --fate" in DRIVERS["fuse2fs-user"].unmount_command("/mnt/x")


@pytest.mark.parametrize("record,said", [
    ({"exit": 0, "signal": None, "core": False}, "exit status 0"),
    ({"exit": 8, "signal": None, "core": False}, "exit status 8"),
    ({"exit": None, "signal": "SIGSEGV", "core": True}, "killed by SIGSEGV (core dumped)"),
    ({"exit": None, "signal": "SIGKILL", "core": False}, "killed by SIGKILL"),
])
def test_server_fate_reads_the_keepers_record(record, said):
    guest = FakeGuest({fate_path("/mnt/x"): json.dumps(record)})
    assert server_fate(guest, "/mnt/x") == said  # type: ignore[arg-type]
    assert server_fate(FakeGuest({}), "/mnt/x") == ""  # type: ignore[arg-type]


@pytest.mark.parametrize("command,expected", [
    ("exit 3", {"exit": 3, "signal": None}),
    ("kill -TERM $$", {"exit": None, "signal": "SIGTERM"}),
    ("kill -SEGV $$", {"exit": None, "signal": "SIGSEGV"}),
])
def test_the_keeper_records_how_its_server_ended(tmp_path, command, expected):
    program = load_guest_program(tmp_path)
    fate = tmp_path / "mnt-x.json"
    assert program.keep(str(fate), ["sh", "-c", command], log=str(tmp_path / "log")) == 0
    record = json.loads(fate.read_text())
    assert {k: record[k] for k in expected} == expected
    assert record["server"] == "sh" and record["pid"] > 0


def test_the_keeper_closes_fds_meant_for_the_server_alone(tmp_path):
    program = load_guest_program(tmp_path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a keeper whose server holds the pipe's write end (as its stdin) for a second
        os.close(r)
        os._exit(program.keep(str(tmp_path / "f.json"), ["sh", "-c", "sleep 1"], stdin=w))
    os.close(w)
    assert os.read(r, 1) == b""  # EOF: once the server exited, no copy of the fd stayed open
    os.waitpid(pid, 0)
    assert json.loads((tmp_path / "f.json").read_text())["exit"] == 0
    os.close(r)


@pytest.mark.parametrize(("words", "status", "fate"), [
    ("Main processes terminated with: code=dumped, status=11/SEGV", 255,
     {"exit": None, "signal": "SIGSEGV", "core": True}),
    ("Main processes terminated with: code=killed, status=6/ABRT", 255,
     {"exit": None, "signal": "SIGABRT", "core": False}),
    ("Main processes terminated with: code=exited, status=1/FAILURE", 1, {"exit": 1, "signal": None, "core": False}),
])
def test_a_sandboxed_servers_fate_is_read_from_systemd_run(tmp_path, words, status, fate):
    """systemd-run --wait exits 255 when its service died of a signal, and names the signal."""
    program = load_guest_program(tmp_path)
    log = tmp_path / "f.json.log"
    script = f"echo 'Main processes terminated with: code=dumped, status=1/X' ; echo '{words}' >&2; exit {status}"
    pid = os.fork()
    if pid == 0:  # the server's own output comes first; systemd-run's last words decide
        os._exit(program.keep(str(tmp_path / "f.json"), ["sh", "-c", script], str(log), server="fuse2fs"))
    os.waitpid(pid, 0)
    record = json.loads((tmp_path / "f.json").read_text())
    assert {k: record[k] for k in fate} == fate and record["server"] == "fuse2fs"


def test_wait_without_a_fate_times_out(tmp_path, capsys):
    program = load_guest_program(tmp_path)
    assert program.wait(str(tmp_path / "none.json"), 0.1) == 1
    assert "had not exited" in capsys.readouterr().err
    assert signal.SIGSEGV.name == "SIGSEGV"


# ---- real guests -------------------------------------------------------------------------

MNT = "/mnt/fate"


@pytest.mark.guest
@pytest.mark.parametrize("driver", KEPT_DRIVERS)
def test_real_server_fates(fuselab_guest, fuselab_disk, driver):
    """Mount, crash the server with SIGABRT: its fate says so; unmount works; a clean run exits 0."""
    guest, d = fuselab_guest, DRIVERS[driver]
    disk = fuselab_disk("64M")
    guest.run(f"mkfs.ext4 -q {disk.path}")
    d.mount(guest, disk.path, MNT)
    assert server_fate(guest, MNT) == ""  # still running
    pid = guest.run("pgrep -x fuse2fs").stdout.strip()
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in guest.run(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout
    huge = guest.run(f"awk '/^AnonHugePages/ {{print $2}}' /proc/{pid}/smaps_rollup").stdout
    assert int(huge) >= 16 << 10, f"fuse2fs's block cache is not on huge pages: AnonHugePages {huge.strip()} kB"
    guest.run("pkill -ABRT -x fuse2fs")
    background.wait_for_path(guest, fate_path(MNT), seconds=20)
    assert server_fate(guest, MNT) == "killed by SIGABRT (core dumped)"
    assert guest.run("ls /var/lib/fuselab/cores").stdout.startswith("core.fuse2fs.")
    guest.run(f"umount {MNT}")
    assert mounted(guest, MNT) == ""
    # Test disks are no longer watched by udev (guest_udev_late.rules), so no change event should
    # follow the crashed server's close; settle anyway before the remount: an unprivileged fuse2fs
    # once got EACCES on the disk here and the cause was never shown.
    guest.run("udevadm settle --timeout=30", check=False, timeout=60)
    d.mount(guest, disk.path, MNT)
    d.unmount(guest, MNT)
    assert server_fate(guest, MNT) == "exit status 0"


@pytest.mark.guest
@pytest.mark.parametrize("driver", KEPT_DRIVERS)
def test_a_server_that_refuses_its_disk_fails_the_mount_with_its_words(fuselab_guest, fuselab_disk, driver):
    guest, d = fuselab_guest, DRIVERS[driver]
    disk = fuselab_disk("64M")  # all zeros: no filesystem on it
    result = d.try_mount(guest, disk.path, MNT)
    assert not result.ok
    assert "fuse2fs" in result.stderr or "Bad magic" in result.stderr, result
    assert server_fate(guest, MNT).startswith("exit status"), server_fate(guest, MNT)
    assert mounted(guest, MNT) == ""
