"""Real guests: no QEMU outlives its owner (signals, killed workers), xdist runs one guest per
worker, the boot watchdog retries then reports, damaged snapshots are remade, doctor tells."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_fuselab.errors import BootError
from pytest_fuselab.vm.guest import Guest
from pytest_fuselab.lab import Lab
from pytest_fuselab.settings import resolve

pytestmark = pytest.mark.guest

SLEEPER = '''
import os, time
def test_sleeps_in_a_guest(fuselab_guest):
    fuselab_guest.run("true")
    with open(os.environ["FLAG"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(300)
'''


def qemus(marker: str) -> list[int]:
    """PIDs of QEMU processes whose command line mentions `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("qemu-system") and marker in cmdline:
            found.append(int(entry.name))
    return found


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT", "SIGTERM", "xdist-worker-SIGKILL"])
def test_no_qemu_outlives_a_killed_run(tmp_path, how):
    (tmp_path / "test_sleeper.py").write_text(SLEEPER)
    basetemp, flag = tmp_path / "bt", tmp_path / "flag"
    argv = [sys.executable, "-m", "pytest", str(tmp_path / "test_sleeper.py"), f"--basetemp={basetemp}",
            "-p", "no:cacheprovider", "-q"]
    if how.startswith("xdist"):
        argv += ["-n", "1"]
    proc = subprocess.Popen(argv, env=dict(os.environ, FLAG=str(flag)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(flag.exists, 180), "the inner test never got its guest"
        assert qemus(str(basetemp)), "no QEMU found for the inner run"
        if how.startswith("xdist"):
            os.kill(int(flag.read_text()), signal.SIGKILL)  # the worker, not the controller
        else:
            os.kill(proc.pid, getattr(signal, how))
        assert wait_for(lambda: not qemus(str(basetemp)), 10), f"QEMU survived {how}: {qemus(str(basetemp))}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_xdist_runs_one_guest_per_worker(pytester):
    pytester.makepyfile(test_many='''
import os, pytest
@pytest.mark.parametrize("n", range(4))
def test_guest(fuselab_guest, n, worker_id):
    boot = fuselab_guest.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    with open(os.path.join(os.environ["OUT"], f"{n}"), "w") as f:
        f.write(f"{worker_id} {fuselab_guest.machine.pid} {boot}")
''')
    out = pytester.path / "out"
    out.mkdir()
    os.environ["OUT"] = str(out)
    try:
        result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", f"--basetemp={pytester.path / 'bt'}")
    finally:
        del os.environ["OUT"]
    result.assert_outcomes(passed=4)
    rows = [p.read_text().split() for p in out.iterdir()]
    assert {r[0] for r in rows} == {"gw0", "gw1"}
    assert len({r[1] for r in rows}) == 4  # every test had its own QEMU
    assert not qemus(str(pytester.path / "bt"))


def test_boot_watchdog_retries_once_then_reports(tmp_path):
    lab = Lab(resolve({}, {}, env={}), tmp_path)
    spec = lab.spec.__class__(**{**lab.spec.__dict__, "cmdline": ("quiet", "loglevel=0", "fuselab_init=\"/usr/bin/sleep infinity\"")})
    said = []
    guest = Guest(spec, tmp_path / "stalled")
    start = time.monotonic()
    with pytest.raises(BootError, match=r"no console output for 5 s \(boot watchdog\)") as info:
        guest.boot(lab.image.base, timeout=120, watchdog=5, progress=said.append)
    assert any("retrying once" in m for m in said)
    assert "console:" in str(info.value) and "QEMU command:" in str(info.value)
    assert time.monotonic() - start < 90
    assert not guest.machine.is_running()


def test_a_damaged_snapshot_is_made_again(tmp_path):
    said = []
    lab = Lab(resolve({}, {}, env={}), tmp_path, progress=said.append)
    state = lab.snapshot.state
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 2)
    fresh = Lab(resolve({}, {}, env={}), tmp_path, progress=said.append)
    with fresh.guest() as guest:
        assert guest.run("echo back").stdout == "back\n"
    assert any("unusable" in m and "making it again" in m for m in said)


def test_doctor_reports_acceleration_and_why():
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "doctor"], capture_output=True, text=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("acceleration"))
    assert ("KVM — KVM probe guest booted" in line) or ("TCG — KVM rejected:" in line), out.stdout
    assert "qemu-system-x86_64 " in out.stdout and "GiB free" in out.stdout


def test_shell_runs_over_ssh_in_a_fresh_guest():
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "shell", "--", "cat", "/etc/hostname"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "fuselab\n"


def test_socket_directories_of_dead_guests_are_swept(tmp_path):
    """A run killed with SIGKILL leaves its socket directory; the next guest removes it, and only
    it: not a live guest's, not a work directory with the same prefix."""
    import socket

    from pytest_fuselab.vm.guest import sweep_socket_dirs

    def socket_dir(name: str, listening: bool) -> tuple[Path, socket.socket]:
        directory = tmp_path / name
        directory.mkdir()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(directory / "qmp.sock"))
        if listening:
            server.listen(1)
        os.utime(directory, (0, 0))
        return directory, server

    dead, dead_sock = socket_dir("fuselab-dead0001", listening=False)
    dead_sock.close()
    live, live_sock = socket_dir("fuselab-live0001", listening=True)
    never = tmp_path / "fuselab-n_ver001"  # QEMU never started: nothing in it
    never.mkdir()
    os.utime(never, (0, 0))
    work = tmp_path / "fuselab-repro-abc"
    work.mkdir()
    (work / "image.raw").write_bytes(b"x")
    os.utime(work, (0, 0))
    try:
        assert sorted(sweep_socket_dirs(tmp_path)) == [dead, never]
    finally:
        live_sock.close()
    assert live.exists() and work.exists() and not dead.exists() and not never.exists()
