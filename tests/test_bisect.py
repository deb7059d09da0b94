"""`fuselab bisect-run`: verdicts from scenario results, statuses git understands, and a real
`git bisect run` over a repository whose commits carry Debian's prebuilt kernels."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

from pytest_fuselab.cli import bisect
from pytest_fuselab.judge import triage
from pytest_fuselab.cli import main

JUNIT = """<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>"""


def junit(tmp_path: Path, *cases: str) -> Path:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT.format(cases="".join(cases)))
    return path


def case(name: str, inner: str = "", splats: list[str] | None = None) -> str:
    props = ""
    if splats is not None:
        value = quoteattr(json.dumps({"splats": splats}))
        props = f'<properties><property name="fuselab" value={value}/></properties>'
    return f'<testcase classname="test_x" name="{name}">{props}{inner}</testcase>'


def test_all_passed_is_good(tmp_path):
    step = bisect.judge_junit(junit(tmp_path, case("a"), case("b")), None)
    assert (step.status, step.why) == (bisect.GOOD, "2 passed")


def test_a_failure_is_bad_and_carries_the_splat_title(tmp_path):
    failed = case("a", '<failure message="guest did not survive">WARNING in fuse_abort_conn</failure>',
                  ["WARNING in fuse_abort_conn.constprop.0"])
    step = bisect.judge_junit(junit(tmp_path, failed, case("b")), None)
    assert step.status == bisect.BAD and step.titles == ["WARNING in fuse_abort_conn"]
    assert step.line("abc123 fix", 12.3).split() [:4] == ["abc123", "fix", "bad", "WARNING"]


def test_a_pattern_makes_only_matching_splats_bad(tmp_path):
    failed = case("a", '<failure message="x">boom</failure>', ["INFO: task hung in fuse_flush"])
    assert bisect.judge_junit(junit(tmp_path, failed), r"^KASAN").status == bisect.GOOD
    step = bisect.judge_junit(junit(tmp_path, failed), r"hung in fuse_")
    assert step.status == bisect.BAD and step.titles == ["INFO: task hung in fuse_flush"]


def test_lab_failures_and_empty_runs_cannot_test(tmp_path):
    lab = case("a", '<failure message="fuselab could not start a guest: boot failed"/>')
    assert bisect.judge_junit(junit(tmp_path, lab), None).status == bisect.SKIP
    skipped = case("a", '<skipped message="lacks the series"/>')
    assert bisect.judge_junit(junit(tmp_path, skipped), None).status == bisect.SKIP


def test_statuses_are_only_0_1_125(tmp_path, monkeypatch, capsys):
    assert main(["bisect-run", "--tree", str(tmp_path), "x.py"]) == 125  # not a kernel tree
    assert main(["bisect-run", "--tree", str(tmp_path), "--no-such-flag"]) == 125  # usage errors too
    with pytest.raises(SystemExit) as exc:
        main(["bisect-run", "--tree", str(tmp_path), "--cpus", "x", "--nice", "y"])
    assert exc.value.code == 125

    def boom(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(bisect, "run_step", boom)
    (tmp_path / "Makefile").write_text("all:\n")
    assert main(["bisect-run", "--tree", str(tmp_path), "x.py"]) == 125
    assert "lab error: RuntimeError: unexpected" in capsys.readouterr().out

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bisect, "run_step", interrupted)
    assert main(["bisect-run", "--tree", str(tmp_path), "x.py"]) == 130  # stops `git bisect run`


def test_titles_deduplicate_across_runs():
    class Run:
        def __init__(self, verdict: str, splats: list[str]) -> None:
            self.image, self.driver, self.verdict, self.splats = "img#0", "kernel", verdict, splats

    runs = [Run("finding", ["KASAN: use-after-free Read in ext4_xattr_get.isra.0"]),
            Run("clean", []),
            Run("finding", ["KASAN: use-after-free Read in ext4_xattr_get", "WARNING in ext4_evict_inode"])]
    assert triage.fire_rates(runs, 3) == ["img#0  kernel: fired 2 of 3  KASAN: use-after-free Read in "
                                          "ext4_xattr_get (x2); WARNING in ext4_evict_inode (x1)"]


# -- a real bisect ----------------------------------------------------------------------------

# Debian's cloud kernels (small): the newest 6.18 predates the case-folding series, 7.2 has it
# (FAT answers FS_IOC_FSGETXATTR).  Series, not pinned versions: old versions leave the archive.
GOOD_KERNEL = (r"6\.18\.\d+\+deb13-cloud-amd64", "trixie-backports")
BAD_KERNEL = (r"7\.2\.\d+\+deb13-cloud-amd64", "trixie-backports")
SCENARIO = '''
import errno, pytest

def test_fat_has_no_fileattr(fuselab_guest):
    """The old behaviour: FAT has no fileattr_get, FS_IOC_FSGETXATTR fails with ENOTTY."""
    fuselab_guest.run("modprobe vfat && modprobe loop && truncate -s 8M /tmp/f && mkfs.vfat /tmp/f >/dev/null "
                      "&& mkdir /mnt/f && mount -o loop /tmp/f /mnt/f")
    r = fuselab_guest.run(["python3", "-c", "import fcntl, os; fcntl.ioctl(os.open('/mnt/f', 0), 0x801C581F, bytes(28))"],
                          check=False)
    assert "Inappropriate ioctl" in r.stderr, f"FS_IOC_FSGETXATTR on vfat answered: {r}"
'''
TREE_MAKEFILE = """# a stand-in for a kernel tree: its modules come prebuilt from Debian's package
modules_install:
\tmkdir -p $(INSTALL_MOD_PATH)/lib/modules
\tcp -a {modules} $(INSTALL_MOD_PATH)/lib/modules/
\tdepmod -b $(INSTALL_MOD_PATH) {release}
"""


def commit(repo: Path, kernel, message: str, broken: bool = False) -> str:
    """A commit whose tree looks like a built kernel tree carrying `kernel` (a DebianKernel)."""
    boot = repo / "arch/x86/boot"
    boot.mkdir(parents=True, exist_ok=True)
    for link, target in ((boot / "bzImage", kernel.bzimage), (repo / ".config", kernel.config),
                         (repo / "modules.order", kernel.modules / "modules.order")):
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    if broken:  # the decompressor finds half a kernel: the machine resets before any console output
        (boot / "bzImage").unlink()
        (boot / "bzImage").write_bytes(kernel.bzimage.read_bytes()[:2_000_000])
    (repo / "Makefile").write_text(TREE_MAKEFILE.format(modules=kernel.modules, release=kernel.release))
    (repo / "NOTES").write_text(f"{message}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "lab", "GIT_AUTHOR_EMAIL": "lab@example.org",
           "GIT_COMMITTER_NAME": "lab", "GIT_COMMITTER_EMAIL": "lab@example.org"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout


@pytest.mark.guest
@pytest.mark.build  # fetches two Debian kernels and makes their module disks
def test_git_bisect_run_finds_the_first_bad_kernel_and_skips_a_broken_one(tmp_path):
    from pytest_fuselab.build.kernel import debian as debkernel

    start = time.monotonic()
    good, bad = (debkernel.fetch(debkernel.newest(suite, series), suite) for series, suite in (GOOD_KERNEL, BAD_KERNEL))
    fetched = time.monotonic() - start
    repo = tmp_path / "linux"
    repo.mkdir()
    git(repo, "init", "-q")
    shas = [commit(repo, good, "good 1"), commit(repo, good, "good 2"), commit(repo, good, "good 3"),
            commit(repo, good, "broken kernel", broken=True), commit(repo, good, "good 4"),
            commit(repo, bad, "FAT reports case folding"), commit(repo, bad, "bad 2")]
    scenario = tmp_path / "scenario" / "test_fat_fileattr.py"
    scenario.parent.mkdir()
    scenario.write_text(SCENARIO)
    git(repo, "bisect", "start", shas[-1], shas[0])
    run = subprocess.run(["git", "-C", str(repo), "bisect", "run", sys.executable, "-m", "pytest_fuselab.cli",
                          "bisect-run", str(scenario), "--watchdog", "20"],
                         capture_output=True, text=True, timeout=1800)
    log = git(repo, "bisect", "log")
    print(run.stdout, run.stderr, log, f"fetch {fetched:.0f}s, total {time.monotonic() - start:.0f}s", sep="\n")
    assert f"{shas[5]} is the first bad commit" in run.stdout, run.stdout + run.stderr
    assert f"git bisect skip {shas[3]}" in log
    steps = [line for line in run.stdout.splitlines() if re.match(r"^[0-9a-f]{7,} ", line)]
    verdicts = {line.split()[0]: line for line in steps}
    assert "skip" in verdicts[shas[3][:len(steps[0].split()[0])]] and "boot failed" in run.stdout
    assert re.search(r"FAT reports case folding\s+bad\s", run.stdout)


@pytest.mark.guest
def test_repro_repeat_says_how_often_each_reproducer_fired(tmp_path):
    good = tmp_path / "good.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", str(good), "8M"], check=True)
    syz = Path(__file__).parent / "data" / "repro" / "syz_mount_image_ext4_40.syz"
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "repro", str(syz), str(good), "--driver",
                          "kernel", "--repeat", "2", "--json", str(tmp_path / "v.jsonl")],
                         capture_output=True, text=True, timeout=900)
    verdicts = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert len(verdicts) == 4, out.stdout + out.stderr
    assert "good.img  kernel: fired 0 of 2  -" in out.stdout.splitlines()
    fired = sum(v["verdict"] == "finding" for v in verdicts if v["image"].startswith("syz_"))
    line = next(x for x in out.stdout.splitlines() if x.startswith("syz_mount_image_ext4_40.syz  kernel: fired"))
    assert line.startswith(f"syz_mount_image_ext4_40.syz  kernel: fired {fired} of 2"), line
    for title in triage.unique(t for v in verdicts for t in v["splats"]):
        assert title in line


def fake_program_runs(monkeypatch, outcomes):
    """bisect's --repro with C reproducers, their program runs replaced by `outcomes` ((outcome, titles) each)."""
    from pytest_fuselab.judge import program
    from pytest_fuselab.judge.program.runner import Run

    asked = []

    def run_files(lab, plans, workdir, repeat, deadline, **kw):
        asked.append(([p.path.name for p in plans], repeat, deadline))
        return [Run("repro.c", i, o, t, "exited with status 0") for i, (o, t) in enumerate(outcomes, 1)]

    monkeypatch.setattr(program, "run_files", run_files)
    return asked


@pytest.mark.parametrize(("outcomes", "pattern", "status", "why"), [
    ([("quiet", []), ("fired", ["WARNING in f"])], None, bisect.BAD, "the reproducer fired (1 of 2 runs)"),
    ([("fired", ["WARNING in f"])], "in g$", bisect.GOOD, "the reproducer did not fire (1 of 1 runs)"),
    ([("quiet", []), ("quiet", [])], None, bisect.GOOD, "the reproducer did not fire (0 of 2 runs)"),
    ([("error", []), ("error", [])], None, bisect.SKIP, "lab error: every run lost its guest without a splat"),
])
def test_repro_of_a_c_reproducer_runs_its_program(tmp_path, monkeypatch, outcomes, pattern, status, why):
    from pytest_fuselab.settings import resolve

    asked = fake_program_runs(monkeypatch, outcomes)
    repro = tmp_path / "repro.c"
    repro.write_text("int main(void) { return 0; }\n")
    step = bisect.reproducer(resolve({}), [str(repro)], tmp_path, pattern, lambda _: None, repeat=2, deadline=30.0)
    assert asked == [(["repro.c"], 2, 30.0)]
    assert (step.status, step.why[:len(why)]) == (status, why)


def test_bisect_run_takes_repeat_and_deadline_for_reproducers():
    from pytest_fuselab.cli.main import parser

    args = parser().parse_args(["bisect-run", "--repro", "r.c", "--repeat", "3", "--deadline", "20"])
    assert (args.repro, args.repeat, args.deadline) == (["r.c"], 3, 20.0)
