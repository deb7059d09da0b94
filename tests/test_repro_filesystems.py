"""`fuselab repro` on real reproducers of every filesystem issue 15 names, in one run against real guests:
syzkaller's own programs for vfat, msdos, exfat, btrfs and xfs (sys/linux/test/syz_mount_image_*, copied
unchanged; repository, path and commit in tests/data/repro/SOURCES.md) judged by the kernel driver
(mount, walk, modify, unmount, and the filesystem's own checker), and a C reproducer that mounts squashfs
(tests/data/repro/squashfs_segments.c, written for this project, SOURCES.md says how) whose image is judged
by a read walk and whose program runs in its own guest.

The syzkaller programs hold images that syzkaller's tools/syz-imagegen made with the mkfs command written
in each file's header, not fuzzed ones: the kernel mounts them all, and what is asserted below is what
sid's 7.2 kernel and Debian's checkers were seen to do with them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_fuselab.judge import filesystems
from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.reproducers import extract

REPRO = Path(__file__).parent / "data" / "repro"
SQUASHFS = "squashfs_segments.c"
# input -> (filesystem type, image size, mount options after the executor's changes)
PROGRAMS = {
    "syz_mount_image_vfat_1.syz": ("vfat", 64 << 10, ""),
    "syz_mount_image_msdos_1.syz": ("msdos", 64 << 10, ""),
    "syz_mount_image_exfat_0.syz": ("exfat", 128 << 10, ""),
    "syz_mount_image_btrfs_60.syz": ("btrfs", 16 << 20, ""),
    "syz_mount_image_xfs_34.syz": ("xfs", 16 << 20, "nouuid"),
}
# what each filesystem's own checker says at the end of its output (the fsck step's last words)
CHECKER_SAYS = {
    "vfat": r"fsck\.fat 4\.\d .*\n/dev/vd\w+: \d+ files?, \d+/\d+ clusters",
    "msdos": r"fsck\.fat 4\.\d .*\n/dev/vd\w+: \d+ files?, \d+/\d+ clusters",
    "exfat": r"exfatprogs version : 1\.\d+\.\d+\n/dev/vd\w+: clean\. directories \d+, files \d+",
    "btrfs": r"no error found",
    "xfs": r"No modify flag set, skipping filesystem flush and exiting\.",
}


# -- the material, on the host (bytes only) -----------------------------------------------------

@pytest.mark.parametrize("name", [*PROGRAMS, SQUASHFS])
def test_every_input_has_its_origin_stated(name: str) -> None:
    sources = (REPRO / "SOURCES.md").read_text()
    row = next((line for line in sources.splitlines() if line.startswith(f"| `{name}` |")), None)
    if name == SQUASHFS:
        assert row is not None and "Written for this project" in sources, name
        return
    assert row is not None, f"{name} has no row in SOURCES.md"
    path = name.removesuffix(".syz")
    assert re.search(rf"https://github\.com/google/syzkaller/blob/[0-9a-f]{{40}}/sys/linux/test/{path} ", row), row


@pytest.mark.parametrize("name", PROGRAMS)
def test_each_program_gives_one_image_of_its_filesystem(name: str) -> None:
    fstype, size, options = PROGRAMS[name]
    [item] = extract(REPRO / name)
    assert (item.fstype, item.size, item.mount_options, item.mount_flags) == (fstype, size, options, 0)
    spec = DRIVERS["kernel"].judge_spec("/dev/vdb1", "/mnt/k", item.mount_options, item.fstype)
    assert spec.checker == list(filesystems.FILESYSTEMS[fstype].checker) and spec.checker
    assert not spec.readonly


def test_the_squashfs_reproducer_gives_a_read_only_image() -> None:
    [item] = extract(REPRO / SQUASHFS)
    assert (item.fstype, item.size, item.mount_flags) == ("squashfs", 4096, 1)  # MS_RDONLY, as it mounts it
    assert DRIVERS["kernel"].judge_spec("/dev/vdb1", "/mnt/k", "", "squashfs").readonly


# -- one `fuselab repro` over all of them, in real guests ------------------------------------------

@pytest.fixture(scope="module")
def repro(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    """The run, its verdicts by image name, and where the program's output was kept."""
    where = tmp_path_factory.mktemp("repro")
    verdicts = where / "verdicts.jsonl"
    argv = [sys.executable, "-m", "pytest_fuselab.cli", "repro", *(str(REPRO / n) for n in [*PROGRAMS, SQUASHFS]),
            "--driver", "kernel", "--mode", "both", "--budget", "120", "--deadline", "30", "--keep", "all",
            "--results", str(where / "results"), "--json", str(verdicts)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    print(out.stdout, out.stderr)
    got = [json.loads(line) for line in verdicts.read_text().splitlines()] if verdicts.exists() else []
    by_image = {v["image"]: v for v in got}
    assert len(by_image) == len(got), got  # one verdict per image: the kernel driver's
    return out, by_image, where / "results"


@pytest.mark.guest
def test_the_run_ends_without_findings_breaches_or_lab_errors(repro) -> None:  # type: ignore[no-untyped-def]
    out, verdicts, _ = repro
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(verdicts) == sorted([*PROGRAMS, SQUASHFS])
    assert "6 verdicts: 0 containment breaches, 0 kernel findings, 0 lab errors" in out.stdout.splitlines()
    for name in PROGRAMS:  # no --syzkaller: a .syz program is judged by its image, and the run says so
        assert any(line.startswith(name) and "program not run: a .syz program needs --syzkaller DIR" in line
                   for line in out.stdout.splitlines()), name


@pytest.mark.guest
@pytest.mark.parametrize("name", PROGRAMS)
def test_the_kernel_mounts_walks_modifies_and_checks_each_syzkaller_image(repro, name: str) -> None:  # type: ignore[no-untyped-def]
    _, verdicts, _ = repro
    fstype = PROGRAMS[name][0]
    v = verdicts[name]
    steps = {s["name"]: s for s in v["steps"]}
    print(name, v["verdict"], v["reached"], v["entries"], v["seconds"], {n: s["status"] for n, s in steps.items()})
    assert (v["driver"], v["verdict"], v["reached"], v["refusal"], v["splats"]) == (
        "kernel", "clean", "checked", "", []), v
    assert [(n, s["status"]) for n, s in steps.items()] == [
        ("mount", 0), ("walk", 0), ("modify", 0), ("unmount", 0), ("fsck", 0)], v["steps"]
    assert v["walk_errors"] == 0, v
    assert re.search(CHECKER_SAYS[fstype], steps["fsck"]["said"]), (fstype, steps["fsck"]["said"])


@pytest.mark.guest
def test_the_squashfs_reproducers_image_gets_a_read_walk_and_its_program_runs(repro) -> None:  # type: ignore[no-untyped-def]
    out, verdicts, results = repro
    lines = out.stdout.splitlines()
    assert f"{SQUASHFS}  mode: program+image" in lines
    assert f"{SQUASHFS}  program: fired 0 of 1" in lines
    output = (results / "programs" / SQUASHFS / "run1" / "output.txt").read_text()
    assert "mount: 0" in output and "./file0/dir/hello: 19 bytes" in output  # the program mounted and read it
    v = verdicts[SQUASHFS]
    steps = {s["name"]: s for s in v["steps"]}
    assert (v["driver"], v["verdict"], v["reached"], v["splats"]) == ("kernel", "clean", "checked", []), v
    assert [(n, s["status"]) for n, s in steps.items()] == [
        ("mount", 0), ("walk", 0), ("unmount", 0), ("fsck", 0)], v["steps"]  # read-only: no modify step
    assert v["entries"] >= 3 and v["walk_errors"] == 0, v  # a directory, a file, a symlink
    assert "hello" in steps["fsck"]["said"], steps["fsck"]  # unsquashfs -lls lists the image's files
