"""Capabilities: feature checks, reasons, version comparison, records (no guest)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pytest_fuselab import capabilities
from pytest_fuselab.capabilities import Capabilities
from pytest_fuselab.errors import FuselabError

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
    """Runs the probe on this host (where it can run), as a guest would."""

    def run(self, cmd, timeout=60, check=True, input="", env=None):
        proc = subprocess.run([sys.executable, "-"], input=input, capture_output=True, text=True, timeout=timeout)
        return type("R", (), {"exit_status": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr})


def test_probe_script_runs_and_parses():
    caps = capabilities.probe(FakeGuest())
    assert caps.kernel and caps.filesystems
    assert caps.so_passrights.startswith(("yes", "no:"))


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
