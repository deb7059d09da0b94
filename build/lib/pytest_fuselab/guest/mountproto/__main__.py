"""Run one side of a mount-service conversation in the guest: `serve` (a hostile fuse server) or `helper`."""

from __future__ import annotations

import argparse
import sys

from .channel import Channel, Log
from .helper import HELPER_ATTACKS, run_helper
from .packets import DIALECTS
from .server import SERVER_ATTACKS, listen, serve, systemd_socket


def parser() -> argparse.ArgumentParser:
    """The command line: `serve` and `helper`, each with its attacks."""
    parser = argparse.ArgumentParser(prog="python3 -m pytest_fuselab.guest.mountproto",
                                     description="Both sides of libfuse's mount-service protocol, for attacks.")
    sub = parser.add_subparsers(dest="side", required=True)
    srv = sub.add_parser("serve", help="be a (hostile) fuse server behind the service socket")
    srv.add_argument("--attack", choices=sorted(SERVER_ATTACKS), required=True)
    srv.add_argument("--listen", help="bind this socket path and serve one connection (else fd 3 from systemd)")
    srv.add_argument("--log", help="append the transcript here (JSON lines)")
    srv.add_argument("--dialect", choices=sorted(DIALECTS), default="main")
    hlp = sub.add_parser("helper", help="be a (hostile) mount helper towards a real server")
    hlp.add_argument("--attack", choices=sorted(HELPER_ATTACKS), required=True)
    hlp.add_argument("--socket", required=True)
    hlp.add_argument("--log")
    hlp.add_argument("--dialect", choices=sorted(DIALECTS), default="main")
    hlp.add_argument("args", nargs="*", help="argv for the server: SUBTYPE SOURCE MOUNTPOINT [-o OPTS]")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve one connection or drive one helper conversation; the exit status of that side."""
    ns = parser().parse_args(argv)
    log, dialect = Log(ns.log), DIALECTS[ns.dialect]
    if ns.side == "helper":
        return run_helper(ns.socket, ns.attack, log, ns.args, dialect)
    if ns.listen:
        with listen(ns.listen) as server:
            log("listening", socket=ns.listen)
            conn, _ = server.accept()
    else:
        conn = systemd_socket()
    return serve(Channel(conn, dialect), ns.attack, log)


if __name__ == "__main__":
    sys.exit(main())
