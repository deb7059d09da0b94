"""`fuselab setup` and `fuselab doctor`: the host's packages, and what the lab finds on this host."""

from __future__ import annotations

import argparse

from pytest_fuselab import capabilities, host
from pytest_fuselab.cli.options import add_settings, settings_from


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab setup` and `fuselab doctor`."""
    sub.add_parser("setup", help="install the host packages the lab needs (apt, as root)")
    doctor = sub.add_parser("doctor",
                            help="report QEMU, acceleration (probed), disk, cache and the stack's capabilities")
    doctor.add_argument("--no-probe", action="store_true", help="do not start a guest to probe the FUSE stack")
    add_settings(doctor)


def cmd_setup(args: argparse.Namespace) -> int:
    return host.setup()


def cmd_doctor(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    rows = host.doctor_lines(settings.accel)
    if not args.no_probe:
        rows += capabilities.doctor_rows(settings)
    width = max(len(topic) for topic, _ in rows)
    for topic, finding in rows:
        print(f"{topic.ljust(width)}  {finding}")
    return 1 if any("MISSING" in finding for _, finding in rows) else 0
