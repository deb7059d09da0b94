"""Real guests: `fuselab bench` measures boots, resets, fixture overhead and images per minute."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.guest


def test_bench_reports_every_figure_with_its_samples():
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "bench", "--json", "--runs", "1",
                          "--images", "2"], capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    figures = json.loads(out.stdout)  # stdout holds the JSON alone; progress goes to stderr
    assert figures["accel"] in ("kvm", "tcg") and figures["accel_reason"]
    assert figures["image_drivers"] == ["kernel", "fuse2fs", "fuse2fs-user", "fuse2fs-sandbox"]
    assert (figures["image_count"], figures["image_guests"], figures["runs"]) == (2, 1, 1)
    for key in ("cold_boot_s", "reset_s", "test_overhead_s"):
        assert figures["samples"][key] == [figures[key]] and 0 < figures[key] < 300, key
    assert figures["reset_s"] < figures["cold_boot_s"]  # a restore is cheaper than a boot
    assert 0 < figures["images_per_min"] < 600
    # one image whose FUSE server never answers (bench.stalling_image): its verdicts within the budget
    assert 0 < figures["pathological_image_s"] <= figures["image_budget_s"] + 30
    assert set(figures["pathological_verdicts"]) == set(figures["image_drivers"])
    assert not any(cell.startswith("BREACH") for cell in figures["pathological_verdicts"].values())
