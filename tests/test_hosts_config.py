"""hosts.toml parsing (typed hosts, defaults, errors naming the file and the key); repro --hosts messages and queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_fuselab.errors import SettingError
from pytest_fuselab.hosts import config, messages
from pytest_fuselab.hosts.distribute import spec, usable
from pytest_fuselab.hosts.farm import Job, Queue, rebuild, remote_settings
from pytest_fuselab.hosts.ssh import Reach
from pytest_fuselab.judge.verdict import failed
from pytest_fuselab.reproducers import Extracted


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


# -- repro/bench --hosts: the channel's messages and the queue of images ---------------------------

def _job(name: str) -> Job:
    from pytest_fuselab.reproducers.sparse import SparseImage

    return Job(Extracted(Path(name), 0, "ext4", SparseImage(4096, ((0, b"x"),)), "", 0), name)


def test_image_message_round_trip_and_refusals() -> None:
    sent = messages.image("a.img", "ext4", "", 0, ["note"], 8192, [(0, b"ab"), (4096, b"cd")], ["kernel"])
    got = messages.check_image(messages.body(sent, "image"))
    assert got["extents"] == [(0, b"ab"), (4096, b"cd")] and got["drivers"] == ["kernel"]
    body = messages.body(sent, "image")
    for key, bad, words in [("extents", [[8191, b"ab"]], "ends past"), ("extents", [[4096, b"a"], [0, b"b"]], r"extents\[1\]"),
                            ("size", -1, "image.size"), ("drivers", "kernel", "image.drivers")]:
        with pytest.raises(messages.MessageError, match=words):
            messages.check_image({**body, key: bad})
    with pytest.raises(messages.MessageError, match="wanted a 'image' message"):
        messages.body(messages.ready(["kernel"]), "image")


def test_verdicts_are_rebuilt_checked() -> None:
    job = _job("a.img")
    v = failed("a.img", "kernel", "why")
    got = rebuild(messages.verdicts([v.to_json()]), job, ["kernel"])
    assert got[0] == v and got[0].steps[0].name == "judge"
    for data, words in [({**v.to_json(), "image": "b.img"}, "not of a.img"), ({**v.to_json(), "extra": 1}, "keys among"),
                        ({**v.to_json(), "seconds": float("nan")}, "seconds"), ({**v.to_json(), "steps": [{}]}, "steps")]:
        with pytest.raises(messages.MessageError, match=words):
            rebuild(messages.verdicts([data]), job, ["kernel"])
    with pytest.raises(messages.MessageError, match="wanted 2 verdicts"):
        rebuild(messages.verdicts([v.to_json()]), job, ["kernel", "fuse2fs"])


def test_a_lost_image_goes_back_once_to_another_host_then_is_an_error() -> None:
    queue = Queue([_job("a"), _job("b")], ["h1", "h2"])
    a = queue.take("h1")
    assert a is not None and queue.lost("h1", a) is None  # back, for h2
    assert a.lost_on == "h1" and queue.take("h2") is a
    b = queue.take("h2")
    assert b is not None and b.name == "b"
    queue.done()
    assert queue.lost("h2", a) is a  # lost twice: the caller reports it
    assert queue.take("h2") is None and not queue.left() and queue.inflight == 0


def test_the_last_slot_lost_leaves_its_image_as_an_error() -> None:
    queue = Queue([_job("a"), _job("b")], ["h1"])
    a = queue.take("h1")
    assert a is not None and queue.lost("h1", a) is a  # no slot left to take it
    assert [j.name for j in queue.left()] == ["b"]  # no slot took it: the farm reports it


def test_remote_settings_sends_only_what_was_chosen() -> None:
    from pytest_fuselab.settings import Settings, resolve

    settings = resolve({"budget": "90", "suppress": ["a", "b"]}, env={})
    assert remote_settings(settings) == {"budget": "90.0", "suppress": "a\nb"}
    with pytest.raises(SettingError, match="kernel cannot be sent"):
        remote_settings(Settings(kernel=Path("/boot/vmlinuz"), sources={"kernel": "--kernel"}))
