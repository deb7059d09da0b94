"""Run host commands with their output logged, and errors that show the command and its log tail."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .errors import FuselabError


def run(argv: list[str], error: type[FuselabError], log: Path | None = None, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> str:
    """Run `argv`; return its output, or raise `error` naming the command and its last lines."""
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    except FileNotFoundError as exc:
        raise error(f"{argv[0]} is not installed on this host: run `fuselab setup`") from exc
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(argv)}\n{proc.stdout}\n")
    if proc.returncode != 0:
        last = "\n".join(proc.stdout.strip().splitlines()[-25:])
        where = f" (full log: {log})" if log else ""
        raise error(f"command failed with status {proc.returncode}{where}:\n$ {' '.join(argv)}\n{last}")
    return proc.stdout
