"""A reproducer's own program in fresh guests: run as root in a scratch directory until it exits or
its deadline passes, the console watched for kernel splats; how many runs fired, each firing's logs kept."""

from __future__ import annotations

import re
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pytest_fuselab.errors import GuestError
from pytest_fuselab.judge import splats, triage
from pytest_fuselab.lab import Lab
from pytest_fuselab.text import printable
from pytest_fuselab.vm.guest import Guest

SCRATCH = "/root/fuselab-program"  # the program's working directory in the guest (a fresh guest each run)
DEFAULT_DEADLINE = 60.0  # syzbot's programs often loop forever: the deadline ends the run, as a normal end
SETTLE = 3.0  # seconds for a late report to reach the console once the run is over
OUTPUT_TAIL = 16384  # bytes of the program's own output kept
FIRED, QUIET, ERROR = "fired", "quiet", "error"
Say = Callable[[str], None]


@dataclass(frozen=True)
class Program:
    """What to put in the guest's scratch directory and how to start it there."""

    name: str  # as the user knows it (repro.c)
    files: dict[str, Path]  # name in the scratch directory -> host file
    argv: list[str]
    executables: tuple[str, ...] = ()
    how: str = ""  # "C, gcc -static" or "syz-execprog"


@dataclass
class Run:
    """One run of a program in one fresh guest."""

    name: str
    index: int
    outcome: str  # fired | quiet | error (the lab failed: the guest was lost without a splat)
    titles: list[str] = field(default_factory=list)
    ended: str = ""  # exited with status N | deadline (N s) | guest lost: ...
    seconds: float = 0.0
    kept: str = ""  # the directory with this run's console, kernel log and output

    def line(self) -> str:
        """One line for progress output."""
        what = f"{self.outcome}: {'; '.join(self.titles)}" if self.titles else self.outcome
        kept = f"  kept in {self.kept}" if self.kept else ""
        return printable(f"{self.name} run {self.index}: {what} ({self.ended}, {self.seconds:.0f} s){kept}", lines=False)


@dataclass
class Logs:
    """What one run left: the console since the run began, the kernel log, the program's output."""

    console: str = ""
    dmesg: str = ""
    output: str = ""


def execute(guest: Guest, program: Program, deadline: float) -> str:
    """Put the program in the guest and run it as root until it exits or `deadline` passes; how it ended."""
    try:
        guest.run(["mkdir", "-p", SCRATCH])
        for name, path in program.files.items():
            guest.put(f"{SCRATCH}/{name}", path, mode=0o755 if name in program.executables else 0o644)
        command = f"cd {SCRATCH} && exec {shlex.join(program.argv)} >output 2>&1 </dev/null"
        result = guest.run(command, timeout=deadline, check=False)
    except GuestError as exc:
        return f"guest lost: {first_line(exc)}"
    return f"deadline ({deadline:g} s)" if result.timed_out else f"exited with status {result.exit_status}"


def collect(guest: Guest, since: int, lost: bool) -> Logs:
    """The run's console, and from a guest that still answers its kernel log and the program's output."""
    logs = Logs()
    if not lost:
        try:
            logs.dmesg = guest.run(["dmesg"], timeout=30, check=False).stdout
            logs.output = guest.run(["tail", "-c", str(OUTPUT_TAIL), f"{SCRATCH}/output"], timeout=30, check=False).stdout
        except GuestError as exc:
            logs.dmesg = f"(the kernel log could not be read: {first_line(exc)})\n"
    logs.console = guest.console_text(since)
    return logs


def run_once(lab: Lab, program: Program, index: int, deadline: float) -> tuple[Run, Logs]:
    """The program in one fresh guest, judged by the splats on the console."""
    start = time.monotonic()
    guest = lab.guest(lab.rundir(f"{safe_name(program.name)}-run{index}"))
    try:
        since = guest.console_offset()
        ended = execute(guest, program, deadline)
        time.sleep(SETTLE)
        logs = collect(guest, since, ended.startswith("guest lost"))
    finally:
        guest.shutdown()
    found = splats.scan(logs.console, lab.settings.suppress)
    outcome = FIRED if found else ERROR if ended.startswith("guest lost") else QUIET
    run = Run(program.name, index, outcome, triage.unique(s.title for s in found), ended, time.monotonic() - start)
    return run, logs


def keep(run: Run, logs: Logs, program: Program, results: Path) -> str:
    """Write the run's console, kernel log and output under `results`; the directory."""
    where = results / safe_name(program.name) / f"run{run.index}"
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    (where / "console.txt").write_text(logs.console, errors="replace")
    (where / "dmesg.txt").write_text(logs.dmesg, errors="replace")
    (where / "output.txt").write_text(logs.output, errors="replace")
    (where / "run.txt").write_text(f"{program.name} ({program.how}): {' '.join(program.argv)}\n"
                                   f"{run.outcome}; {run.ended}; {run.seconds:.1f} s\n" + "".join(
                                       f"{t}\n" for t in run.titles))
    return str(where)


def run_program(lab: Lab, program: Program, repeat: int, deadline: float = DEFAULT_DEADLINE,
                results: Path | None = None, say: Say = print) -> list[Run]:
    """`repeat` runs of `program`, each in a fresh guest; the logs of each firing (of every run with
    the lab's keep setting `all`, of none with `none`) are kept under `results`."""
    runs = []
    policy = lab.settings.keep
    for index in range(1, repeat + 1):
        run, logs = run_once(lab, program, index, deadline)
        if results is not None and (policy == "all" or policy == "failed" and run.outcome != QUIET):
            run.kept = keep(run, logs, program, results)
        say(run.line())
        runs.append(run)
    return runs


def summary(name: str, runs: list[Run]) -> str:
    """`NAME  program: fired k of N: TITLE (count); ...`, and the runs the lab lost, if any."""
    fired = [r for r in runs if r.outcome == FIRED]
    counts = Counter(t for r in fired for t in r.titles)
    text = f"{name}  program: fired {len(fired)} of {len(runs)}"
    if counts:
        text += ": " + "; ".join(f"{title} ({n})" for title, n in counts.most_common())
    errors = [r for r in runs if r.outcome == ERROR]
    if errors:
        text += f"  [{len(errors)} lab error{'s' if len(errors) > 1 else ''}: {errors[0].ended}]"
    return printable(text, lines=False)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def safe_name(name: str) -> str:
    """A file name made of `name` (a path as given on the command line)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "program"
