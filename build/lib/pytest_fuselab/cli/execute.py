"""`fuselab exec COMMAND`: one shell command in a fresh guest, its output and exit status passed through."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_fuselab.cli.options import add_settings, seconds, settings_from
from pytest_fuselab.lab import Lab
from pytest_fuselab.workdirs import work_dir

TIMED_OUT = 124  # what timeout(1) exits with


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab exec`."""
    ex = sub.add_parser("exec", help="run one shell command in a fresh guest")
    ex.add_argument("command")
    ex.add_argument("--timeout", type=seconds(7 * 86400), default=300.0,
                    help="seconds the command may take (default: %(default)s)")
    add_settings(ex)


def cmd_exec(args: argparse.Namespace) -> int:
    with work_dir("fuselab-exec-") as tmp:
        lab = Lab(settings_from(args), Path(tmp))
        with lab.guest() as guest:
            result = guest.run(args.command, timeout=args.timeout, check=False)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            return TIMED_OUT if result.timed_out else result.exit_status
