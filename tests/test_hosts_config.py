"""hosts.toml parsing: typed hosts, defaults, and errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_fuselab.errors import SettingError
from pytest_fuselab.hosts import config
from pytest_fuselab.hosts.distribute import spec, usable
from pytest_fuselab.hosts.ssh import Reach


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    return path


def test_full_file(tmp_path: Path) -> None:
    (tmp_path / "ssh_config").write_text("Host lab1\n")
    hosts = config.load(write(tmp_path, 'ssh_config = "ssh_config"\npython = "python3.11"\n'
                                        '[[host]]\nssh = "root@lab1"\nguests = 2\nworkdir = "/srv/fuselab"\n'
                                        'accel = "tcg"\n[[host]]\nssh = "lab2"\nname = "second"\n'))
    first, second = hosts.hosts
    assert hosts.ssh_config == (tmp_path / "ssh_config").resolve()
    assert hosts.ssh_options() == ["-F", str(hosts.ssh_config)]
    assert (first.ssh, first.name, first.guests, first.workdir, first.accel, first.python) == (
        "root@lab1", "root@lab1", 2, "/srv/fuselab", "tcg", "python3.11")
    assert first.env() == {"FUSELAB_CACHE_DIR": "/srv/fuselab/cache", "FUSELAB_ACCEL": "tcg",
                           "TMPDIR": "/srv/fuselab/tmp"}
    assert (second.name, second.guests, second.workdir, second.accel) == ("second", None, ".fuselab", "auto")
    assert [h.name for h in hosts.named(["second"])] == ["second"]


@pytest.mark.parametrize("text, message", [
    ('[[host]]\nssh = "a"\nguests = 0\n', "host[0].guests = 0: give a whole number from 1 to 64"),
    ('[[host]]\nssh = "a"\nguests = true\n', "host[0].guests"),
    ('[[host]]\nssh = "a"\naccel = "hvf"\n', "host[0].accel = 'hvf': must be one of auto, kvm, tcg"),
    ('[[host]]\nssh = "a"\n[[host]]\nssh = "b"\nport = 22\n', "host[1].port: unknown key"),
    ('[[host]]\nname = "a"\n', "host[0] has no ssh"),
    ('[[host]]\nssh = "a b"\n', "host[0].ssh = 'a b'"),
    ('[[host]]\nssh = "a"\nworkdir = "/x//y z"\n', "host[0].workdir"),
    ('[[host]]\nssh = "a"\n[[host]]\nssh = "a"\n', "two hosts have this name"),
    ('ssh_config = "nope"\n[[host]]\nssh = "a"\n', "ssh_config = 'nope': no such file"),
    ('hosts = 1\n', "unknown key 'hosts'"),
    ('', "no hosts"),
    ('[[host]\n', "not valid TOML"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingError) as err:
        config.load(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="hosts file .*nothere.toml"):
        config.load(tmp_path / "nothere.toml")


def test_unknown_host_name(tmp_path: Path) -> None:
    hosts = config.load(write(tmp_path, '[[host]]\nssh = "a"\n'))
    with pytest.raises(SettingError, match="no host named b"):
        hosts.named(["b"])


@pytest.mark.parametrize("cores, memory, slots", [(2, 24000, 1), (16, 65536, 8), (64, 8192, 4), (1, 1024, 1)])
def test_default_guests(cores: int, memory: int, slots: int) -> None:
    assert config.default_guests(cores, memory) == slots


def test_worker_specs_and_usable_hosts(tmp_path: Path) -> None:
    host = config.Host(ssh="lab1", name="lab1", guests=2, workdir="/srv/f", accel="tcg")
    ready, down = Reach(host, ready=True, cores=8, memory_mib=32768), Reach(host, problem="Connection refused")
    line = spec(ready, tmp_path / "cfg")
    assert line.startswith(f"ssh=lab1//ssh_config={tmp_path / 'cfg'}//python=/srv/f/venv/bin/python//chdir=/srv/f/run")
    assert "//env:FUSELAB_CACHE_DIR=/srv/f/cache" in line and "//env:FUSELAB_HOST=lab1" in line
    live, skipped = usable([ready, down, Reach(host)])
    assert live == [ready] and [why.split(":")[0] for _, why in skipped] == ["unreachable", "not set up"]
