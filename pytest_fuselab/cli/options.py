"""What the `fuselab` commands share: the lab settings as options, spelled as typed, and bounded argument types."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path

from pytest_fuselab.errors import SettingError
from pytest_fuselab.settings import OPTIONS, Settings, resolve

PYTEST_ONLY = ("suppress", "corpus")  # set by ini or FUSELAB_* env, not by a `fuselab` option
EXPOSED = {opt.name for opt in OPTIONS if opt.name not in PYTEST_ONLY}
PLUGIN_FLAG = re.compile(r"(?<![\w-])--fuselab-([a-z]+(?:-[a-z]+)*)(?![\w-])")


def flag(name: str) -> str:
    """How a `fuselab` command spells the setting `name`: `--memory` where pytest says `--fuselab-memory`."""
    return "--" + name.replace("_", "-")


# settings that only some commands use, and those commands: elsewhere they would do nothing
ONLY_FOR = {"budget": ("repro", "bench", "run", "bisect-run"),  # the commands that judge hostile images
            "hosts": ("run", "repro", "bench")}  # those that can spread their work over other machines


def offered(name: str, command: str) -> bool:
    """Whether the `fuselab` command `command` takes the setting `name` as an option."""
    return name in EXPOSED and command in ONLY_FOR.get(name, (command,))


def add_settings(parser: argparse.ArgumentParser, command: str | None = None) -> None:
    """The lab settings as options of one command (`command`: its name, by default the last word of its prog)."""
    command = command or parser.prog.split()[-1]
    for opt in OPTIONS:
        if offered(opt.name, command):
            parser.add_argument(flag(opt.name), dest=opt.name, metavar=opt.metavar, help=f"{opt.help} (env {opt.env})")


def respell(message: str, args: argparse.Namespace) -> str:
    """`message` with each plugin flag (`--fuselab-X`) that this command takes as `--X` spelled `--X`."""
    def spell(match: re.Match[str]) -> str:
        name = match[1].replace("-", "_")
        return flag(name) if name in EXPOSED and hasattr(args, name) else match[0]

    return PLUGIN_FLAG.sub(spell, message)


def settings_from(args: argparse.Namespace) -> Settings:
    """The lab settings of one command: its options > FUSELAB_* environment > defaults."""
    try:
        return resolve({opt.name: getattr(args, opt.name, None) for opt in OPTIONS})
    except SettingError as exc:
        raise SettingError(respell(str(exc), args)) from exc


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text[:40]} is out of range: give {low} to {high}")
        return value

    return parse


def seconds(high: float) -> Callable[[str], float]:
    """An argument type: a number of seconds above 0 and at most `high`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
        if not (math.isfinite(value) and 0 < value <= high):
            raise argparse.ArgumentTypeError(f"{text[:40]} is out of range: give more than 0 and at most {high:g}")
        return value

    return parse


def existing(directory: bool = False) -> Callable[[str], Path]:
    """An argument type: a path that exists (and is a directory, if asked)."""
    def parse(text: str) -> Path:
        path = Path(text).expanduser()
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
        if directory and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: not a directory")
        return path

    return parse


def output_file(text: str) -> Path:
    """An argument type: a file to write, in a directory that exists (checked before a long run, not after)."""
    path = Path(text).expanduser()
    if path.is_dir() or not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: cannot write a file there (a directory, or no such directory)")
    return path
