"""Unit: QEMU command lines are data, built from small pieces."""

from itertools import pairwise
from pathlib import Path

import pytest

from pytest_fuselab.errors import SettingError
from pytest_fuselab.vm.qemu import (MachineSpec, RunPaths, build_argv, kernel_cmdline, load_state_uri, net_args,
                                     opt_path, save_state_uri, shell_path)


def spec(**kw):
    kw.setdefault("kernel", Path("/k/vmlinuz"))
    return MachineSpec(initrd=Path("/k/initrd.gz"), **kw)


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


def test_paths_with_commas_and_spaces_are_escaped_in_option_strings(tmp_path):
    odd = tmp_path / "a, b,c"
    kernel = odd / "vmlinuz"
    argv = build_argv(spec(modules=odd / "modules.img"), RunPaths.in_dir(odd, sockets=odd / "s,s"))
    after = {argv[i]: [] for i in range(len(argv))}
    for flag, value in pairwise(argv):
        after[flag].append(value)
    drives = after["-drive"]
    assert drives[0].startswith(f"file={tmp_path}/a,, b,,c/root.qcow2,format=qcow2,")
    assert drives[1].startswith(f"file={tmp_path}/a,, b,,c/modules.img,format=raw,")
    chardevs = after["-chardev"]
    assert f"file,id=console,path={tmp_path}/a,, b,,c/console.log" in chardevs
    assert f"socket,id=agent,path={tmp_path}/a,, b,,c/s,,s/agent.sock,server=on,wait=off" in chardevs
    assert after["-qmp"] == [f"unix:{tmp_path}/a,, b,,c/s,,s/qmp.sock,server=on,wait=off"]
    # -kernel and -initrd take their argument whole (QEMU parses no options in it)
    argv = build_argv(spec(kernel=kernel), RunPaths.in_dir(tmp_path))
    assert argv[argv.index("-kernel") + 1] == str(kernel)


def test_every_option_string_splits_back_into_its_own_options(tmp_path):
    odd = tmp_path / "x,y=1, z"
    argv = build_argv(spec(modules=odd / "m.img"), RunPaths.in_dir(odd))
    for flag, value in pairwise(argv):
        if flag in ("-drive", "-chardev", "-qmp"):
            keys = [part.split("=", 1)[0] for part in qemu_split(value)]
            assert "y" not in keys and " z/root.qcow2" not in keys, value


def qemu_split(value):
    """Split a QEMU option string as QEMU does: a comma ends an option, two are one comma."""
    parts, current, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1:i + 2] == ",":
                current, i = current + ",", i + 2
                continue
            parts.append(current)
            current = ""
        else:
            current += value[i]
        i += 1
    return [*parts, current]


def test_relative_drive_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = build_argv(spec(), RunPaths.in_dir(Path("nbd:x")))
    assert argv[argv.index("-drive") + 1].startswith(f"file={tmp_path}/nbd:x/root.qcow2,")


def test_state_files_are_shell_quoted_in_migration_uris(tmp_path):
    import shlex

    state = tmp_path / "a, b; touch pwned" / "state.bin"
    save, load = save_state_uri(state), load_state_uri(state)
    assert save.startswith("exec:cat > ") and load.startswith("exec:cat ")
    assert shlex.split(save.removeprefix("exec:")) == ["cat", ">", str(state)]
    assert shlex.split(load.removeprefix("exec:")) == ["cat", str(state)]
    assert opt_path("/a,b,,c") == "/a,,b,,,,c" and shell_path("/a b") == "'/a b'"
