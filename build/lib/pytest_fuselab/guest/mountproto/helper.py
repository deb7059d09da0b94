"""The mount-helper side: connect to a server's socket, hand over argv and /dev/fuse, answer (or attack) it."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import struct
from collections.abc import Callable, Sequence
from typing import Any

from .channel import Channel, Log, Received, close_fds, packet_summary
from .packets import (
    ARGS_MAGIC, ARGV_NAME, BDEV, BYE, EXIT_FALLBACK, FILE_REPLY, FSOPEN, FUSEDEV_NAME, HELLO, MAIN, MNTOPTS,
    MNTPT, MOUNT, OPEN, PROTO_VERSION, SIMPLE_REPLY, SOURCE, Dialect, Packet, ProtocolError, encode,
    encode_args, pack,
)



def memfd_with(data: bytes) -> int:
    """A close-on-exec memfd holding `data` (its offset left at the end, as the helper leaves it)."""
    fd = os.memfd_create("fuse service argv", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


class HelperSession:
    """The mount-helper end: connect, hello, send argv and /dev/fuse, answer the server."""

    def __init__(self, channel: Channel, log: Log, argv: list[str]) -> None:
        self.channel, self.log, self.argv = channel, log, argv
        self.mounted = ""
        self.fusedev = -1
        self.wanted: dict[str, object] = {}  # what the server asked for: source, options, mountpoint, type

    @classmethod
    def connect(cls, path: str, log: Log, argv: list[str], dialect: Dialect = MAIN) -> HelperSession:
        """Connect to the server's socket at `path`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.connect(path)
        log("connected", socket=path)
        return cls(Channel(sock, dialect), log, argv)

    def send(self, data: bytes, fds: Sequence[int] = (), note: str = "") -> bool:
        """Send one packet and log it; False when the send failed."""
        try:
            self.channel.send(data, fds)
        except OSError as exc:
            self.log("send", note=note, size=len(data), error=errno.errorcode.get(exc.errno or 0, "?"))
            return False
        self.log("send", note=note, size=len(data), fds=len(fds))
        return True

    def answer(self) -> dict[str, Any]:
        """Wait for the server's next packet (or EOF) and log it."""
        try:
            got = self.channel.recv()
        except OSError as exc:
            entry = {"recv_error": errno.errorcode.get(exc.errno or 0, "?")}
            self.log("recv", **entry)
            return entry
        summary = packet_summary(self.channel, got)
        close_fds(got.fds)
        self.log("recv", **summary)
        return summary

    def hello(self, flags: int = 0, **override: int) -> dict[str, Any]:
        """Send SAFT (fields overridable) and return the server's answer."""
        fields = {"min_version": PROTO_VERSION, "max_version": PROTO_VERSION, "flags": flags, **override}
        self.send(pack(HELLO, self.channel.dialect, None, fields), note="hello")
        return self.answer()

    def send_file(self, name: str, fds: Sequence[int], error: int = 0) -> bool:
        """Send FILE `name` with `fds` (none when `error` is set)."""
        return self.send(encode(FILE_REPLY, self.channel.dialect, name, error=error), fds, note=f"file {name}")

    def files(self, argv_fd: int | None = None, fusedev_fd: int | None = None) -> None:
        """Send argv (a memfd in ARGS layout) and /dev/fuse, or the fds given instead."""
        own = []
        if argv_fd is None:
            argv_fd = memfd_with(encode_args(self.argv))
            own.append(argv_fd)
        if fusedev_fd is None:
            fusedev_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
            own.append(fusedev_fd)
        self.fusedev = fusedev_fd
        self.send_file(ARGV_NAME, [argv_fd])
        self.send_file(FUSEDEV_NAME, [fusedev_fd])
        close_fds([fd for fd in own if fd != fusedev_fd])

    def serve_requests(self, reply: Callable[[HelperSession, Packet, Received], bool] | None = None,
                       limit: int = 64) -> dict[str, Any]:
        """Answer the server's commands until BYEE or EOF; `reply` may override any answer."""
        for _ in range(limit):
            got = self.channel.recv()
            summary = packet_summary(self.channel, got)
            self.log("command", **summary)
            close_fds(got.fds)
            if got.eof:
                return {"end": "eof"}
            try:
                packet = self.channel.packet(got)
            except ProtocolError as exc:  # fuservicemount3 gives up on any such packet
                return {"end": "refused", "error": str(exc)}
            if packet.magic == BYE:
                return {"end": "bye", "exitcode": packet.fields["exitcode"]}
            if reply is None or not reply(self, packet, got):
                self.honest_reply(packet)
        return {"end": "limit"}

    def honest_reply(self, packet: Packet) -> None:
        """What fuservicemount3 answers (as root): open files, accept strings, mount on DOIT."""
        d = self.channel.dialect
        if packet.magic in (OPEN, BDEV):
            self.reply_open(packet)
        elif packet.magic == MOUNT:
            self.send(encode(SIMPLE_REPLY, d, error=self.do_mount()), note="mount reply")
        else:
            self.remember(packet)
            self.send(encode(SIMPLE_REPLY, d, error=0), note=f"{packet.tag} reply")

    def remember(self, packet: Packet) -> None:
        """Keep what a string command asked for, for the mount."""
        keys = {SOURCE: "source", MNTOPTS: "options", MNTPT: "mountpoint", FSOPEN: "type"}
        if packet.magic in keys:
            self.wanted[keys[packet.magic]] = packet.text if packet.text is not None else packet.fields

    def reply_open(self, packet: Packet) -> None:
        """Open the file OPEN/BDEV names and send it, or the errno; BDEV must be a block device."""
        path = packet.text or ""
        try:
            fd = os.open(path, packet.fields["open_flags"] | os.O_CLOEXEC, packet.fields["create_mode"])
        except OSError as exc:
            self.send_file(path, [], error=exc.errno or errno.EIO)
            return
        if packet.magic == BDEV and not stat.S_ISBLK(os.fstat(fd).st_mode):
            os.close(fd)
            self.send_file(path, [], error=errno.ENOTBLK)
            return
        self.send_file(path, [fd])
        os.close(fd)

    def do_mount(self) -> int:
        """mount(2) the fuse connection where the server asked; positive errno or 0."""
        target = str(self.wanted.get("mountpoint") or "")
        source = str(self.wanted.get("source") or "none")
        opts = str(self.wanted.get("options") or "")
        subtype = self.argv[0] if self.argv else "hostile"
        data = f"{opts + ',' if opts else ''}fd={self.fusedev},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}"
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.mount(source.encode(), target.encode(), f"fuse.{subtype}".encode(), 0, data.encode())
        if rc != 0:
            return ctypes.get_errno()
        self.mounted = target
        return 0


HelperAttack = Callable[[HelperSession], dict[str, Any]]


def _after_hello(flags: int = 0, **override: int) -> HelperAttack:
    """Only a hello, with these flags and fields."""
    return lambda h: h.hello(flags, **override)


def _file_fd(open_fd: Callable[[], int], which: str) -> HelperAttack:
    """An honest conversation, except that FILE `which` carries the fd `open_fd` makes."""
    def attack(h: HelperSession) -> dict[str, Any]:
        h.hello()
        fd = open_fd()
        if which == ARGV_NAME:
            h.files(argv_fd=fd)
        else:
            h.files(fusedev_fd=fd)
        return h.serve_requests()
    return attack


def _raw_after_hello(data: bytes, fds: Callable[[], list[int]] = list) -> HelperAttack:
    """A hello, then `data` as the next packet."""
    def attack(h: HelperSession) -> dict[str, Any]:
        h.hello()
        h.send(data, fds(), note="raw")
        return h.answer()
    return attack


def _args_file(data: bytes) -> HelperAttack:
    """An honest conversation whose argv memfd holds `data`."""
    return _file_fd(lambda: memfd_with(data), ARGV_NAME)


def _dev(path: str, flags: int = os.O_RDONLY) -> Callable[[], int]:
    """An opener of `path`."""
    return lambda: os.open(path, flags | os.O_CLOEXEC)


def _good(h: HelperSession) -> dict[str, Any]:
    """The honest helper, up to the mount and BYEE."""
    h.hello()
    h.files()
    return h.serve_requests()


def _refuse_all(h: HelperSession) -> dict[str, Any]:
    """Refuse every command: EACCES for files, EPERM for the rest."""
    h.hello()
    h.files()

    def refuse(h: HelperSession, p: Packet, got: Received) -> bool:
        if p.magic in (OPEN, BDEV):
            h.send_file(p.text or "", [], error=errno.EACCES)
        else:
            h.send(encode(SIMPLE_REPLY, h.channel.dialect, error=errno.EPERM))
        return True
    return h.serve_requests(refuse)


def _wrong_replies(h: HelperSession) -> dict[str, Any]:
    """Answer every command with the other kind of reply (REPL for OPEN, FILE for strings)."""
    h.hello()
    h.files()

    def swap(h: HelperSession, p: Packet, got: Received) -> bool:
        if p.magic in (OPEN, BDEV):
            h.send(encode(SIMPLE_REPLY, h.channel.dialect, error=0))
        else:
            h.send_file("x", [])
        return True
    return h.serve_requests(swap)


def _open_wrong_type(h: HelperSession) -> dict[str, Any]:
    """Answer OPEN/BDEV for the device with a socket fd under the requested name."""
    h.hello()
    h.files()

    def sock_fd(h: HelperSession, p: Packet, got: Received) -> bool:
        if p.magic not in (OPEN, BDEV):
            return False
        a, b = socket.socketpair()
        h.send_file(p.text or "", [a.fileno()])
        a.close()
        b.close()
        return True
    return h.serve_requests(sock_fd)


def _argv_no_nul(h: HelperSession) -> dict[str, Any]:
    """FILE "argv" whose name lacks its NUL, then the rest of an honest conversation."""
    h.hello()
    argv_fd = memfd_with(encode_args(h.argv))
    h.send(encode(FILE_REPLY, h.channel.dialect, ARGV_NAME, nul=False), [argv_fd], note="argv without NUL")
    os.close(argv_fd)
    h.fusedev = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    h.send_file(FUSEDEV_NAME, [h.fusedev])
    return h.serve_requests()


HELPER_ATTACKS: dict[str, HelperAttack] = {
    "good": _good,
    "refuse_all": _refuse_all,
    "hello_wrong_magic": lambda h: (h.send(b"TFAS" + bytes(8)), h.answer())[1],
    "hello_undersized": lambda h: (h.send(encode(HELLO)[:8]), h.answer())[1],
    "hello_oversized": lambda h: (h.send(encode(HELLO) + bytes(4096)), h.answer())[1],
    "hello_empty": lambda h: (h.send(b""), h.answer())[1],
    "hello_unknown_flags": _after_hello(1 << 7),
    "hello_min_above_max": _after_hello(min_version=2, max_version=1),
    "hello_future_version": _after_hello(min_version=2, max_version=9),
    "hello_then_close": lambda h: (h.hello(), h.send(b"", note="empty packet"), {"end": "sent empty"})[-1],
    "hello_twice": lambda h: (h.hello(), h.hello())[1],
    "files_swapped": lambda h: (h.hello(), h.send_file(FUSEDEV_NAME, [os.open("/dev/fuse", os.O_RDWR)]),
                                h.answer())[-1],
    "argv_without_fd": lambda h: (h.hello(), h.send_file(ARGV_NAME, []), h.answer())[-1],
    "argv_two_fds": lambda h: (h.hello(), h.send_file(ARGV_NAME, [memfd_with(encode_args(h.argv)),
                                                                 os.open("/dev/null", os.O_RDONLY)]),
                               h.answer())[-1],
    "argv_error": lambda h: (h.hello(), h.send_file(ARGV_NAME, [], error=errno.EIO), h.answer())[-1],
    "argv_no_nul": _argv_no_nul,
    "argv_unknown_command": _raw_after_hello(b"ZZZZ" + bytes(12)),
    "argv_is_socket": _file_fd(lambda: os.dup(socket.socketpair()[0].fileno()), ARGV_NAME),
    "argv_is_devnull": _file_fd(_dev("/dev/null"), ARGV_NAME),
    "argv_is_directory": _file_fd(_dev("/", os.O_RDONLY | os.O_DIRECTORY), ARGV_NAME),
    "args_bad_magic": _args_file(b"ARGZ" + encode_args(["ext4"])[4:]),
    "args_huge_argc": _args_file(struct.pack(">II", ARGS_MAGIC, 0x7FFFFFFF)),
    "args_out_of_range": _args_file(struct.pack(">IIII", ARGS_MAGIC, 1, 1 << 30, 1 << 30)),
    "args_empty": _args_file(b""),
    "fusedev_is_devnull": _file_fd(_dev("/dev/null", os.O_RDWR), FUSEDEV_NAME),
    "fusedev_is_memfd": _file_fd(lambda: memfd_with(b"\0" * 64), FUSEDEV_NAME),
    "wrong_replies": _wrong_replies,
    "open_wrong_type": _open_wrong_type,
}


def run_helper(path: str, attack: str, log: Log, argv: list[str], dialect: Dialect = MAIN) -> int:
    """Drive a real server through one attack; 0 when the conversation ran to its end."""
    try:
        session = HelperSession.connect(path, log, argv, dialect)
    except OSError as exc:
        log("connect", error=errno.errorcode.get(exc.errno or 0, str(exc)))
        return EXIT_FALLBACK if exc.errno in (errno.ENOENT, errno.ECONNREFUSED) else 1
    try:
        result = HELPER_ATTACKS[attack](session)
        log("result", **result, mounted=session.mounted)
    except (OSError, ProtocolError) as exc:
        log("stopped", error=str(exc), mounted=session.mounted)
        return 1
    finally:
        session.channel.close()
    return 0

