"""Unit tests of the mount-service protocol peers: layouts from the thread and libfuse main, real sockets."""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pytest_fuselab.build.recipe import guest_files
from pytest_fuselab.guest import module_command
from pytest_fuselab.guest import mountproto as mp


def test_magics_are_the_ascii_tags_big_endian():
    # Values as #defined in fuse_service_priv.h (thread v4 and main).
    expected = {"HELLO": 0x53414654, "HELLO_REPLY": 0x4C415354, "OPEN": 0x4F50454E, "BDEV": 0x42444556,
                "FSOPEN": 0x54595045, "SOURCE": 0x4E414D45, "MNTOPTS": 0x4F505453, "MNTPT": 0x4D4E5450,
                "MOUNT": 0x444F4954, "UNMOUNT": 0x554D4E54, "BYE": 0x42594545, "MTABOPTS": 0x4D544142,
                "FILE_REPLY": 0x46494C45, "SIMPLE_REPLY": 0x5245504C, "ARGS_MAGIC": 0x41524753}
    for name, value in expected.items():
        assert getattr(mp, name) == value, name
        assert mp.encode(value, mp.V4)[:4] == struct.pack(">I", value)
    assert mp.tag_of(mp.HELLO) == "SAFT" and mp.tag_of(0x01020304) == "0x01020304"


def test_hello_layout():
    raw = mp.encode(mp.HELLO, min_version=1, max_version=1, flags=mp.FLAG_ALLOW_OTHER)
    assert raw == b"SAFT" + b"\x00\x01" + b"\x00\x01" + b"\x00\x00\x00\x01"
    assert len(raw) == 12
    assert mp.decode(raw).fields == {"min_version": 1, "max_version": 1, "flags": 1}
    assert mp.FLAG_FUSEBLK == 2 and mp.MAIN.hello_flags == 3 and mp.V4.hello_flags == 1


def test_hello_reply_is_eight_bytes_in_both_dialects():
    assert mp.encode(mp.HELLO_REPLY, version=1) == b"LAST\x00\x01\x00\x00"
    assert mp.encode(mp.HELLO_REPLY, mp.V4, version=1) == b"LAST\x00\x01\x00\x00"
    assert mp.decode(b"LAST\x00\x01\x00\x07").fields == {"version": 1, "padding": 7}


def test_fixed_replies_and_commands():
    assert mp.encode(mp.SIMPLE_REPLY, error=errno.EINVAL) == b"REPL" + struct.pack(">I", 22)
    assert mp.encode(mp.BYE, exitcode=1) == b"BYEE\x00\x00\x00\x01"
    assert mp.encode(mp.MOUNT, ms_flags=1) == b"DOIT\x00\x00\x00\x01"  # main: 8 bytes
    assert mp.encode(mp.MOUNT, mp.V4, ms_flags=1, expected_fmt=stat.S_IFDIR) == \
        b"DOIT\x00\x00\x00\x01\x40\x00\x00\x00"  # thread v4: ms_flags, expected_fmt, 2 pad = 12
    assert mp.encode(mp.FSOPEN, fsopen_flags=mp.FSOPEN_FUSEBLK) == b"TYPE\x00\x00\x00\x01"
    assert mp.encode(mp.FSOPEN, mp.V4, "fuse.ext4") == b"TYPEfuse.ext4\x00"
    assert mp.encode(mp.UNMOUNT, mp.V4) == b"UMNT"


def test_string_commands_end_in_nul():
    assert mp.encode(mp.SOURCE, text="/dev/vdb") == b"NAME/dev/vdb\x00"
    assert mp.encode(mp.MNTOPTS, text="ro,noatime") == b"OPTSro,noatime\x00"
    assert mp.encode(mp.MTABOPTS, text="-n") == b"MTAB-n\x00"
    assert mp.encode(mp.MNTPT, text="/mnt", expected_fmt=stat.S_IFDIR) == b"MNTP\x40\x00\x00\x00/mnt\x00"
    assert mp.encode(mp.MNTPT, mp.V4, "/mnt") == b"MNTP/mnt\x00"
    assert mp.decode(b"NAME/dev/vdb\x00").text == "/dev/vdb"


def test_open_and_file_layouts():
    raw = mp.encode(mp.BDEV, text="/dev/vdb", open_flags=os.O_RDWR | os.O_EXCL, create_mode=0,
                    request_flags=mp.OPEN_QUIET, block_size=4096)
    assert len(raw) == 20 + len("/dev/vdb") + 1
    assert raw[:20] == b"BDEV" + struct.pack(">IIII", os.O_RDWR | os.O_EXCL, 0, 1, 4096)
    assert mp.decode(raw).fields["block_size"] == 4096
    assert mp.encode(mp.FILE_REPLY, text="argv") == b"FILE\x00\x00\x00\x00argv\x00"
    assert mp.decode(mp.encode(mp.FILE_REPLY, text="x", error=errno.ENOTBLK)).fields["error"] == errno.ENOTBLK


@pytest.mark.parametrize("raw, rule", [
    (b"SA", "shorter than its 4-byte magic"),
    (b"SAFT\x00\x01", "layout needs 12"),
    (b"SAFT" + bytes(9), "layout needs 12"),
    (b"NAME/dev/vdb", "not NUL-terminated"),
    (b"DOIT\x00\x00\x00\x01\x40\x00\x00\x00", "layout needs 8"),
    (b"ZZZZ", "unknown magic ZZZZ"),
    (b"OPEN" + bytes(8), "at least 20"),
    (b"\xff\x00\x00\x01", "unknown magic 0xff000001"),
])
def test_malformed_packets_are_refused(raw, rule):
    with pytest.raises(mp.ProtocolError, match=rule):
        mp.decode(raw)


def test_umnt_is_unknown_upstream_but_known_in_the_thread():
    assert mp.decode(b"UMNT", mp.V4).tag == "UMNT"
    with pytest.raises(mp.ProtocolError, match="unknown magic UMNT"):
        mp.decode(b"UMNT", mp.MAIN)
    assert mp.MAIN.max_command == 65536 and mp.V4.max_command == 32768


def test_unknown_field_names_are_an_error():
    with pytest.raises(ValueError, match="no field"):
        mp.encode(mp.MOUNT, expected_fmt=1)


def test_args_memfd_layout():
    raw = mp.encode_args(["ext4", "/dev/vdb", "/mnt"])
    header = struct.pack(">II", mp.ARGS_MAGIC, 3)
    table = struct.pack(">IIIIII", 32, 5, 37, 9, 46, 5)
    assert raw == header + table + b"ext4\0/dev/vdb\0/mnt\0"
    assert mp.decode_args(raw) == ["ext4", "/dev/vdb", "/mnt"]


@pytest.mark.parametrize("raw, rule", [
    (b"ARGS", "no header"),
    (b"ARGZ" + bytes(4), "magic is ARGZ"),
    (struct.pack(">II", mp.ARGS_MAGIC, 0x7FFFFFFF), "past the end"),
    (struct.pack(">IIII", mp.ARGS_MAGIC, 1, 1 << 30, 4), "out of range"),
    (struct.pack(">IIII", mp.ARGS_MAGIC, 1, 16, 3) + b"abc", "unterminated"),
])
def test_corrupt_args_are_refused(raw, rule):
    with pytest.raises(mp.ProtocolError, match=rule):
        mp.decode_args(raw)


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def test_channel_passes_packets_whole_with_fds():
    a, b = seqpacket_pair()
    left, right = mp.Channel(a), mp.Channel(b)
    fd = os.open("/dev/null", os.O_RDONLY)
    left.send(mp.encode(mp.FILE_REPLY, text="fusedev"), [fd])
    got = right.recv()
    assert right.packet(got).text == "fusedev"
    assert len(got.fds) == 1 and mp.describe_fd(got.fds[0]) == "chr 1:3"
    assert os.get_inheritable(got.fds[0]) is False  # received with MSG_CMSG_CLOEXEC
    mp.close_fds([fd, *got.fds])
    left.send(b"")
    assert right.recv().eof
    left.close()
    assert right.recv().eof
    right.close()


def test_describe_fd_kinds(tmp_path):
    memfd = mp.memfd_with(b"x")
    d = os.open(tmp_path, os.O_RDONLY)
    s1, s2 = socket.socketpair()
    assert [mp.describe_fd(memfd), mp.describe_fd(d), mp.describe_fd(s1.fileno())] == ["memfd", "dir", "sock"]
    assert mp.describe_fd(987654).startswith("bad fd")
    mp.close_fds([memfd, d])
    s1.close()
    s2.close()


def converse(server_attack: str, argv: list[str], tmp_path) -> tuple[mp.Log, mp.Log, dict]:
    """The Python server and the Python helper over a real SEQPACKET pair (no mount is attempted)."""
    a, b = seqpacket_pair()
    a.settimeout(10)
    b.settimeout(10)
    server_log, helper_log = mp.Log(str(tmp_path / "server.jsonl")), mp.Log(None)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(rc=mp.serve(mp.Channel(a), server_attack, server_log)))
    thread.start()
    helper = mp.HelperSession(mp.Channel(b), helper_log, argv)
    helper.hello(mp.FLAG_ALLOW_OTHER)
    helper.files(fusedev_fd=mp.memfd_with(b""))
    outcome["helper"] = helper.serve_requests()
    helper.channel.close()
    thread.join(10)
    return server_log, helper_log, outcome


def test_handshake_and_commands_between_the_peers(tmp_path):
    server_log, helper_log, outcome = converse("repeated_source", ["ext4", "/dev/vdb", "/mnt"], tmp_path)
    assert outcome == {"rc": 0, "helper": {"end": "bye", "exitcode": 0}}
    events = [e["event"] for e in server_log.events]
    assert events[:4] == ["hello", "file", "args", "file"]
    assert server_log.events[0]["fields"] == {"min_version": 1, "max_version": 1, "flags": 1}
    assert server_log.events[2]["argv"] == ["ext4", "/dev/vdb", "/mnt"]
    assert server_log.events[3]["fds"] == ["memfd"]
    requests = [e for e in server_log.events if e["event"] == "request"]
    assert [r["answer"].get("errno") for r in requests[:2]] == ["OK", "OK"]  # the Python helper is lenient
    assert requests[-1]["answer"] == {"size": 0, "fds": [], "eof": True}  # BYEE, then the helper hangs up
    assert [json.loads(line)["event"] for line in (tmp_path / "server.jsonl").read_text().splitlines()] == events


def test_helper_opens_files_and_refuses_non_block_devices(tmp_path):
    a, b = seqpacket_pair()
    a.settimeout(10)
    server, helper = mp.Channel(a), mp.HelperSession(mp.Channel(b), mp.Log(None), ["x"])
    session = mp.ServerSession(server, mp.Log(None))
    thread = threading.Thread(target=lambda: (helper.serve_requests(), helper.channel.close()))
    thread.start()
    opened = session.request(mp.encode(mp.OPEN, text="/dev/null", open_flags=os.O_RDONLY))
    assert opened["answer"]["fds"] == ["chr 1:3"] and opened["answer"]["errno"] == "OK"
    bdev = session.request(mp.encode(mp.BDEV, text="/dev/null"))
    assert bdev["answer"]["errno"] == "ENOTBLK" and bdev["answer"]["fds"] == []
    missing = session.request(mp.encode(mp.OPEN, text=str(tmp_path / "nope")))
    assert missing["answer"]["errno"] == "ENOENT"
    assert session.bye(0)["answer"]["eof"]
    thread.join(10)
    server.close()


def test_every_server_attack_starts_with_a_valid_handshake(tmp_path):
    # Attacks that need no mount(2) run to their end against the Python helper.
    for attack in ["wrong_magic", "undersized", "string_without_nul", "unknown_command", "oversized"]:
        server_log, _, outcome = converse(attack, ["hostile", "src", "/mnt"], tmp_path)
        assert [e["event"] for e in server_log.events][:5] == ["hello", "file", "args", "file", "attack"], attack
        assert outcome["helper"]["end"] == ("eof" if attack == "oversized" else "refused"), outcome


def test_listen_makes_a_seqpacket_socket(tmp_path):
    path = str(tmp_path / "ext4")
    with mp.listen(path, 0o220) as server:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o220 and stat.S_ISSOCK(os.stat(path).st_mode)
        assert server.type == socket.SOCK_SEQPACKET


def test_run_helper_without_socket_is_the_fallback_code(tmp_path):
    log = mp.Log(None)
    assert mp.run_helper(str(tmp_path / "none"), "good", log, []) == mp.EXIT_FALLBACK
    assert log.events[0]["error"] == "ENOENT"


def test_systemd_socket_needs_listen_pid(monkeypatch):
    monkeypatch.delenv("LISTEN_PID", raising=False)
    with pytest.raises(mp.ProtocolError, match="LISTEN_PID"):
        mp.systemd_socket()


def test_package_imports_the_stdlib_and_itself_alone():
    # Guests run it with their own python3: nothing from the host's side of the package, no third parties.
    for path in Path(mp.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{path.name} imports from outside the package"
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_cli_runs_from_the_guest_layout_alone(tmp_path):
    # As in a guest: only the files guest_files() installs, no site-packages.
    lib = tmp_path / "lib"
    for dest, src in guest_files().items():
        if dest.startswith("lib/"):
            (lib / dest[4:]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, lib / dest[4:])
    cmd = module_command("mountproto").split()
    out = subprocess.run([sys.executable, "-S", *cmd[1:], "helper", "--help"], env={"PYTHONPATH": str(lib)},
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and "argv_is_socket" in out.stdout, out.stderr
