"""The service scenarios' tools (pytest_fuselab/plugin/servicelab.py) and their skips on a stack
without the mount service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_fuselab import guestconfig
from pytest_fuselab.plugin import servicelab

ROOT = Path(__file__).resolve().parent.parent


def conversation(*requests: dict) -> servicelab.Conversation:
    return servicelab.Conversation(1, "", [{"event": "request", **r} for r in requests], [])


def test_answers_name_errnos_tags_and_hangups():
    c = conversation({"answer": {"errno": "OK"}}, {"answer": {"errno": "EINVAL"}},
                     {"answer": {"tag": "LAST"}}, {"answer": {"eof": True}}, {"send_error": "EPIPE"})
    assert c.answers() == ["OK", "EINVAL", "LAST", "EOF"]


@pytest.mark.parametrize("request_", [{"recv_error": "ECONNRESET"}, {"send_error": "EPIPE"}])
def test_a_reset_or_broken_pipe_is_a_hangup(request_):
    assert conversation({"answer": {"errno": "OK"}}, request_, {"answer": {"errno": "OK"}}).answers() == ["OK", "EOF"]


class FakeGuest:
    """A transport that answers every command with canned output."""

    def __init__(self, stdout: str) -> None:
        self.stdout, self.commands = stdout, []

    def run(self, command, timeout=60, check=True):
        self.commands.append(command)
        return SimpleNamespace(exit_status=0, stdout=self.stdout, stderr="")


MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:25 / /sys/fs/fuse/connections rw - fusectl fusectl rw
41 22 0:40 / /mnt/a rw,nosuid,nodev - fuse.service_ll service_ll rw,user_id=0
42 22 0:41 / /mnt/b rw - fuseblk.ext4 /dev/vdb rw
43 22 0:42 / /mnt/c rw - fuse /dev/fuse rw
"""


def test_fuse_mounts_are_fuse_fuseblk_and_subtypes_not_fusectl():
    svc = servicelab.Service(FakeGuest(MOUNTINFO), SimpleNamespace(socket_dir=None))
    assert svc.fuse_mounts() == ["/mnt/a", "/mnt/b", "/mnt/c"]
    assert svc.socket_dir == "/run/filesystems"


def test_commands_as_the_user_are_quoted():
    guest = FakeGuest("")
    servicelab.Service(guest, SimpleNamespace(socket_dir="/run/fs")).sh("echo 'a b'", user="fuselab")
    assert guest.commands == ["runuser -u fuselab -- sh -c 'echo '\"'\"'a b'\"'\"''"]


def test_fuse_conf_lines():
    guest = FakeGuest("")
    written = {}
    guest.put = lambda path, data: written.update({path: data})
    servicelab.Service(guest, SimpleNamespace(socket_dir=None)).conf(user_allow_other=True, mount_max="0")
    assert written == {"/etc/fuse.conf": guestconfig.fuse_conf_text("user_allow_other,mount_max=0")}
    assert written["/etc/fuse.conf"].endswith("\nuser_allow_other\nmount_max = 0\n")


@pytest.mark.guest
def test_service_scenarios_skip_on_the_released_stack(tmp_path):
    """Debian's libfuse 3.18 has no fuservicemount3: every service scenario skips and says so."""
    env = {k: v for k, v in os.environ.items() if k not in (servicelab.LAYER_ENV, "FUSELAB_STACK")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                             "scenarios/service/test_service_mount.py", "scenarios/service/test_hostile_server.py",
                             f"--basetemp={tmp_path / 'run'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(r"^=* ?\d+ skipped in ", out, re.M), out  # pytest's closing line: skips only
    assert "needs the mount service (fuservicemount3): fuservicemount3 is not installed" in out, out
