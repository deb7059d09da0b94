"""`fuselab repro FILES`: images and syzkaller reproducers through every driver, each judged."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_fuselab import capabilities
from pytest_fuselab.cli.options import add_settings, output_file, settings_from, whole
from pytest_fuselab.errors import SettingError
from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.lab import Lab
from pytest_fuselab.settings import Settings
from pytest_fuselab.workdirs import work_dir

if TYPE_CHECKING:
    from pytest_fuselab.judge.containment import Verdict
    from pytest_fuselab.reproducers import Extracted

MOST_MIB = 1 << 20  # 1 TiB: more than any image a guest could take
MOST_GUESTS = 64
MOST_ROUNDS = 1000


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab repro`."""
    rp = sub.add_parser("repro", help="run images or syzkaller reproducers through the drivers and judge")
    rp.add_argument("files", nargs="+", help="images (.gz/.xz/.zst/.bz2 too), .syz programs, C reproducers, dirs")
    rp.add_argument("--driver", action="append", choices=list(DRIVERS),
                    help="driver to use (repeatable; default: all)")
    rp.add_argument("--repeat", type=whole(1, MOST_ROUNDS), default=1,
                    help="run everything N times (how reliably it fires)")
    rp.add_argument("--guests", type=whole(1, MOST_GUESTS), default=1,
                    help="guests judging images side by side (default 1)")
    rp.add_argument("--json", type=output_file, help="write the verdicts as JSON lines to this file")
    rp.add_argument("--html", type=output_file, help="write the images x drivers matrix as a self-contained HTML page")
    rp.add_argument("--size-limit", type=whole(1, MOST_MIB), default=512,
                    help="largest image to accept, in MiB (default 512)")
    add_settings(rp)


def cmd_repro(args: argparse.Namespace) -> int:
    """Extract the images of reproducers or image files, run each through the drivers, judge."""
    from pytest_fuselab import reproducers
    from pytest_fuselab.judge import matrix

    settings = settings_from(args)  # a bad setting is refused before any file is read
    items = reproducers.extract_all([Path(p) for p in args.files], size_limit=args.size_limit << 20)
    verdicts = judge(args, settings, items)
    if args.json:
        args.json.write_text("".join(json.dumps(v.to_json()) + "\n" for v in verdicts))
    if args.html:
        args.html.write_text(matrix.page(verdicts))
        print(f"fuselab: matrix page in {args.html}")
    print("\n".join(matrix.terminal(verdicts)))
    if args.repeat > 1:
        from pytest_fuselab.judge import triage

        print("\n".join(triage.fire_rates(verdicts, args.repeat)))
    breaches = [v for v in verdicts if v.verdict == "breach"]
    print(f"{len(verdicts)} verdicts: {len(breaches)} containment breaches, "
          f"{sum(v.verdict == 'finding' for v in verdicts)} kernel findings")
    return 1 if breaches else 0


def judge(args: argparse.Namespace, settings: Settings, items: list[Extracted]) -> list[Verdict]:
    """Every item through the chosen drivers, `--repeat` times, each verdict printed as it comes."""
    from pytest_fuselab.judge import containment

    verdicts: list[Verdict] = []

    def said(v: Verdict) -> None:
        print(line(v), flush=True)
        verdicts.append(v)

    with work_dir("fuselab-repro-") as tmp:
        lab = Lab(settings, Path(tmp))
        usable = containment.usable_drivers(lab)
        drivers = args.driver or usable
        for name in sorted(set(drivers) - set(usable)):
            missing = capabilities.of(lab).missing(DRIVERS[name].needs)
            raise SettingError(f"--driver {name}: this guest's stack cannot run it ({missing}); "
                               "use --stack with a service stack")
        for n in range(args.repeat):
            workdir = Path(tmp) / f"round{n}"
            if args.guests > 1:
                for v in containment.judge_images(lab, workdir, items, drivers, args.guests):
                    said(v)
            else:
                for _v in containment.ImageRunner(lab, workdir).run(items, drivers, said):
                    pass
    return verdicts


def line(v: Verdict) -> str:
    """One verdict as one line: verdict, driver, image, steps, server, splats, time."""
    steps = " ".join(f"{s.name}={s.status}" for s in v.steps)
    return (f"{v.verdict.upper():9} {v.driver:15} {v.image}  {steps}  server:{v.server}  "
            f"{'; '.join(v.splats) or '-'}  {v.seconds:.1f}s")
