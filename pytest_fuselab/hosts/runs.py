"""`fuselab repro --hosts` and `fuselab bench --hosts`: the local commands' outputs, the judging done by hosts.farm."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_fuselab.cli.progress import Progress
from pytest_fuselab.hosts.farm import Farm
from pytest_fuselab.judge.verdict import item_names
from pytest_fuselab.reproducers import Extracted
from pytest_fuselab.settings import Settings
from pytest_fuselab.workdirs import work_dir

if TYPE_CHECKING:
    from pytest_fuselab.cli.repro import Inputs, Report


def repro(args: argparse.Namespace, settings: Settings, inputs: Inputs, report: Report) -> None:
    """Every image of `inputs` through the drivers on the hosts, `--repeat` times (extracted as slots ask, one
    input at a time); each verdict into `report` as it comes, as a local run does."""
    farm = Farm(settings)
    try:
        farm.connect()
        drivers = farm.drivers(args.driver)
        report.repeat = args.repeat
        report.progress = progress = Progress(len(inputs.keys) * args.repeat, per=len(drivers))
        names = inputs.names()
        for _ in range(args.repeat):
            farm.run(inputs.images(), drivers, report.said, names, watch=progress.status)
    finally:
        farm.close()
    for line in farm.summary():
        print(f"fuselab hosts: {line}", file=sys.stderr, flush=True)


def fresh_images(workdir: Path, count: int) -> list[Extracted]:
    """`count` fresh 16 MiB ext4 images (as `fuselab bench` judges locally)."""
    from pytest_fuselab.reproducers import extract

    items = []
    for i in range(count):
        image = workdir / f"bench{i}.img"
        subprocess.run(["mke2fs", "-q", "-t", "ext4", str(image), "16M"], check=True, capture_output=True)
        items += extract(image)
    return items


def bench(settings: Settings, images: int) -> dict[str, Any]:
    """Images per minute through full containment verdicts on the hosts' slots (their guests' snapshots made
    first, outside the timing; the time runs from the first image sent to the last verdict)."""
    start = time.monotonic()
    farm = Farm(settings, warm=True)
    try:
        farm.connect()
        ready = time.monotonic() - start
        drivers = farm.drivers(None)
        with work_dir("fuselab-bench-") as tmp:
            items = fresh_images(tmp, images)
            verdicts: list[Any] = []
            begin = time.monotonic()
            farm.run(items, drivers, verdicts.append, item_names(items))
            seconds = time.monotonic() - begin
    finally:
        farm.close()
    bad = [f"{v.image} {v.driver}: {v.verdict}" for v in verdicts if v.verdict not in ("clean", "contained")]
    if bad:
        raise RuntimeError(f"benchmark verdicts on fresh images were not clean: {bad}")
    slots = [s.host for s in farm.slots]
    return {"images_per_min": round(images / (seconds / 60), 2), "image_count": images, "image_drivers": drivers,
            "hosts": {h: slots.count(h) for h in dict.fromkeys(slots)}, "image_guests": len(slots),
            "hosts_ready_s": round(ready, 1), "judging_s": round(seconds, 1),
            "hosts_skipped": dict(farm.skipped), "hosts_lost": farm.lost}
