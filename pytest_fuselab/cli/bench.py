"""`fuselab bench`: medians of cold boot, reset and per-test fixture overhead; hostile images per
minute, and the wall time to the verdict of one image whose FUSE server never answers."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pytest_fuselab.cli.options import add_settings, settings_from, whole
from pytest_fuselab.ext4.fields import S_IFDIR
from pytest_fuselab.ext4.layout import Layout
from pytest_fuselab.judge.containment import usable_drivers
from pytest_fuselab.lab import Lab
from pytest_fuselab.settings import Settings
from pytest_fuselab.workdirs import work_dir

EMPTY_TEST = """import pytest


@pytest.mark.parametrize("n", range({count}))
def test_empty(fuselab_guest, n):
    pass
"""


def timed_cold_boot(lab: Lab) -> float:
    start = time.monotonic()
    with lab.cold_guest() as guest:
        guest.run("true")
        return time.monotonic() - start


def timed_reset(lab: Lab) -> float:
    start = time.monotonic()
    with lab.guest() as guest:
        guest.run("true")
        return time.monotonic() - start


class _Durations:
    def __init__(self) -> None:
        self.per_test: dict[str, float] = {}
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when in ("setup", "teardown"):
            self.per_test[report.nodeid] = self.per_test.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.append(f"{report.nodeid} ({report.when})")


def test_overheads(settings: Settings, runs: int, workdir: Path) -> list[float]:
    """Fixture set-up plus teardown around an empty test, as pytest itself times them."""
    import pytest

    test_file = workdir / "test_bench_empty.py"
    test_file.write_text(EMPTY_TEST.format(count=runs + 1))
    durations = _Durations()
    argv = [str(test_file), "-q", "-p", "no:cacheprovider",
            f"--fuselab-image={settings.image}", f"--fuselab-accel={settings.accel}",
            f"--fuselab-memory={settings.memory}", f"--fuselab-cpus={settings.cpus}",
            f"--basetemp={workdir / 'pytest'}", "-o", "console_output_style=classic"]
    if settings.kernel:
        argv.append(f"--fuselab-kernel={settings.kernel}")
    if settings.modules:
        argv.append(f"--fuselab-modules={settings.modules}")
    if settings.stack is not None:
        argv.append(f"--fuselab-stack={settings.stack.setting}")
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the figures (--json)
        status = pytest.main([a for a in argv if a], plugins=[durations])
    if status != 0 or durations.failed:
        raise RuntimeError(f"benchmark tests failed (pytest status {status}): {durations.failed}")
    values = list(durations.per_test.values())
    return values[1:]  # the first test also pays for building the lab (probe, snapshot check)


def images_per_min(lab: Lab, workdir: Path, count: int, drivers: list[str], guests: int = 1) -> float:
    """Images per minute through full containment verdicts with `drivers` on `guests` guests
    (fresh mke2fs images: the cost of the verdict itself, not of a hostile image's damage)."""
    from pytest_fuselab.judge.parallel import judge_images
    from pytest_fuselab.reproducers import extract

    items = []
    for i in range(count):
        image = workdir / f"bench{i}.img"
        subprocess.run(["mke2fs", "-q", "-t", "ext4", str(image), "16M"], check=True, capture_output=True)
        items += extract(image)
    start = time.monotonic()
    verdicts = judge_images(lab, workdir / "images", items, drivers, guests)
    bad = [f"{v.image} {v.driver}: {v.verdict}" for v in verdicts if v.verdict not in ("clean", "contained")]
    if bad:
        raise RuntimeError(f"benchmark verdicts on fresh images were not clean: {bad}")
    return count / ((time.monotonic() - start) / 60)


def pathological(lab: Lab, workdir: Path, drivers: list[str]) -> tuple[float, dict[str, str]]:
    """Seconds from the start of its judging to the verdicts of one image whose FUSE server never
    answers (stalling_image), and each driver's outcome (the budget bounds the time)."""
    from pytest_fuselab.judge.parallel import judge_images
    from pytest_fuselab.judge.matrix import cell_text
    from pytest_fuselab.reproducers import extract

    items = extract(stalling_image(workdir / "stalling.img"))
    start = time.monotonic()
    verdicts = judge_images(lab, workdir / "stalling", items, drivers)
    return time.monotonic() - start, {v.driver: cell_text(v) for v in verdicts}


def run(settings: Settings, runs: int = 5, images: int = 12, guests: int = 1) -> dict[str, Any]:
    with work_dir("fuselab-bench-") as tmp:
        lab = Lab(settings, Path(tmp))
        lab.guest().shutdown()  # build the image and snapshot outside the timings
        cold = [timed_cold_boot(lab) for _ in range(runs)]
        reset = [timed_reset(lab) for _ in range(runs)]
        overhead = test_overheads(settings, runs, Path(tmp))
        drivers = usable_drivers(lab)
        rate = images_per_min(lab, Path(tmp), images, drivers, guests)
        stalled, outcomes = pathological(lab, Path(tmp), drivers)
        return {"accel": lab.accel.accel, "accel_reason": lab.accel.reason, "runs": runs,
                "images_per_min": round(rate, 2), "image_guests": guests, "image_count": images,
                "image_drivers": drivers, "guest_cpus": settings.cpus,
                "pathological_image_s": round(stalled, 1), "pathological_verdicts": outcomes,
                "image_budget_s": settings.budget,
                "cold_boot_s": round(statistics.median(cold), 2),
                "reset_s": round(statistics.median(reset), 2),
                "test_overhead_s": round(statistics.median(overhead), 2),
                "samples": {"cold_boot_s": [round(x, 2) for x in cold], "reset_s": [round(x, 2) for x in reset],
                            "test_overhead_s": [round(x, 2) for x in overhead]}}


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab bench`."""
    b = sub.add_parser("bench", help="measure cold boot, reset and per-test overhead (medians)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--runs", type=whole(1, 1000), default=5, help="runs per figure (default: %(default)s)")
    b.add_argument("--images", type=whole(1, 10_000), default=12,
                   help="images for images_per_min (default: %(default)s)")
    b.add_argument("--guests", type=whole(1, 64), default=1,
                   help="guests judging images side by side for images_per_min (default: %(default)s)")
    add_settings(b)


def cmd_bench(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings.hosts is not None:  # images_per_min over the machines of hosts.toml
        from pytest_fuselab.hosts import runs

        figures = runs.bench(settings, images=args.images)
    else:
        figures = run(settings, runs=args.runs, images=args.images, guests=args.guests)
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        for key, value in figures.items():
            print(f"{key:18} {value}")
    return 0


# -- an image whose FUSE server never answers ----------------------------------------------------

STALL_DATA, STALL_LEAVES, STALL_INDEX = 16400, 18000, 18400  # 1 KiB blocks of group 2 (no metadata there)
STALL_RUN = 1024  # blocks each extent maps (all extents map the same run)


def _extent_block(entries: list[tuple[int, int, int]], depth: int, capacity: int) -> bytes:
    """An extent tree node: header, then (logical, length or 0, physical) per entry."""
    out = struct.pack("<HHHHI", 0xF30A, len(entries), capacity, depth, 0)
    for logical, length, physical in entries:
        out += (struct.pack("<IHHI", logical, length, 0, physical) if depth == 0 else
                struct.pack("<IIHH", logical, physical, 0, 0))
    return out


def stalling_image(path: Path) -> Path:
    """A 32 MiB ext4 image (1 KiB blocks, no checksums) with a directory `d` whose extent tree maps
    one run of 1024 directory blocks 28,224 times over (4 × 84 leaves × 84 extents): listing it costs
    fuse2fs (libext2fs's dir_iterate) about 29 million block reads in one FUSE request, for minutes
    under TCG, while it answers nothing else.  `d` has no links: the kernel refuses to look it up
    (EUCLEAN, "deleted inode referenced") and e2fsck skips its blocks, so only the FUSE servers stall.
    Made here as bytes; the host never mounts or checks it."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "d").mkdir()
        (Path(tmp) / "file").write_text("the rest of the image is fine\n")
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "1024", "-N", "64", "-O",
                        "^metadata_csum,^has_journal,^dir_index,^resize_inode", "-d", tmp, str(path), "32M"],
                       check=True, capture_output=True)
    with Layout(path) as layout:
        ino = next(i for i in range(11, 64) if layout.inode(i).is_type(S_IFDIR) and layout.inode(i).size == 1024
                   and i != 11)
        at, first = layout.inode_offset(ino), layout.extent_nodes(layout.inode(ino))[0].items[0][2]
        real = layout.block(first)
    per = (1024 - 12) // 12  # entries in a 1 KiB node
    empty = struct.pack("<IHBB", 0, 1024, 0, 0).ljust(1024, b"\0")
    with open(path, "r+b") as f:
        f.seek(STALL_DATA * 1024)
        f.write(real + empty * (STALL_RUN - 1))
        for leaf in range(4 * per):
            f.seek((STALL_LEAVES + leaf) * 1024)
            f.write(_extent_block([((leaf * per + j) * STALL_RUN, STALL_RUN, STALL_DATA) for j in range(per)], 0, per))
        for index in range(4):
            f.seek((STALL_INDEX + index) * 1024)
            f.write(_extent_block([((index * per + k) * per * STALL_RUN, 0, STALL_LEAVES + index * per + k)
                                   for k in range(per)], 1, per))
        f.seek(at + 0x1A)
        f.write(struct.pack("<H", 0))  # i_links_count
        f.seek(at + 0x28)
        f.write(_extent_block([(i * per * per * STALL_RUN, 0, STALL_INDEX + i) for i in range(4)], 2, 4))
    return path
