"""Unit: QEMU command lines are data, built from small pieces."""

from pathlib import Path

import pytest

from pytest_fuselab.errors import SettingError
from pytest_fuselab.vm.qemu import MachineSpec, RunPaths, build_argv, kernel_cmdline, net_args


def spec(**kw):
    return MachineSpec(kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd.gz"), **kw)


def test_tcg_argv_has_the_guest_pieces(tmp_path):
    argv = build_argv(spec(), RunPaths.in_dir(tmp_path))
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-accel tcg,thread=multi -cpu max,erms=off -smp 2" in joined
    assert "norandmaps" in argv[argv.index("-append") + 1].split()  # TCG translates each ASLR layout anew
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert f"file={tmp_path}/root.qcow2,format=qcow2" in joined
    assert f"socket,id=agent,path={tmp_path}/agent.sock,server=on,wait=off" in joined
    assert f"unix:{tmp_path}/qmp.sock,server=on,wait=off" in joined
    assert "-incoming" not in argv


def test_kvm_and_incoming(tmp_path):
    argv = build_argv(spec(accel="kvm", cpus=4), RunPaths.in_dir(tmp_path), incoming=tmp_path / "s")
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "norandmaps" not in argv[argv.index("-append") + 1].split()  # KVM guests keep ASLR
    assert argv[-2:] == ["-incoming", "defer"]


def test_unknown_accel_is_refused(tmp_path):
    with pytest.raises(SettingError, match="acceleration 'hax'"):
        build_argv(spec(accel="hax"), RunPaths.in_dir(tmp_path))


def test_ssh_is_forwarded_on_loopback_only():
    netdev = net_args(40222)[1]
    assert "hostfwd=tcp:127.0.0.1:40222-:22" in netdev and "restrict=on" in netdev
    assert "hostfwd" not in net_args(None)[1]


def test_cmdline_has_hung_task_timeout_and_a_length_limit():
    line = kernel_cmdline(["foo=1"])
    assert "hung_task_timeout_secs=20" in line and line.endswith("foo=1")
    with pytest.raises(SettingError, match="over the limit"):
        kernel_cmdline(["x" * 3000])
