"""Both sides of libfuse's mount-service packet protocol (fuservicemount3 <-> fuse server), stdlib only.

`packets` holds the layouts of both dialects and their codecs, `channel` the SEQPACKET transport
and the transcript, `server` a (hostile) fuse server, `helper` a (hostile) mount helper.  In a
guest (see pytest_fuselab.guest.module_command):

    python3 -m pytest_fuselab.guest.mountproto serve --attack NAME --log FILE [--listen PATH | fd 3 from systemd]
    python3 -m pytest_fuselab.guest.mountproto helper --attack NAME --socket PATH --log FILE -- SUBTYPE SOURCE MNT
"""

from __future__ import annotations

from .channel import Channel, Log, Received, close_fds, describe_fd, packet_summary
from .helper import HELPER_ATTACKS, HelperSession, memfd_with, run_helper
from .packets import (
    ARGS_MAGIC, ARGV_NAME, BDEV, BYE, DIALECTS, EXIT_FALLBACK, FILE_REPLY, FLAG_ALLOW_OTHER, FLAG_FUSEBLK,
    FSOPEN, FSOPEN_FUSEBLK, FUSEDEV_NAME, HELLO, HELLO_REPLY, MAIN, MAX_SEGMENT, MNTOPTS, MNTPT, MOUNT,
    MTABOPTS, OPEN, OPEN_QUIET, PROTO_VERSION, SIMPLE_REPLY, SOURCE, UNMOUNT, V4, Dialect, Layout, Packet,
    ProtocolError, decode, decode_args, encode, encode_args, magic_of, pack, tag_of,
)
from .server import SERVER_ATTACKS, ServerSession, listen, serve, systemd_socket

__all__ = [
    "ARGS_MAGIC", "ARGV_NAME", "BDEV", "BYE", "DIALECTS", "EXIT_FALLBACK", "FILE_REPLY", "FLAG_ALLOW_OTHER",
    "FLAG_FUSEBLK", "FSOPEN", "FSOPEN_FUSEBLK", "FUSEDEV_NAME", "HELLO", "HELLO_REPLY", "HELPER_ATTACKS", "MAIN",
    "MAX_SEGMENT", "MNTOPTS", "MNTPT", "MOUNT", "MTABOPTS", "OPEN", "OPEN_QUIET", "PROTO_VERSION",
    "SERVER_ATTACKS", "SIMPLE_REPLY", "SOURCE", "UNMOUNT", "V4", "Channel", "Dialect", "HelperSession", "Layout",
    "Log", "Packet", "ProtocolError", "Received", "ServerSession", "close_fds", "decode", "decode_args",
    "describe_fd", "encode", "encode_args", "listen", "magic_of", "memfd_with", "pack", "packet_summary",
    "run_helper", "serve", "systemd_socket", "tag_of",
]
