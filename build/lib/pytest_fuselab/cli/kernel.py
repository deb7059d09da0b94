"""`fuselab kernel build TREE` and `fuselab kernel check KERNEL`: a kernel made and checked for the lab."""

from __future__ import annotations

import argparse

from pytest_fuselab.build.kernel import build as kbuild
from pytest_fuselab.build.kernel import config as kconfig
from pytest_fuselab.cli.options import existing, whole
from pytest_fuselab.lab import stderr_progress
from pytest_fuselab.text import printable

MOST_JOBS = 4096


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab kernel build TREE` and `fuselab kernel check KERNEL`."""
    p = sub.add_parser("kernel", help="build a kernel tree for the lab, or check a kernel's config")
    actions = p.add_subparsers(dest="action", required=True)
    b = actions.add_parser("build", help="configure (lab fragment + olddefconfig) and build bzImage and modules")
    b.add_argument("tree", type=existing(directory=True), help="a kernel source tree")
    b.add_argument("--debug", action="store_true", help="add the debugging fragment (KASAN, lockdep, ...)")
    b.add_argument("--base", choices=kbuild.BASES, default="current",
                   help="start from defconfig, tinyconfig, or the tree's .config (default; defconfig if none)")
    b.add_argument("-j", "--jobs", type=whole(1, MOST_JOBS), help="parallel make jobs (default: one per CPU)")
    b.add_argument("--nice", type=whole(-20, 19), default=0, help="run make under nice -n N")
    b.add_argument("--no-configure", action="store_true", help="build the .config as it is")
    c = actions.add_parser("check", help="check a kernel's config against what the lab needs, without booting")
    c.add_argument("kernel", type=existing(), help="a bzImage file or a kernel build tree")
    c.add_argument("--modules", type=existing(directory=True), help="its modules directory")


def cmd_kernel(args: argparse.Namespace) -> int:
    return build(args) if args.action == "build" else check(args)


def build(args: argparse.Namespace) -> int:
    done = kbuild.build(args.tree, stderr_progress, args.debug, args.base, args.jobs, args.nice,
                        not args.no_configure)
    print(f"{done.bzimage}  built in {done.seconds:.0f} s"
          + (f"; {len(done.unmet)} fragment options not taken" if done.unmet else ""))
    return 0


def check(args: argparse.Namespace) -> int:
    from pytest_fuselab.build.kernel.boot import locate

    found = locate(args.kernel.resolve(), args.modules.resolve() if args.modules else None, stderr_progress)
    assert found is not None
    print(printable(found.describe()))
    if found.config is not None:
        verdict = kconfig.check(found.config, found.modules is not None)
        for line in verdict.scenario:
            print(printable(f"scenarios: {line}", lines=False))
        print("config: everything the lab needs to boot is there")
    return 0

