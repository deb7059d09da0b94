"""Real guests: `fuselab repro` extracts images from reproducers and judges each driver."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest
DATA = Path(__file__).parent / "data" / "repro"


def fuselab(*args):
    return subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", *args], capture_output=True, text=True,
                          timeout=900, check=False)


def test_repro_judges_each_image_and_driver(tmp_path):
    good = tmp_path / "good.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", str(good), "8M"], check=True)
    out = fuselab("repro", str(DATA / "syz_mount_image_ext4_40.syz"), str(good),
                  "--driver", "kernel", "--driver", "fuse2fs", "--guests", "2", "--json", str(tmp_path / "v.jsonl"),
                  "--html", str(tmp_path / "m.html"))
    assert out.returncode == 0, out.stdout + out.stderr
    verdicts = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [(v["image"], v["driver"]) for v in verdicts] == [
        ("syz_mount_image_ext4_40.syz#0", "kernel"), ("syz_mount_image_ext4_40.syz#0", "fuse2fs"),
        ("good.img#0", "kernel"), ("good.img#0", "fuse2fs")]
    by = {(v["image"], v["driver"]): v for v in verdicts}
    clean = by[("good.img#0", "fuse2fs")]
    assert clean["verdict"] == "contained"
    assert [(s["name"], s["status"]) for s in clean["steps"]] == [
        ("mount", 0), ("walk", 0), ("modify", 0), ("unmount", 0), ("fsck", 0)]
    assert by[("good.img#0", "kernel")]["verdict"] == "clean"
    assert "4 verdicts: 0 containment breaches" in out.stdout
    lines = out.stdout.splitlines()
    assert lines[-4].split() == ["image", "kernel", "fuse2fs"]  # the matrix, then the count
    assert lines[-3].startswith("syz_mount_image_ext4_40.syz#0") and lines[-2].startswith("good.img#0")
    assert "good.img#0" in (tmp_path / "m.html").read_text()


def test_repro_names_a_malformed_reproducer(tmp_path):
    bad = tmp_path / "bad.syz"
    text = (DATA / "syz_mount_image_ext4_40.syz").read_text()
    bad.write_text(text.replace('"$', '"$!!!', 1))
    out = fuselab("repro", str(bad))
    assert out.returncode == 2
    assert str(bad) in out.stderr
