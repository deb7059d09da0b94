"""`fuselab hosts setup|check|list HOSTS_TOML`: prepare and inspect the machines of a run."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor

from pytest_fuselab.hosts import bundle as bundles
from pytest_fuselab.hosts import check, config, setup, ssh


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab hosts setup|check|list HOSTS_TOML [--only NAME...]`."""
    hosts = sub.add_parser("hosts", help="prepare (setup), inspect (check) or list the hosts of a hosts.toml")
    hsub = hosts.add_subparsers(dest="hosts_command", required=True)
    for name, text in (("setup", "send the project, its wheels and the guest image; create the environment"),
                       ("check", "run `fuselab doctor` on every host: one table"),
                       ("list", "the hosts as hosts.toml describes them, and whether they answer")):
        cmd = hsub.add_parser(name, help=text)
        cmd.add_argument("hosts_toml", metavar="HOSTS_TOML")
        cmd.add_argument("--only", action="append", default=[], metavar="NAME", help="only this host (repeatable)")
        if name == "setup":
            cmd.add_argument("--no-image", action="store_true", help="do not send the guest image")
            cmd.add_argument("--image", default="sid", help="recipe whose built image is sent (default: %(default)s)")


def _say(message: str) -> None:
    print(f"fuselab: {message}", file=sys.stderr, flush=True)


def cmd_hosts(args: argparse.Namespace) -> int:
    hosts = config.load(args.hosts_toml)
    chosen = hosts.named(args.only)
    reaches = ssh.probe_all(hosts, chosen)
    if args.hosts_command == "list":
        for reach in reaches:
            state = f"unreachable: {reach.problem}" if reach.problem else (
                f"{reach.cores} cores, {reach.memory_mib} MiB, {reach.guests} guest slots, "
                + ("set up" if reach.ready else "not set up"))
            print(f"{reach.host.name}  {reach.host.ssh}  {reach.host.workdir}  {state}")
        return 1 if any(r.problem for r in reaches) else 0
    if args.hosts_command == "check":
        for line in check.table(check.rows(hosts, reaches)):
            print(line)
        return 0 if all(not r.problem and r.ready for r in reaches) else 1
    return _setup(args, hosts, reaches)


def _setup(args: argparse.Namespace, hosts: config.HostsFile, reaches: list[ssh.Reach]) -> int:
    bundle = bundles.ensure(_say)
    image = None if args.no_image else setup.controller_image(args.image, _say)
    usable = []
    for reach in reaches:
        mismatch = None if reach.problem else setup.python_mismatch(reach)
        if mismatch:
            print(f"{reach.host.name}: FAILED: {mismatch}")
        else:
            usable.append(reach)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(usable)))) as pool:
        outcomes = list(pool.map(lambda r: setup.setup_host(hosts, r, bundle, image, _say), usable))
    for outcome in outcomes:
        print(f"{outcome.host}: " + ("ok: " + ", ".join(outcome.done) if outcome.ok else f"FAILED: {outcome.problem}"))
    return 0 if len(outcomes) == len(reaches) and all(o.ok for o in outcomes) else 1
