"""Run the reproducer itself, syzbot-style: a C reproducer compiled on the host (gcc, static) and a
`.syz` program through syzkaller's own syz-execprog, each run as root in N fresh guests with a
deadline, reported as "fired k of N" with the distinct splat titles.  Which inputs get their program
run and which their image judged is decided here (`plan`, `--mode program|image|both`)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from pytest_fuselab.errors import SettingError
from pytest_fuselab.lab import Lab, stderr_progress
from pytest_fuselab.settings import Settings
from pytest_fuselab.text import printable
from pytest_fuselab.workdirs import work_dir
from .build import compile_c, execprog_argv, syzkaller_binaries
from .runner import DEFAULT_DEADLINE, ERROR, FIRED, QUIET, Program, Run, Say, run_program, summary

__all__ = ["DEFAULT_DEADLINE", "ERROR", "FIRED", "MODES", "QUIET", "Outcome", "Plan", "Program", "Run", "add_options", "plan", "prepare",
           "run_cli", "run_files", "summary"]

MODES = ("program", "image", "both")
C_SUFFIXES = (".c",)
SYZ_SUFFIXES = (".syz", ".prog")
MOST_SECONDS = 24 * 3600.0
FOUND, LAB_ERROR = 1, 3  # exit statuses: a program fired (a finding); the lab failed (and nothing fired)


@dataclass(frozen=True)
class Plan:
    """What `fuselab repro` does with one input: run its program (c or syz), judge its image, or both."""

    path: Path
    program: str | None  # "c", "syz" or None
    image: bool
    note: str = ""  # why a part does not apply

    def line(self, name: str) -> str:
        """`NAME  mode: program+image`, and why a part is left out."""
        parts = [p for p, on in (("program", self.program is not None), ("image", self.image)) if on]
        return printable(f"{name}  mode: {'+'.join(parts) or 'nothing'}" + (f" ({self.note})" if self.note else ""),
                         lines=False)


def kind_of(path: Path) -> str | None:
    """c for a C reproducer, syz for a syzkaller program, None for anything else (images)."""
    suffix = path.suffix.lower()
    return "c" if suffix in C_SUFFIXES else "syz" if suffix in SYZ_SUFFIXES else None


def has_image(path: Path) -> bool:
    """Whether a program mounts an image (the image judge has something to take from it)."""
    try:
        return b"syz_mount_image" in path.read_bytes()[: 64 << 20]
    except OSError:
        return True  # let the image reader name the problem


def plan_file(path: Path, mode: str, syzkaller: bool) -> Plan:
    """The plan for one file (see `plan`)."""
    kind = kind_of(path)
    wants_image = mode in ("image", "both")
    if kind is None:
        if mode == "program":
            raise SettingError(f"{path}: not a program (a C reproducer .c or a syzkaller program .syz): "
                               "use --mode image or both")
        return Plan(path, None, True)
    image = wants_image and has_image(path)
    note = "no syz_mount_image in it: no image to judge" if wants_image and not image else ""
    if kind == "syz" and mode != "image" and not syzkaller:
        if mode == "program":
            raise SettingError(f"{path}: a .syz program runs only through syz-execprog: give --syzkaller DIR "
                               "(a syzkaller build) or use --mode image")
        return Plan(path, None, image, "program not run: a .syz program needs --syzkaller DIR; image mode only")
    return Plan(path, kind if mode != "image" else None, image, note)


def programs_in(directory: Path) -> list[Path]:
    """The C reproducers and .syz programs under `directory`, sorted, hidden entries left out."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / name for name in sorted(files) if not name.startswith(".") and kind_of(Path(name))]
    return found


def plan(paths: list[Path], mode: str, syzkaller: bool) -> list[Plan]:
    """A plan per input: by default (`both`) a .c gets its program run and its image judged, a .syz
    too when a syzkaller build is given (else its image only), an image its image.  The programs in a
    directory each get a plan of their own; the directory goes whole to the image judge."""
    if mode not in MODES:
        raise SettingError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    plans = []
    for path in paths:
        if not path.is_dir():
            plans.append(plan_file(path, mode, syzkaller))
            continue
        if mode != "image":
            for member in programs_in(path):
                if kind_of(member) == "c" or syzkaller:
                    plans.append(Plan(member, kind_of(member), False, "its image judged with its directory"
                                      if mode == "both" else ""))
        if mode != "program":
            plans.append(Plan(path, None, True))
    return plans


def prepare(item: Plan, name: str, workdir: Path, syzkaller: Path | None) -> Program:
    """The program of a planned input, ready to put in guests: compiled (C), or with syz-execprog."""
    if item.program == "c":
        binary = compile_c(item.path, workdir / f"{len(list(workdir.iterdir()))}-repro")
        return Program(name, {"repro": binary}, ["./repro"], ("repro",), "C, gcc -static")
    if syzkaller is None:
        raise SettingError(f"{item.path}: a .syz program needs --syzkaller DIR")
    execprog, executor = syzkaller_binaries(syzkaller)
    text = item.path.read_text(errors="replace")
    return Program(name, {"syz-execprog": execprog, "syz-executor": executor, "prog.syz": item.path},
                   execprog_argv(text), ("syz-execprog", "syz-executor"), "syz-execprog")


def display_names(paths: list[Path]) -> dict[Path, str]:
    """The file name of each path, or the path as given where two share a name."""
    names = [p.name for p in paths]
    return {p: p.name if names.count(p.name) == 1 else str(p) for p in paths}


# -- the `fuselab repro` options and the one call it makes --------------------------------------

def add_options(parser: argparse.ArgumentParser) -> None:
    """`--mode`, `--syzkaller`, `--deadline`, `--results` of `fuselab repro`."""
    from pytest_fuselab.cli.options import existing, seconds

    parser.add_argument("--mode", choices=MODES, default="both",
                        help="run the reproducer's own program, judge its image, or both (default: both where "
                             "both apply: a .c, or a .syz with --syzkaller; an image gets image)")
    parser.add_argument("--syzkaller", type=existing(directory=True), metavar="DIR",
                        help="a syzkaller build (DIR/bin/linux_amd64/syz-execprog and syz-executor) to run .syz programs")
    parser.add_argument("--deadline", type=seconds(MOST_SECONDS), default=DEFAULT_DEADLINE, metavar="S",
                        help=f"seconds each program run may take; reaching it ends the run normally "
                             f"(default {DEFAULT_DEADLINE:g})")
    parser.add_argument("--results", type=Path, default=Path("fuselab-results"), metavar="DIR",
                        help="where the console, kernel log and output of each firing are kept, under "
                             "DIR/programs/ (with --keep all: of every run; none: of no run)")


@dataclass
class Outcome:
    """What the programs of one `fuselab repro` did, and what is left for the image judge."""

    image_paths: list[Path]
    runs: list[Run]

    @property
    def status(self) -> int:
        """1 when a program fired, 3 when only the lab failed (a guest lost without a splat), else 0."""
        if any(r.outcome == FIRED for r in self.runs):
            return FOUND
        return LAB_ERROR if any(r.outcome == ERROR for r in self.runs) else 0


def run_files(lab: Lab, plans: list[Plan], workdir: Path, repeat: int, deadline: float = DEFAULT_DEADLINE,
              syzkaller: Path | None = None, results: Path | None = None, say: Say = print,
              progress: Say = stderr_progress) -> list[Run]:
    """Every planned program compiled first (a compile error stops before any guest), then run
    `repeat` times, each in a fresh guest: a line per run to `progress`, a summary line each to `say`."""
    names = display_names([p.path for p in plans if p.program])
    build = workdir / "programs"
    build.mkdir(parents=True, exist_ok=True)
    programs = [prepare(p, names[p.path], build, syzkaller) for p in plans if p.program]
    runs: list[Run] = []
    for program in programs:
        done = run_program(lab, program, repeat, deadline, results, say=progress)
        say(summary(program.name, done))
        runs += done
    return runs


def run_cli(args: argparse.Namespace, settings: Settings) -> Outcome:
    """`fuselab repro`'s programs: say the mode of each input, run the programs, hand back the rest."""
    plans = plan([Path(p) for p in args.files], args.mode, args.syzkaller is not None)
    names = display_names([p.path for p in plans])
    for item in plans:
        print(item.line(names[item.path]), flush=True)
    runs: list[Run] = []
    if any(p.program for p in plans):
        with work_dir("fuselab-program-") as tmp:
            lab = Lab(settings, Path(tmp) / "guests")
            runs = run_files(lab, plans, Path(tmp), args.repeat, args.deadline, args.syzkaller,
                             args.results / "programs", say=lambda text: print(text, flush=True))
    return Outcome([p.path for p in plans if p.image], runs)
