"""A hostile fuse server against the real setuid fuservicemount3.

Our server (pytest_fuselab/mountproto.py) listens where the helper connects, completes the
handshake, then sends malformed or out-of-order traffic.  Each must be refused without harm:
the helper ends by itself (no signal, no hang), mounts nothing, and answers with the errno that
libfuse's util/mount_service.c documents for that case (EINVAL for bad layouts and repeats, EPERM
for privileged requests from users, EUSERS past mount_max...), or hangs up on what it cannot parse.
"""

from __future__ import annotations

import pytest

from pytest_fuselab.plugin.servicelab import USER, not_a_crash

# attack -> (answers the helper gives to our requests, in order; its exit status)
# "EOF" = the helper hung up instead of answering; the last request of most attacks is BYEE 0.
AS_ROOT = {
    "wrong_magic": (["EOF"], 1),
    "unknown_command": (["EOF"], 1),
    "undersized": (["EOF"], 1),
    "empty_packet": (["EOF"], 1),
    "oversized": (["EOF"], 1),
    "max_sized_source": (["OK", "EOF"], 0),
    "string_without_nul": (["EINVAL", "EOF"], 0),
    "empty_string": (["EINVAL", "EOF"], 0),
    "repeated_source": (["OK", "EINVAL", "EOF"], 0),
    "repeated_options": (["OK", "EINVAL", "EOF"], 0),
    "repeated_type": (["OK", "EINVAL", "EOF"], 0),
    "repeated_mountpoint": (["OK", "OK", "OK", "OK", "EINVAL", "EOF"], 0),
    "mount_before_mountpoint": (["OK", "OK", "EINVAL", "EOF"], 0),
    "mount_before_anything": (["EINVAL", "EOF"], 0),
    "unmount_before_mount": (["EOF"], 1),  # UMNT was removed upstream: an unknown command now
    "mountpoint_not_in_argv": (["EINVAL", "EOF"], 0),
    "mountpoint_padding": (["EINVAL", "EOF"], 0),
    "mountpoint_weird_format": (["EINVAL", "EOF"], 0),
    "mountpoint_wrong_format": (["EISDIR", "EOF"], 0),
    "fsopen_unknown_flags": (["EINVAL", "EOF"], 0),
    "mount_wrong_size": (["OK", "OK", "OK", "OK", "EINVAL", "EOF"], 0),
    "open_unknown_flags": (["EINVAL", "EOF"], 0),
    "open_without_nul": (["EINVAL", "EOF"], 0),
    "open_undersized": (["EINVAL", "EOF"], 0),
    "bdev_not_block": (["ENOTBLK", "EOF"], 0),
    "bye_failure": (["EOF"], 1),
    "die_after_mountpoint": (["OK", "OK", "OK", "OK"], 1),
}
AS_USER = {
    "fsopen_fuseblk": (["EPERM", "EOF"], 0),
    "open_secret": (["EACCES", "EOF"], 0),
    "allow_other": (["EPERM", "EOF"], 0),
    "allow_root": (["EPERM", "EOF"], 0),
}


def check(conversation, answers, status):
    why = conversation.explain()
    assert not_a_crash(conversation.status), f"the helper did not end by itself\n{why}"
    assert not conversation.mounts, f"something is mounted\n{why}"
    assert conversation.answers() == answers, why
    assert conversation.status == status, why


@pytest.mark.parametrize("attack", sorted(AS_ROOT))
def test_refused_as_root(hostile_server, attack):
    answers, status = AS_ROOT[attack]
    check(hostile_server.converse(attack), answers, status)


@pytest.mark.parametrize("attack", sorted(AS_USER))
def test_refused_as_user(hostile_server, attack):
    hostile_server.service.require("fuservicemount3-setuid")
    hostile_server.service.conf()  # no user_allow_other
    mnt = hostile_server.service.user_dir("mnt")
    answers, status = AS_USER[attack]
    check(hostile_server.converse(attack, mountpoint=mnt, user=USER), answers, status)


def test_unexpected_fd_is_not_received(hostile_server):
    """fuservicemount3 turns SO_PASSRIGHTS off: an fd sent with a command is refused by the kernel
    (sendmsg fails) or dropped; the command itself is still judged on its bytes."""
    c = hostile_server.converse("unexpected_fd")
    why = c.explain()
    assert not_a_crash(c.status) and not c.mounts, why
    first = c.requests()[0]
    assert first.get("send_error") in ("EPERM", None), why
    if first.get("send_error") is None:
        assert first["answer"]["fds"] == [], why


def test_positive_control_mounts(hostile_server):
    """The same server, behaving, gets a real mount: the refusals above are not an artefact."""
    c = hostile_server.converse("mount_then_bye")
    why = c.explain()
    hostile_server.service.sh("umount -l /mnt/hostile")
    assert c.answers() == ["OK", "OK", "OK", "OK", "OK", "EOF"], why
    assert c.status == 0 and "/mnt/hostile" in c.mounts, why


def test_server_dying_before_goodbye_leaves_nothing_mounted(hostile_server):
    """The server mounts (DOIT answered OK) and dies before BYEE: the helper must not leave a
    mount behind (libfuse main removed UMNT, so only the helper can clean up)."""
    svc = hostile_server.service
    c = hostile_server.converse("die_before_bye")
    why = c.explain()
    leftover = list(c.mounts)
    access = svc.sh("stat /mnt/hostile 2>&1; ls /mnt/hostile 2>&1").stdout.strip()
    svc.sh("umount -l /mnt/hostile")
    assert not_a_crash(c.status) and c.status != 0, why
    assert c.answers() == ["OK", "OK", "OK", "OK", "OK"], why
    assert "without saying goodbye" in c.stderr, why
    if leftover:
        pytest.xfail(f"finding: fuservicemount3 exits {c.status} ('fuse server exited without saying goodbye') "
                     f"but leaves the mount at /mnt/hostile in place (dead: {access.splitlines()[-1]}); "
                     "libfuse main removed UMNT and the helper does not unmount on this path")


def test_mount_max_gives_eusers(hostile_server):
    svc = hostile_server.service
    svc.require("fuservicemount3-setuid")
    svc.conf(mount_max="0")
    c = hostile_server.converse("mount_then_bye", mountpoint=svc.user_dir("mnt"), user=USER)
    assert c.answers()[4] == "EUSERS" and not c.mounts, c.explain()
    assert "too many FUSE filesystems mounted" in c.stderr, c.explain()


@pytest.mark.parametrize("place, errno_name", [
    ("rootdir", "EPERM"),     # a directory the user does not own
    ("proc", "EPERM"),        # mounting over /proc is forbidden
    ("devnull", "EACCES"),    # not a directory or regular file
])
def test_forbidden_mountpoints_for_users(hostile_server, place, errno_name):
    svc = hostile_server.service
    svc.require("fuservicemount3-setuid")
    mountpoint = {"rootdir": "/mnt/rootowned", "proc": "/proc/self/fdinfo", "devnull": "/dev/null"}[place]
    c = hostile_server.converse("mount_then_bye", mountpoint=mountpoint, user=USER)
    why = c.explain()
    assert not_a_crash(c.status) and not c.mounts, why
    assert errno_name in c.answers(), why
