"""The protocol peers in a real guest: its python3, real SCM_RIGHTS, /dev/fuse and mount(2).

No mount service is needed: our server and our helper talk to each other over a SEQPACKET
socket in the guest, the way fuservicemount3 and a socket-activated server would.
"""

from __future__ import annotations

import json

import pytest

from pytest_fuselab.guest import module_command

pytestmark = pytest.mark.guest

PROTO = module_command("mountproto")
SOCK = "/run/fuselab-proto/hostile"


def converse(guest, attack: str, helper_attack: str = "good") -> tuple[list[dict], list[dict]]:
    guest.run("mkdir -p /run/fuselab-proto /mnt/proto && rm -f /run/fuselab-proto/*.jsonl")
    guest.run(f"nohup {PROTO} serve --attack {attack} --listen {SOCK} --log /run/fuselab-proto/s.jsonl "
              "> /run/fuselab-proto/s.out 2>&1 & echo $! > /run/fuselab-proto/s.pid")
    guest.run(f"for i in $(seq 100); do [ -S {SOCK} ] && exit 0; sleep 0.1; done; exit 1", timeout=30)
    guest.run(f"timeout 60 {PROTO} helper --attack {helper_attack} --socket {SOCK} "
              "--log /run/fuselab-proto/h.jsonl -- hostile none /mnt/proto", timeout=90, check=False)
    guest.run("pid=$(cat /run/fuselab-proto/s.pid); for i in $(seq 100); do kill -0 $pid 2>/dev/null || exit 0; "
              "sleep 0.1; done; exit 1", timeout=30)
    logs = [guest.run(f"cat /run/fuselab-proto/{n}.jsonl", check=False).stdout for n in ("s", "h")]
    server, helper = ([json.loads(line) for line in text.splitlines() if line.strip()] for text in logs)
    return server, helper


def test_peers_mount_for_real_in_a_guest(fuselab_guest):
    server, helper = converse(fuselab_guest, "mount_then_bye")
    answers = [e["answer"].get("errno", "EOF" if e["answer"].get("eof") else "?")
               for e in server if e["event"] == "request"]
    assert answers == ["OK", "OK", "OK", "OK", "OK", "EOF"], server
    args = next(e for e in server if e["event"] == "args")
    assert args["argv"] == ["hostile", "none", "/mnt/proto"]
    fusedev = [e for e in server if e["event"] == "file"][1]
    assert fusedev["text"] == "fusedev" and fusedev["fds"] == ["chr 10:229"]
    result = next(e for e in helper if e["event"] == "result")
    assert result == {**result, "end": "bye", "exitcode": 0, "mounted": "/mnt/proto"}
    mountinfo = fuselab_guest.run("grep ' /mnt/proto ' /proc/self/mountinfo", check=False).stdout
    assert " - fuse.hostile none " in mountinfo, mountinfo
    # The server has gone: the mount is dead but can be removed.
    assert fuselab_guest.run("umount /mnt/proto", check=False).exit_status == 0


def test_helper_drops_the_conversation_on_a_malformed_packet(fuselab_guest):
    server, helper = converse(fuselab_guest, "wrong_magic")
    result = next(e for e in helper if e["event"] == "result")
    assert result["end"] == "refused" and "unknown magic XXXX" in result["error"]
    assert not result["mounted"]
    assert fuselab_guest.run("grep -c ' - fuse.hostile ' /proc/self/mountinfo", check=False).stdout.strip() == "0"
