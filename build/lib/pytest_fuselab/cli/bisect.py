"""`fuselab bisect-run`: one `git bisect run` step.  Build (optionally) and boot the tree's kernel,
run scenarios or a reproducer, and exit 0 (good), 1 (bad) or 125 (cannot test), nothing else;
an interrupt exits 130, which stops `git bisect run` on purpose.  One line per step on stdout."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pytest_fuselab.build.kernel import boot as kernel
from pytest_fuselab.judge import splats
from pytest_fuselab.judge import triage
from pytest_fuselab.cache import cache_dir
from pytest_fuselab.cli.options import seconds, whole
from pytest_fuselab.errors import BootError, FuselabError, MachineError, SettingError
from pytest_fuselab.settings import Settings
from pytest_fuselab.text import printable
from pytest_fuselab.workdirs import work_dir

GOOD, BAD, SKIP, STOP = 0, 1, 125, 130
NAMES = {GOOD: "good", BAD: "bad", SKIP: "skip"}
Progress = Callable[[str], None]


@dataclass
class Step:
    """What one bisect step found."""

    status: int = SKIP
    why: str = ""
    titles: list[str] = field(default_factory=list)

    def line(self, commit: str, seconds: float) -> str:
        title = self.titles[0] if self.titles else "-"
        text = f"{commit}  {NAMES.get(self.status, str(self.status)):4}  {title}  {seconds:.0f}s  {self.why}"
        return printable(text, lines=False)  # commit subjects, titles and file names are untrusted


def matching(titles: list[str], pattern: str | None) -> list[str]:
    return [t for t in titles if pattern is None or re.search(pattern, t)]


def commit_of(tree: Path) -> str:
    """`<short hash> <subject>` of the tree's HEAD, or the tree's name outside git."""
    r = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return r.stdout.strip()[:72] if r.returncode == 0 and r.stdout.strip() else tree.name


def log_dir(tree: Path) -> Path:
    return cache_dir() / "bisect" / hashlib.sha256(str(tree).encode()).hexdigest()[:12]


# -- the step -------------------------------------------------------------------------------

def boot(settings: Settings, workdir: Path, progress: Progress, pattern: str | None,
         made: list[Path]) -> Step | None:
    """Boot the kernel once (the snapshot every scenario restores); a Step if that decides it.
    The snapshot's directory is added to `made`."""
    from pytest_fuselab.lab import Lab
    from pytest_fuselab.vm.snapshot import snapshot_for

    lab = Lab(settings, workdir, progress)
    try:
        found = lab.foreign  # resolves the kernel and checks its config: refused kernels cannot be tested
        if found is not None:  # what this step's kernel alone uses: gone after the step
            made.extend(p for p in (found.disk, lab.initrd) if p is not None)
            made.append(kernel.base_initrd(found, lab.recipe.initramfs_modules))
            if found.tree is not None and found.modules is not None and kernel.kernels_dir() in found.modules.parents:
                made.append(found.modules.parents[2])  # the tree's modules_install, redone at every step
        made.append(snapshot_for(lab.spec, lab.image.base).directory)
        progress(f"{found.describe() if found else 'the image kernel'}: snapshot {lab.snapshot.directory}")
    except SettingError as exc:
        return Step(SKIP, f"kernel refused before boot: {first_line(exc)}")
    except BootError as exc:
        titles = triage.unique(s.title for s in splats.scan(exc.log_tail))
        if pattern is not None and matching(titles, pattern):
            return Step(BAD, "the kernel splatted while booting", matching(titles, pattern))
        return Step(SKIP, f"boot failed: {first_line(exc)}", titles)
    except MachineError as exc:
        return Step(SKIP, f"QEMU failed: {first_line(exc)}")
    return None


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__


def scenarios(paths: list[str], flags: list[str], log: Path, pattern: str | None) -> Step:
    """Run the scenarios with pytest in a child process; judge from its JUnit XML."""
    junit = log.with_suffix(".xml")
    argv = [sys.executable, "-m", "pytest", *paths, *flags, f"--junitxml={junit}", "-o", "junit_family=legacy",
            "-p", "no:cacheprovider", "-q", "-rfEs"]
    with open(log, "w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        status = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT).returncode
    if status == 2 and not junit.exists():
        return Step(SKIP, f"pytest was interrupted or could not start (status 2; log {log})")
    if not junit.exists():
        return Step(SKIP, f"pytest left no results (status {status}; log {log})")
    return judge_junit(junit, pattern, status)


def judge_junit(junit: Path, pattern: str | None, status: int = 1) -> Step:
    """good: every test passed; bad: a test failed (with a matching splat, if a pattern is given);
    skip: nothing ran, or only the lab failed (a guest could not be started)."""
    failed: list[str] = []
    lab_errors: list[str] = []
    titles: list[str] = []
    ran = 0
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        titles += json.loads(props.get("fuselab") or "{}").get("splats", [])
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if case.find("skipped") is not None:
            continue
        ran += 1
        if problem is not None:
            text = f"{problem.get('message', '')}\n{problem.text or ''}"
            (lab_errors if "fuselab could not start a guest" in text else failed).append(name)
            titles += [s.title for s in splats.scan(text)]
    titles = triage.unique(titles)
    if failed:
        if pattern is None:
            return Step(BAD, f"{len(failed)} failed: {failed[0]}", titles)
        if matching(titles, pattern):
            return Step(BAD, f"splat matches {pattern!r}", matching(titles, pattern))
        return Step(GOOD, f"{len(failed)} failed, but no splat matches {pattern!r}", titles)
    if lab_errors:
        return Step(SKIP, f"the lab could not start guests: {lab_errors[0]}", titles)
    if ran == 0:
        return Step(SKIP, f"no scenario ran (pytest status {status})")
    return Step(GOOD, f"{ran} passed", titles)


def reproducer(settings: Settings, files: list[str], workdir: Path, pattern: str | None, progress: Progress,
               repeat: int = 1, deadline: float | None = None) -> Step:
    """Run reproducers: a C reproducer's own program in `repeat` fresh guests (judge/program), images
    and .syz programs through kernel ext4's image judge; bad when the kernel splats (with a title
    matching `pattern`, if given), cannot test when the lab lost every program run."""
    from pytest_fuselab.judge import containment, program
    from pytest_fuselab import reproducers
    from pytest_fuselab.lab import Lab

    lab = Lab(settings, workdir, progress)
    sources = [Path(f) for f in files if program.kind_of(Path(f)) == "c"]
    runs = program.run_files(lab, program.plan(sources, "program", False), workdir, repeat,
                             deadline or program.DEFAULT_DEADLINE, say=progress, progress=progress) if sources else []
    items = reproducers.extract_all([Path(f) for f in files if program.kind_of(Path(f)) != "c"])
    verdicts = list(containment.ImageRunner(lab, workdir).run(items, ["kernel"])) if items else []
    titles = triage.unique([t for v in verdicts for t in v.splats] + [t for r in runs for t in r.titles])
    fired = sum(r.outcome == program.FIRED for r in runs) + sum(v.verdict in ("finding", "breach") for v in verdicts)
    what = f"{fired} of {len(runs) + len(verdicts)} runs"
    if matching(titles, pattern) if pattern else fired:
        return Step(BAD, f"the reproducer fired ({what})", matching(titles, pattern) or titles)
    if runs and not verdicts and all(r.outcome == program.ERROR for r in runs):
        return Step(SKIP, f"lab error: every run lost its guest without a splat ({runs[0].ended})", titles)
    return Step(GOOD, f"the reproducer did not fire ({what})", titles)


def run_step(args: argparse.Namespace, settings: Settings, flags: list[str], progress: Progress,
             made: list[Path]) -> Step:
    tree = Path(args.tree).resolve()
    if args.build:
        from pytest_fuselab.build.kernel import build as kbuild

        try:
            kbuild.build(tree, progress, debug=args.debug, base="current", nice=args.nice)
        except FuselabError as exc:
            return Step(SKIP, f"build failed: {first_line(exc)}")
    with work_dir("fuselab-bisect-") as tmp:
        decided = boot(settings, Path(tmp), progress, args.splat_pattern, made)
        if decided is not None:
            return decided
        if args.repro:
            return reproducer(settings, args.repro, Path(tmp), args.splat_pattern, progress, args.repeat, args.deadline)
        logs = log_dir(tree)
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{commit_of(tree).split()[0]}-{time.strftime('%H%M%S')}.log"
        return scenarios(args.scenarios, flags, log, args.splat_pattern)


def main(args: argparse.Namespace, settings_from: Callable[[argparse.Namespace], Settings]) -> int:
    """The step, its one line, and an exit status that is always 0, 1, 125 (or 130 on interrupt)."""
    start = time.monotonic()
    tree = Path(args.tree).resolve()
    commit = commit_of(tree)
    progress: Progress = (lambda m: print(f"fuselab: {printable(m)}", file=sys.stderr, flush=True)) if args.verbose \
        else (lambda _: None)
    made: list[Path] = []  # the snapshot this step booted: a bisect never boots the same kernel twice
    try:
        if not args.scenarios and not args.repro:
            raise SettingError("name scenarios (pytest paths) or --repro FILE")
        if args.kernel is None and os.environ.get("FUSELAB_KERNEL") is None:
            args.kernel = str(tree)
        settings = settings_from(args)
        from pytest_fuselab.settings import OPTIONS

        flags = [f"{o.flag}={getattr(args, o.name)}" for o in OPTIONS if getattr(args, o.name, None) is not None]
        step = run_step(args, settings, flags, progress, made)
    except KeyboardInterrupt:
        print(printable(f"{commit}  interrupted: stopping the bisect (exit {STOP})", lines=False), flush=True)
        return STOP
    except BaseException as exc:  # noqa: B036 - a lab error must never become a verdict git misreads
        step = Step(SKIP, f"lab error: {type(exc).__name__}: {first_line(exc)}")
    finally:
        for path in made if not args.keep_snapshot else []:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    print(step.line(commit, time.monotonic() - start), flush=True)
    return step.status if step.status in (GOOD, BAD, SKIP) else SKIP


def add_cli(sub: argparse._SubParsersAction, add_settings: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bisect-run", help="one step of `git bisect run`: exit 0 good, 1 bad, 125 cannot test")
    p.add_argument("scenarios", nargs="*", help="scenario files or pytest node ids")
    p.add_argument("--tree", default=".", help="the kernel tree (default: the current directory)")
    p.add_argument("--build", action="store_true", help="build the tree first (its .config + the lab fragment)")
    p.add_argument("--debug", action="store_true", help="with --build: the debugging fragment too")
    p.add_argument("--nice", type=int, default=0, help="with --build: run make under nice -n N")
    p.add_argument("--splat-pattern", metavar="RE", help="bad only when a splat title matches RE")
    p.add_argument("--repro", action="append", metavar="FILE",
                   help="run this reproducer instead of scenarios (a C reproducer's own program; an image's image)")
    p.add_argument("--repeat", type=whole(1, 1000), default=1, metavar="N",
                   help="with --repro: run each C reproducer in N fresh guests (bad if any fires)")
    p.add_argument("--deadline", type=seconds(24 * 3600.0), metavar="S", help="with --repro: seconds each program run may take")
    p.add_argument("--keep-snapshot", action="store_true",
                   help="keep this step's booted-guest snapshot, modules disk and initramfs")
    p.add_argument("-v", "--verbose", action="store_true", help="show the lab's progress on stderr")
    add_settings(p)

    def usage_error(message: str) -> NoReturn:  # never argparse's status 2: git would call the commit bad
        print(f"fuselab bisect-run: {message} (exit {SKIP}: cannot test)", file=sys.stderr)
        raise SystemExit(SKIP)

    p.error = usage_error
