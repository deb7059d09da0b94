"""The `fuselab` command: the parser made of one module per command group, and one way to report errors."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable

from pytest_fuselab.cli import bench, bisect, corpus, execute, host, image, kernel, repro, run, shell
from pytest_fuselab.cli import hosts, stack
from pytest_fuselab.cli.options import add_settings, respell, settings_from
from pytest_fuselab.errors import FuselabError
from pytest_fuselab.lab import stderr_progress
from pytest_fuselab.text import printable

USAGE, INTERRUPTED = 2, 130
ADVICE = {  # what a person can do about an OSError on a path they gave (or the lab's cache)
    errno.EACCES: "choose a path you may write to, or fix its permissions",
    errno.EPERM: "choose a path you may write to, or fix its permissions",
    errno.EROFS: "it is on a read-only filesystem: choose a path on a writable one",
    errno.ENOSPC: "its filesystem is full: free some space or choose a path on a larger one",
    errno.EDQUOT: "your disk quota is used up there: free some space or choose another path",
    errno.ENOENT: "a directory on the way does not exist: create it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.EISDIR: "it is a directory: name a file",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def cmd_stack(args: argparse.Namespace) -> int:
    return stack.cli(args, stderr_progress)


def cmd_bisect_run(args: argparse.Namespace) -> int:
    return bisect.main(args, settings_from)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "setup": host.cmd_setup, "doctor": host.cmd_doctor, "image": image.cmd_image, "bench": bench.cmd_bench,
    "exec": execute.cmd_exec, "shell": shell.cmd_shell, "repro": repro.cmd_repro, "corpus": corpus.cmd_corpus,
    "stack": cmd_stack, "kernel": kernel.cmd_kernel, "bisect-run": cmd_bisect_run,
    "hosts": hosts.cmd_hosts,
}  # and "run", which also takes the arguments meant for pytest


def parser() -> argparse.ArgumentParser:
    """The `fuselab` parser, one subcommand (or group) from each module."""
    p = argparse.ArgumentParser(prog="fuselab", description="A QEMU lab for Linux filesystems and FUSE servers.")
    sub = p.add_subparsers(dest="subcommand", required=True)
    host.add_cli(sub)
    stack.add_cli(sub)
    kernel.add_cli(sub)
    bisect.add_cli(sub, add_settings)
    image.add_cli(sub)
    run.add_cli(sub)
    bench.add_cli(sub)
    execute.add_cli(sub)
    corpus.add_cli(sub)
    repro.add_cli(sub)
    shell.add_cli(sub)
    hosts.add_cli(sub)
    return p


def os_error_line(exc: OSError) -> str:
    """One line for an OSError about a path: the path, what failed, and what to do."""
    names = [os.fsdecode(p) if isinstance(p, (str, bytes, os.PathLike)) else str(p)
             for p in (exc.filename, exc.filename2) if p is not None]
    paths = printable(" -> ".join(names), lines=False)
    advice = ADVICE.get(exc.errno or 0, "check the path and its permissions")
    return f"{paths}: {exc.strerror or exc}; {advice}"


def main(argv: list[str] | None = None) -> int:
    """Run one `fuselab` command; a lab error is reported as `fuselab: error: ...` and status 2."""
    args, extra = parser().parse_known_args(argv)
    if extra and args.subcommand == "bisect-run":
        print(f"fuselab bisect-run: unrecognized arguments: {' '.join(extra)} (exit {bisect.SKIP}: cannot test)",
              file=sys.stderr)
        return bisect.SKIP
    if extra and args.subcommand != "run":
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.subcommand == "run":
            return run.cmd_run(args, extra)
        return HANDLERS[args.subcommand](args)
    except FuselabError as exc:
        print(f"fuselab: error: {printable(respell(str(exc), args))}", file=sys.stderr)
        return USAGE
    except OSError as exc:
        if exc.filename is None:  # not about a path: a bug of the lab, shown with its traceback
            raise
        print(f"fuselab: error: {os_error_line(exc)}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("fuselab: interrupted", file=sys.stderr)
        return INTERRUPTED
