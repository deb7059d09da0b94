"""Capabilities: feature checks, reasons, version comparison, records (no guest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_fuselab import capabilities
from pytest_fuselab.capabilities import Capabilities
from pytest_fuselab.errors import FuselabError

ROOT = Path(capabilities.__file__).resolve().parents[1]  # where `pytest_fuselab` lies

RELEASED = {
    "kernel": "7.2.13+deb14-amd64", "libfuse_version": "3.18.3",
    "libfuse_libraries": ["/lib/x86_64-linux-gnu/libfuse3.so.3"],
    "programs": {"fusermount3": {"path": "/usr/bin/fusermount3", "setuid_root": True, "mode": "0o4755"},
                 "mount.fuse3": {"path": "/usr/sbin/mount.fuse3", "setuid_root": False, "mode": "0o755"},
                 "fuse2fs": {"path": "/usr/bin/fuse2fs", "setuid_root": False, "mode": "0o755"}},
    "fuse3_pc": {}, "socket_units": {}, "fuse_conf": {},
    "so_passrights": "yes", "fsopen_fuse": "yes", "fsopen_fuse_subtype": "no: EINVAL",
    "filesystems": ["ext4", "fuse", "fuseblk", "fusectl"],
}
SERVICE = dict(RELEASED, libfuse_version="3.19.0-rc0", fuse3_pc={"service_socket_dir": "/run/filesystems",
                                                                 "service_socket_perms": "0220"},
               programs=dict(RELEASED["programs"],
                             fuservicemount3={"path": "/usr/sbin/fuservicemount3", "setuid_root": False,
                                              "mode": "0o755"},
                             fuse4fs={"path": "/usr/bin/fuse4fs", "setuid_root": False, "mode": "0o755"}),
               socket_units={"fuse4fs.socket": {"path": "/usr/lib/systemd/system/fuse4fs.socket",
                                                "listen": ["/run/filesystems/ext2", "/run/filesystems/ext4"],
                                                "enabled": "enabled", "active": "inactive", "service": True}})


def test_released_stack_lacks_the_mount_service_and_says_so():
    caps = Capabilities.from_json(RELEASED)
    assert caps.has("fusermount3") and caps.has("fuse2fs") and caps.has("libfuse")
    assert not caps.has("fuservicemount3")
    reason = caps.missing("mount-service")
    assert reason is not None and "fuservicemount3 is not installed" in reason and "3.18.3" in reason
    assert "fuse4fs.socket is not installed" in str(caps.missing("fuse4fs-service"))
    assert caps.missing("libfuse>=3.19") == "libfuse >= 3.19 is not installed (the guest has 3.18.3)"
    assert caps.has("libfuse>=3.18") and caps.has("so_passrights")
    assert "EINVAL" in str(caps.missing("fsopen-fuse-subtype"))
    assert caps.socket_dir is None


def test_service_stack():
    caps = Capabilities.from_json(SERVICE)
    for feature in ("fuservicemount3", "fuse4fs", "fuse4fs-service", "mount-service", "libfuse>=3.19"):
        assert caps.has(feature), caps.missing(feature)
    assert "not setuid root" in str(caps.missing("fuservicemount3-setuid"))
    assert caps.socket_dir == "/run/filesystems" and caps.socket_dirs == ["/run/filesystems"]
    lines = caps.summary()
    assert "libfuse 3.19.0-rc0" in lines[0] and "mount service present" in lines[1]


def test_unknown_feature_is_an_error_naming_the_known_ones():
    with pytest.raises(FuselabError, match="unknown capability 'fusermount'.*fuservicemount3"):
        Capabilities().missing("fusermount")


def test_json_round_trip_ignores_unknown_keys():
    caps = Capabilities.from_json(dict(SERVICE, new_field=1))
    assert Capabilities.from_json(json.loads(json.dumps(caps.to_json()))) == caps


class FakeGuest:
    """Runs the probe's command on this host (where it can run), with the package where the guest has it."""

    def __init__(self):
        self.commands = []

    def run(self, cmd, timeout=60, check=True, input="", env=None):
        self.commands.append(cmd)
        assert cmd[0] == "python3"
        proc = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        return type("R", (), {"exit_status": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr})


def test_probe_module_runs_and_parses():
    guest = FakeGuest()
    caps = capabilities.probe(guest)
    assert guest.commands == [["python3", "-S", "-m", "pytest_fuselab.guest.probes.capabilities"]]
    assert caps.kernel and caps.filesystems
    assert caps.so_passrights.startswith(("yes", "no:"))
    assert caps.fsopen_fuse.startswith(("yes", "no:")) and caps.fsopen_fuse_subtype.startswith(("yes", "no:"))


def test_probe_reports_every_field_the_host_reads():
    from pytest_fuselab.guest.probes import capabilities as guest_probe

    assert set(guest_probe.probe()) == set(Capabilities.__dataclass_fields__)


def test_probe_is_a_guest_module():
    from pytest_fuselab.build.recipe import guest_files

    assert "lib/pytest_fuselab/guest/probes/capabilities.py" in guest_files()
    assert not hasattr(capabilities, "PROBE")


def test_require_skips_with_the_reason():
    caps = Capabilities.from_json(RELEASED)
    guest = FakeGuest()
    capabilities._PER_GUEST[guest] = caps
    assert capabilities.require(guest, "fuse2fs") is caps
    with pytest.raises(pytest.skip.Exception, match="fuservicemount3 is not installed"):
        capabilities.require(guest, "fuse2fs", "fuservicemount3")


def test_records(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSELAB_CACHE_DIR", str(tmp_path))
    caps = Capabilities.from_json(SERVICE)
    capabilities.save_record(capabilities.records_dir() / "a.json", caps, {"recipe": "sid", "stack": "x.toml",
                                                                          "image": "sid-x"})
    assert capabilities.latest_record("sid", "debian") is None
    record = capabilities.latest_record("sid", "x.toml")
    assert record is not None and Capabilities.from_json(record["capabilities"]) == caps


def test_header_shows_the_newest_probe_of_this_recipe_and_stack(tmp_path, monkeypatch):
    from pytest_fuselab.settings import resolve

    monkeypatch.setenv("FUSELAB_CACHE_DIR", str(tmp_path))
    settings = resolve(cli={"stack": "debian-source"}, env={})
    assert "not probed yet" in capabilities.header_lines(settings)[0]
    capabilities.save_record(capabilities.records_dir() / "s.json", Capabilities.from_json(RELEASED),
                             {"recipe": "sid", "stack": "debian-source", "image": "sid+debian-source-abc"})
    lines = capabilities.header_lines(settings)
    assert "stack debian-source (image sid+debian-source-abc" in lines[0]
    assert any("mount service ABSENT (fuservicemount3 is not installed" in line for line in lines)


def test_lab_probe_is_recorded_under_the_stack_label(tmp_path, monkeypatch):
    from pytest_fuselab.settings import resolve

    monkeypatch.setenv("FUSELAB_CACHE_DIR", str(tmp_path))

    class ProbedGuest(FakeGuest):
        def shutdown(self):
            self.down = True

    guest = ProbedGuest()
    lab = type("L", (), {"settings": resolve(cli={"stack": "debian-source", "fuse_conf": "user_allow_other"}, env={}),
                         "snapshot": type("S", (), {"directory": tmp_path / "snap1"}),
                         "image": type("I", (), {"directory": tmp_path / "sid+debian-source-abc"}),
                         "rundir": lambda self, name: tmp_path / name, "guest": lambda self, rundir: guest})()
    caps = capabilities.for_lab(lab)
    assert guest.down and capabilities.for_lab(lab) == caps and len(guest.commands) == 1  # the record, not a guest
    record = capabilities.latest_record("sid", "debian-source")
    assert record is not None and record["image"] == "sid+debian-source-abc"
    assert [p.name for p in capabilities.records_dir().iterdir()][0].startswith("snap1-")  # fuse.conf is per run
