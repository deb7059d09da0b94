"""The fuse-server side: one accepted connection (what `fuse_service_accept` does) and the named attacks on a helper."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Sequence
from typing import Any

from .channel import Channel, Log, close_fds, packet_summary
from .packets import (
    ARGV_NAME, BDEV, BYE, FILE_REPLY, FSOPEN, FSOPEN_FUSEBLK, FUSEDEV_NAME, HELLO, HELLO_REPLY, MAIN, MAX_SEGMENT,
    MNTOPTS, MNTPT, MOUNT, OPEN, PROTO_VERSION, SOURCE, UNMOUNT, V4, Dialect, Packet, ProtocolError,
    decode_args, encode, magic_of, pack, tag_of,
)



class ServerSession:
    """The fuse-server end of one accepted connection (what `fuse_service_accept` does)."""

    def __init__(self, channel: Channel, log: Log) -> None:
        self.channel, self.log = channel, log
        self.args: list[str] = []
        self.fusedev = -1
        self.hello: Packet | None = None

    def handshake(self, reply: bytes | None = None) -> None:
        """Receive hello, answer it, take the argv memfd and /dev/fuse."""
        got = self.channel.recv()
        self.log("hello", **packet_summary(self.channel, got))
        self.hello = self.channel.packet(got)
        if self.hello.magic != HELLO:
            raise ProtocolError(f"expected SAFT, got {self.hello.tag}")
        self.channel.send(reply if reply is not None else encode(HELLO_REPLY, self.channel.dialect,
                                                                  version=PROTO_VERSION))
        argv_fd = self.receive_file(ARGV_NAME)
        try:  # pread from 0, as libfuse does: the helper leaves the file offset at the end
            self.args = decode_args(os.pread(argv_fd, MAX_SEGMENT, 0))
        finally:
            os.close(argv_fd)
        self.log("args", argv=self.args)
        self.fusedev = self.receive_file(FUSEDEV_NAME)

    def receive_file(self, name: str) -> int:
        """Receive FILE `name` and return the one fd it must carry."""
        got = self.channel.recv()
        self.log("file", **packet_summary(self.channel, got))
        p = self.channel.packet(got)
        if p.magic != FILE_REPLY or p.text != name:
            close_fds(got.fds)
            raise ProtocolError(f"expected FILE {name!r}, got {p.tag} {p.text!r}")
        if p.fields["error"]:
            raise ProtocolError(f"helper could not give {name}: {errno.errorcode.get(p.fields['error'])}")
        if len(got.fds) != 1:
            close_fds(got.fds)
            raise ProtocolError(f"FILE {name!r} came with {len(got.fds)} fds")
        return got.fds[0]

    def request(self, data: bytes, fds: Sequence[int] = (), note: str = "") -> dict[str, Any]:
        """Send one command (any bytes) and read the helper's answer, which may be EOF."""
        entry: dict[str, Any] = {"sent": tag_of(int.from_bytes(data[:4], "big")) if len(data) >= 4
                                 else data.hex(), "size": len(data), "note": note}
        try:
            self.channel.send(data, fds)
        except OSError as exc:
            entry["send_error"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.log("request", **entry)
            return entry
        try:
            got = self.channel.recv()
        except OSError as exc:
            entry["recv_error"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.log("request", **entry)
            return entry
        entry["answer"] = packet_summary(self.channel, got)
        answer = entry["answer"]
        if "fields" in answer and "error" in answer["fields"]:
            answer["errno"] = errno.errorcode.get(answer["fields"]["error"], "OK")
        close_fds(got.fds)
        self.log("request", **entry)
        return entry

    def string(self, magic: int, value: str, note: str = "") -> dict[str, Any]:
        """Send a string command (NAME, OPTS...) and read the answer."""
        return self.request(encode(magic, self.channel.dialect, value), note=note)

    def mountpoint(self) -> str:
        """The mountpoint the caller named: argv is [subtype, source, mountpoint, ...]."""
        return self.args[2] if len(self.args) > 2 else "/nonexistent"

    def source(self) -> str:
        """The source the caller named (argv[1])."""
        return self.args[1] if len(self.args) > 1 else "none"

    def setup_mount(self) -> list[dict[str, Any]]:
        """TYPE, NAME, OPTS, MNTP as a well-behaved server sends them."""
        d = self.channel.dialect
        kind = encode(FSOPEN, d, "fuse." + (self.args[0] if self.args else "hostile")) if d is V4 \
            else encode(FSOPEN, d, fsopen_flags=0)
        mnt = pack(MNTPT, d, self.mountpoint(), {} if d is V4 else {"expected_fmt": stat.S_IFDIR})
        return [self.request(kind, note="type"), self.string(SOURCE, self.source(), "source"),
                self.string(MNTOPTS, "ro", "options"), self.request(mnt, note="mountpoint")]

    def bye(self, code: int = 0) -> dict[str, Any]:
        """BYEE; the helper exits after it, so the answer is EOF."""
        return self.request(encode(BYE, self.channel.dialect, exitcode=code), note="bye")


Attack = Callable[[ServerSession], object]
Make = Callable[[ServerSession], bytes]


def steps(*actions: Attack) -> Attack:
    """An attack made of actions run in order."""
    def run(s: ServerSession) -> None:
        for action in actions:
            action(s)
    return run


def req(make: Make, note: str = "", with_fd: bool = False) -> Attack:
    """Send the packet `make` builds (with /dev/fuse attached when with_fd) and log the answer."""
    return lambda s: s.request(make(s), [s.fusedev] if with_fd else [], note)


def packet(magic: int, text: str | None = None, nul: bool = True, dialect: Dialect = MAIN,
           **fields: int) -> Make:
    """A fixed packet, whatever the session."""
    return lambda s: pack(magic, dialect, text, fields, nul)


def at_mountpoint(**fields: int) -> Make:
    """MNTP naming the caller's mountpoint, with these fields."""
    return lambda s: pack(MNTPT, MAIN, s.mountpoint(), fields)


def die(code: int = 9) -> Attack:
    """The server process ends at once, without BYEE."""
    return lambda s: os._exit(code)


SETUP, BYE0 = ServerSession.setup_mount, (lambda s: s.bye(0))
MOUNT_NOW = req(packet(MOUNT), "mount")
SOURCE_NOW = req(lambda s: encode(SOURCE, MAIN, s.source()), "source")
DIR = stat.S_IFDIR

SERVER_ATTACKS: dict[str, Attack] = {
    # The positive control: a correct conversation up to a real mount, then a clean goodbye.
    "mount_then_bye": steps(SETUP, MOUNT_NOW, BYE0),
    "bye_failure": lambda s: s.bye(1),
    "wrong_magic": req(lambda s: b"XXXX" + bytes(4), "wrong magic"),
    "unknown_command": req(lambda s: magic_of(b"ZZZZ").to_bytes(4, "big"), "unknown command"),
    "undersized": req(lambda s: b"NA", "2-byte packet"),
    "empty_packet": req(lambda s: b"", "0-byte packet"),
    "oversized": req(lambda s: encode(SOURCE, MAIN, "x" * (s.channel.dialect.max_command + 1)), "over max"),
    "max_sized_source": steps(req(lambda s: encode(SOURCE, MAIN, "x" * (s.channel.dialect.max_command - 5)),
                                  "exactly max"), BYE0),
    "string_without_nul": steps(req(packet(SOURCE, "src", nul=False)), BYE0),
    "empty_string": steps(req(packet(SOURCE, "")), BYE0),
    "repeated_source": steps(req(packet(SOURCE, "a")), req(packet(SOURCE, "b")), BYE0),
    "repeated_options": steps(req(packet(MNTOPTS, "ro")), req(packet(MNTOPTS, "rw")), BYE0),
    "repeated_type": steps(req(packet(FSOPEN)), req(packet(FSOPEN)), BYE0),
    "repeated_mountpoint": steps(SETUP, req(at_mountpoint(expected_fmt=DIR)), BYE0),
    "mount_before_mountpoint": steps(req(packet(FSOPEN)), SOURCE_NOW, MOUNT_NOW, BYE0),
    "mount_before_anything": steps(MOUNT_NOW, BYE0),
    "unmount_before_mount": steps(req(packet(UNMOUNT, dialect=V4), "UMNT"), BYE0),
    "mountpoint_not_in_argv": steps(req(packet(MNTPT, "/etc", expected_fmt=DIR)), BYE0),
    "mountpoint_padding": steps(req(at_mountpoint(expected_fmt=DIR, padding=1)), BYE0),
    "mountpoint_weird_format": steps(req(at_mountpoint(expected_fmt=stat.S_IFCHR)), BYE0),
    "mountpoint_wrong_format": steps(req(at_mountpoint(expected_fmt=stat.S_IFREG)), BYE0),
    "allow_other": steps(req(packet(MNTOPTS, "rw,allow_other")), BYE0),
    "allow_root": steps(req(packet(MNTOPTS, "allow_root")), BYE0),
    "fsopen_unknown_flags": steps(req(packet(FSOPEN, fsopen_flags=0x80)), BYE0),
    "fsopen_fuseblk": steps(req(packet(FSOPEN, fsopen_flags=FSOPEN_FUSEBLK)), BYE0),
    "mount_wrong_size": steps(SETUP, req(packet(MOUNT, dialect=V4), "12-byte DOIT"), BYE0),
    "open_unknown_flags": steps(req(packet(OPEN, "/dev/null", request_flags=0x100)), BYE0),
    "open_without_nul": steps(req(packet(OPEN, "/dev/null", nul=False)), BYE0),
    "open_undersized": steps(req(lambda s: encode(OPEN, MAIN)[:12]), BYE0),
    "open_secret": steps(req(packet(OPEN, "/etc/shadow")), BYE0),
    "bdev_not_block": steps(req(packet(BDEV, "/etc/hostname")), BYE0),
    "unexpected_fd": steps(req(lambda s: encode(SOURCE, MAIN, s.source()), "command with an fd", True), BYE0),
    "die_before_bye": steps(SETUP, MOUNT_NOW, die()),
    "die_after_mountpoint": steps(SETUP, die()),
}


def serve(channel: Channel, attack: str, log: Log) -> int:
    """Run one named attack on an accepted connection; 0 when it ran to its end."""
    session = ServerSession(channel, log)
    try:
        session.handshake()
        log("attack", name=attack)
        SERVER_ATTACKS[attack](session)
    except (OSError, ProtocolError) as exc:
        log("stopped", error=str(exc))
        return 1
    finally:
        close_fds([session.fusedev] if session.fusedev >= 0 else [])
        channel.close()
    log("done")
    return 0


def systemd_socket() -> socket.socket:
    """The connection systemd hands an Accept=yes service: fd 3, when LISTEN_PID is us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        raise ProtocolError("no socket from systemd (LISTEN_PID/LISTEN_FDS unset): use --listen PATH")
    return socket.socket(fileno=3)


def listen(path: str, mode: int = 0o666) -> socket.socket:
    """A SEQPACKET listener at PATH, as a .socket unit with ListenSequentialPacket= makes it."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(path)
    os.chmod(path, mode)
    sock.listen(4)
    return sock
