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
# the filesystem's own checker, as judge/filesystems.py names it
CHECKERS = {"vfat": ("fsck.fat", "-n"), "msdos": ("fsck.fat", "-n"), "exfat": ("fsck.exfat", "-n"),
            "btrfs": ("btrfs", "check", "--readonly"), "xfs": ("xfs_repair", "-n", "-o", "force_geometry")}
FAT_LABEL = ("Volume label 'SYZKALLER' stored in root directory and label '' stored in boot sector and different.\n"
             "  Auto-copying volume label from root directory to boot sector.\n\nLeaving filesystem unchanged.\n")
# What the kernel driver's steps ended with on each image, as seen in a real guest (sid's 7.2 kernel, Debian's
# checkers): step -> (exit status, errno, a pattern its last words match). Every image was mounted, walked,
# unmounted and checked by its own checker; what failed says why in its own words:
# - the modify step writes 128 KiB (guest/steps.py), more than syzkaller's 64 KiB vfat and 128 KiB exfat
#   images hold (ENOSPC), and its file names (".fl-new") are not 8.3 names, which msdos refuses (EINVAL);
# - syzkaller's FAT images have the boot sector's label field zeroed (the image's own bytes, 0x2b..0x36),
#   so fsck.fat -n reports the label in the root directory as different and exits 1;
# - xfs_repair -n checks a filesystem of one allocation group (mkfs.xfs -d agcount=1, as this image was
#   made) only with -o force_geometry, which judge/filesystems.py passes.
STEPS: dict[str, dict[str, tuple[int, str, str]]] = {
    "vfat": {"mount": (0, "", r"^$"), "walk": (0, "", r"^judge: walked 5 entries, read 4 files, 0 errors$"),
             "modify": (1, "ENOSPC", r"^judge: modify: write \.fl-big: ENOSPC \(No space left on device\)$"),
             "unmount": (0, "", r"^$"),
             "fsck": (1, "", r"^fsck\.fat 4\.\d \(.*\)\n" + re.escape(FAT_LABEL) + r"/dev/vd\w+: \d+ files, \d+/28 clusters$")},
    "msdos": {"mount": (0, "", r"^$"), "walk": (0, "", r"^judge: walked 5 entries, read 4 files, 0 errors$"),
              "modify": (1, "EINVAL", r"^judge: modify: create \.fl-new: EINVAL \(Invalid argument\)$"),
              "unmount": (0, "", r"^$"),
              "fsck": (1, "", r"^fsck\.fat 4\.\d \(.*\)\n" + re.escape(FAT_LABEL) + r"/dev/vd\w+: \d+ files, \d+/28 clusters$")},
    "exfat": {"mount": (0, "", r"^$"), "walk": (0, "", r"^judge: walked 5 entries, read 4 files, 0 errors$"),
              "modify": (1, "ENOSPC", r"^judge: modify: write \.fl-big: ENOSPC \(No space left on device\)$"),
              "unmount": (0, "", r"^$"),
              "fsck": (0, "", r"^exfatprogs version : 1\.\d+\.\d+ .*\n/dev/vd\w+: clean\. directories 2, files \d+$")},
    "btrfs": {"mount": (0, "", r"^$"), "walk": (0, "", r"^judge: walked 7 entries, read 5 files, 0 errors$"),
              "modify": (0, "", r"^$"), "unmount": (0, "", r"^$"),
              "fsck": (0, "", r"Checking filesystem on /dev/vd\w+\n.*\nfound \d+ bytes used, no error found\n")},
    "xfs": {"mount": (0, "", r"^$"), "walk": (0, "", r"^judge: walked 7 entries, read 5 files, 0 errors$"),
            "modify": (0, "", r"^$"), "unmount": (0, "", r"^$"),
            "fsck": (0, "", r"Phase 7 - verify link counts\.\.\.\nNo modify flag set, skipping filesystem flush and exiting\.$")},
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
    assert spec.checker == list(CHECKERS[fstype]) == list(filesystems.FILESYSTEMS[fstype].checker)
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
    assert "kernel: exercised 6 of 6" in out.stdout.splitlines()  # none refused at mount
    for name in PROGRAMS:  # no --syzkaller: a .syz program is judged by its image, and the run says so
        assert any(line.startswith(name) and "program not run: a .syz program needs --syzkaller DIR" in line
                   for line in out.stdout.splitlines()), name


@pytest.mark.guest
@pytest.mark.parametrize("name", PROGRAMS)
def test_the_kernel_mounts_walks_and_checks_each_syzkaller_image_with_its_own_checker(repro, name: str) -> None:  # type: ignore[no-untyped-def]
    _, verdicts, _ = repro
    fstype = PROGRAMS[name][0]
    v = verdicts[name]
    print(name, v["verdict"], v["reached"], v["entries"], v["seconds"], [(s["name"], s["status"]) for s in v["steps"]])
    assert (v["driver"], v["verdict"], v["reached"], v["refusal"], v["splats"], v["walk_errors"]) == (
        "kernel", "clean", "checked", "", [], 0), v
    assert [s["name"] for s in v["steps"]] == list(STEPS[fstype]), v["steps"]
    for step in v["steps"]:
        status, errno, words = STEPS[fstype][step["name"]]
        assert (step["status"], step["errno"]) == (status, errno), (fstype, step)
        assert re.search(words, step["said"], re.DOTALL), (fstype, step["name"], step["said"])
    assert filesystems.FILESYSTEMS[fstype].checker == CHECKERS[fstype]  # the checker whose words these are


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
    assert (v["entries"], v["walk_errors"]) == (3, 0), v  # a directory, a file, a symlink
    assert steps["walk"]["said"] == "judge: walked 3 entries, read 1 files, 0 errors", steps["walk"]
    listing = steps["fsck"]["said"]  # unsquashfs -lls lists the image's files
    assert "squashfs-root/dir/hello\n" in listing and listing.endswith("squashfs-root/link -> dir/hello"), listing
