"""`fuselab repro FILES`: images and syzkaller reproducers through every driver, each judged."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pytest_fuselab import capabilities
from pytest_fuselab.cli.options import add_settings, output_file, settings_from, whole
from pytest_fuselab.cli.progress import Progress
from pytest_fuselab.errors import SettingError
from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.judge import program
from pytest_fuselab.lab import Lab
from pytest_fuselab.judge.verdict import ERROR, Key, item_keys, key_names
from pytest_fuselab.settings import Settings
from pytest_fuselab.text import printable
from pytest_fuselab.workdirs import work_dir

if TYPE_CHECKING:
    from pytest_fuselab.judge.containment import Verdict
    from pytest_fuselab.reproducers import Extracted

MOST_MIB = 1 << 20  # 1 TiB: more than any image a guest could take
MOST_GUESTS = 64
MOST_ROUNDS = 1000
LAB_ERROR = 3  # exit status when the lab failed to judge an image (and nothing breached)


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab repro`."""
    rp = sub.add_parser("repro", help="run images or syzkaller reproducers through the drivers and judge")
    rp.add_argument("files", nargs="+", help="images (.gz/.xz/.zst/.bz2 too), .syz programs, C reproducers, dirs")
    rp.add_argument("--driver", action="append", choices=list(DRIVERS),
                    help="driver to use (repeatable; default: all)")
    rp.add_argument("--repeat", type=whole(1, MOST_ROUNDS), default=1,
                    help="run everything N times (how reliably it fires)")
    rp.add_argument("--guests", type=whole(1, MOST_GUESTS), default=1,
                    help="guests judging images side by side (default 1)")
    rp.add_argument("--json", type=output_file, help="write the verdicts as JSON lines to this file")
    rp.add_argument("--html", type=output_file, help="write the images x drivers matrix as a self-contained HTML page")
    rp.add_argument("--size-limit", type=whole(1, MOST_MIB), default=512,
                    help="largest image to accept, in MiB (default 512)")
    program.add_options(rp)  # --mode, --syzkaller, --deadline, --results: running the reproducer's own program
    add_settings(rp)


def cmd_repro(args: argparse.Namespace) -> int:
    """Extract the images of reproducers or image files, run each through the drivers, judge;
    exit 1 on a containment breach, else 3 when the lab failed to judge something, else 0."""
    settings = settings_from(args)  # a bad setting is refused before any file is read
    report = Report.open(args.json, args.html)  # so is an output file that cannot be written
    ran = program.run_cli(args, settings)  # the programs of .c/.syz inputs (--mode); the rest is for the image judge
    if not ran.image_paths:
        return ran.status
    inputs = Inputs.read(ran.image_paths, args.size_limit << 20)  # a bad input is refused before any guest
    report.order = list(inputs.names().values())  # the matrix in the order of the inputs, not of arrival
    try:
        with interrupts_as_keyboard():
            judge(args, settings, inputs, report)
    except BaseException as exc:
        report.close(stopped="interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped by an error")
        raise
    report.close()
    verdicts = report.verdicts
    breaches, errors = (sum(v.verdict == k for v in verdicts) for k in ("breach", ERROR))
    print(f"{len(verdicts)} verdicts: {breaches} containment breaches, "
          f"{sum(v.verdict == 'finding' for v in verdicts)} kernel findings, {errors} lab errors")
    return 1 if breaches or ran.status == 1 else LAB_ERROR if errors or ran.status else 0


@dataclass
class Inputs:
    """The images of a run's inputs, extracted anew on each pass over them (one input's images
    held at a time, as sparse extents), and the keys that name them (verdict.key_names)."""

    paths: list[Path]
    size_limit: int
    keys: list[Key] = field(default_factory=list)

    @classmethod
    def read(cls, paths: list[Path], size_limit: int) -> Inputs:
        """A first pass: every input read (a bad one refused now), its images counted and named, none kept."""
        inputs = cls(paths, size_limit)
        inputs.keys = item_keys(inputs.images())
        return inputs

    def images(self) -> Iterator[Extracted]:
        """The images, one input at a time."""
        from pytest_fuselab import reproducers

        return reproducers.iter_extract(self.paths, self.size_limit)

    def names(self) -> dict[Key, str]:
        return key_names(self.keys)


class Report:
    """Where verdicts go as they come: a line each on stdout, a JSON line each (flushed), and at
    the end (or on interruption) the matrix, per-driver summary and the HTML page."""

    def __init__(self, json_path: Path | None, html: Path | None) -> None:
        self.json_path, self.html = json_path, html
        self.json_out: TextIO | None = None  # opened at the first verdict
        self.verdicts: list[Verdict] = []
        self.progress: Progress | None = None
        self.repeat = 1
        self.order: list[str] = []  # image names in input order (the matrix rows); [] = as they came

    @classmethod
    def open(cls, json_path: Path | None, html: Path | None) -> Report:
        """Open the outputs now: one that cannot be written fails before the run, not after it."""
        for path in (json_path, html):
            try:
                if path is not None:
                    writable(path)
            except OSError as exc:
                raise SettingError(f"{printable(str(path), lines=False)}: cannot write the report there "
                                   f"({exc.strerror})") from exc
        return cls(json_path, html)

    def _json(self) -> TextIO | None:
        if self.json_out is None and self.json_path is not None:
            self.json_out = self.json_path.open("w", encoding="utf-8")
        return self.json_out

    def said(self, v: Verdict) -> None:
        self.verdicts.append(v)
        out = self._json()
        if out is not None:
            out.write(json.dumps(v.to_json()) + "\n")
            out.flush()
        if self.progress is not None:
            self.progress.verdict()
            self.progress.say(line(v))
        else:
            print(line(v), flush=True)

    def in_order(self) -> list[Verdict]:
        """The verdicts by the order of their images among the inputs (as they came within one image)."""
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(self.verdicts, key=lambda v: rank.get(v.image, len(rank)))

    def close(self, stopped: str = "") -> None:
        """The end of a run, or of what was judged of it when `stopped` says why: the matrix, the
        per-driver summary, the HTML page."""
        from pytest_fuselab.judge import matrix, triage

        if self.progress is not None:
            self.progress.close()
        out = self._json()
        if out is not None:
            out.close()
        note = f"{stopped} after {len(self.verdicts)} verdicts" if stopped else ""
        if self.html is not None:
            self.html.write_text(matrix.page(self.in_order(), note=note), encoding="utf-8")
            print(f"fuselab: matrix page in {printable(str(self.html), lines=False)}" + (f" ({note})" if note else ""))
        if stopped:
            return
        print("\n".join(matrix.terminal(self.in_order())))
        if self.repeat > 1:
            print("\n".join(triage.fire_rates(self.verdicts, self.repeat)))
        print("\n".join(triage.exercised(self.verdicts)))


def writable(path: Path) -> None:
    """OSError unless `path` can be written (a file made to find out is removed again)."""
    existed = path.exists()
    with path.open("a"):
        pass
    if not existed:
        path.unlink()


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM (a `timeout`, a CI job cancelled) stops the run as Ctrl-C does, so what was judged is written."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def judge(args: argparse.Namespace, settings: Settings, inputs: Inputs, report: Report) -> None:
    """Every image through the chosen drivers, `--repeat` times (extracted again for each round, one
    input at a time), each verdict reported as it comes."""
    from pytest_fuselab.judge import containment, parallel

    if settings.hosts is not None:  # judged on the machines of hosts.toml, over execnet channels
        from pytest_fuselab.hosts import runs

        return runs.repro(args, settings, inputs, report)
    with work_dir("fuselab-repro-") as tmp:
        lab = Lab(settings, Path(tmp))
        usable = containment.usable_drivers(lab)
        drivers = args.driver or usable
        for name in sorted(set(drivers) - set(usable)):
            missing = capabilities.of(lab).missing(DRIVERS[name].needs)
            raise SettingError(f"--driver {name}: this guest's stack cannot run it ({missing}); "
                               "use --stack with a service stack")
        report.repeat = args.repeat
        report.progress = progress = Progress(len(inputs.keys) * args.repeat, per=len(drivers))
        lab.progress = progress.message
        names = inputs.names()
        for n in range(args.repeat):
            workdir = Path(tmp) / f"round{n}"
            if args.guests > 1:
                parallel.judge_images(lab, workdir, inputs.images(), drivers, args.guests, said=report.said,
                                      watch=progress.status, names=names)
            else:
                runner = containment.ImageRunner(lab, workdir, watch=progress.status)
                for _v in runner.run(inputs.images(), drivers, report.said, names):
                    pass


def line(v: Verdict) -> str:
    """One verdict as one line: outcome, driver, image, how far, steps, server, splats, time."""
    from pytest_fuselab.judge.matrix import label

    steps = " ".join(f"{s.name}={s.status}" for s in v.steps)
    how = v.reached or "-"
    if v.refusal:
        how += f" ({v.refusal})"
    if v.hung:
        how += f"; {v.hung}"
    return printable(f"{label(v).upper():9} {v.driver:15} {v.image}  {how}  {steps}  server:{v.server}  "
                     f"{'; '.join(v.splats) or '-'}  {v.seconds:.1f}s", lines=False)
