"""`fuselab run`: the scenario suite under pytest, with JUnit XML and a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_fuselab.build import image, recipe
from pytest_fuselab.build.stack import build as stack_build
from pytest_fuselab.cli.options import EXPOSED, add_settings, settings_from
from pytest_fuselab.errors import SettingError
from pytest_fuselab.lab import stderr_progress
from pytest_fuselab.settings import OPTIONS


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab run [PATHS] [pytest arguments]`."""
    run = sub.add_parser("run", help="run the scenario suite and print a summary (extra args go to pytest)")
    run.add_argument("paths", nargs="*", help="scenario files or directories (default: the scenarios/ suite)")
    run.add_argument("--results", default="fuselab-results", help="directory for JUnit XML (default: %(default)s)")
    add_settings(run)


def default_scenarios() -> Path:
    """The scenario suite `fuselab run` runs without PATHS: ./scenarios, else the clone's."""
    for candidate in (Path.cwd() / "scenarios", Path(__file__).resolve().parents[2] / "scenarios"):
        if candidate.is_dir():
            return candidate
    raise SettingError("no scenario suite here (./scenarios): give `fuselab run` the scenario files or "
                       "directories to run, or run it from a clone of pytest-fuselab")


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    import pytest

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / ".fuselab-write-test").touch()  # unwritable: an error now, not after the whole run
    (results / ".fuselab-write-test").unlink()
    settings = settings_from(args)
    if settings.stack is not None:  # built here, not inside the first test (and its timeout)
        base, layer = stack_build.image_inputs(recipe.load(settings.image), settings.stack, stderr_progress)
        image.ensure(base, stderr_progress, layer=layer)
    argv = [str(p) for p in (args.paths or [default_scenarios()])]
    argv += [f"--junitxml={results / 'junit.xml'}", "-o", "junit_family=legacy", "-rfEs", "-p", "no:cacheprovider"]
    argv += [f"{opt.flag}={getattr(args, opt.name)}" for opt in OPTIONS
             if opt.name in EXPOSED and getattr(args, opt.name) is not None]
    status = pytest.main(argv + extra)
    print(f"fuselab: JUnit XML in {results / 'junit.xml'}")
    return int(status)
