"""Run host commands with their output logged, and errors that show the command and its log tail."""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from pytest_fuselab.errors import FuselabError
from pytest_fuselab.workdirs import host_error


def run(argv: list[str], error: type[FuselabError], log: Path | None = None, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> str:
    """Run `argv`, its output streamed to `log` as it comes; return the output, or raise `error`
    naming the command and its last lines."""
    with _output(log, argv) as out:
        start = out.tell()
        try:
            proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            raise error(f"{argv[0]} is not installed on this host: run `fuselab setup`") from exc
        out.seek(start)
        text = out.read()
    if proc.returncode != 0:
        last = "\n".join(text.strip().splitlines()[-25:])
        where = f" (full log: {log})" if log else ""
        raise error(f"command failed with status {proc.returncode}{where}:\n$ {shlex.join(argv)}\n{last}")
    return text


def _output(log: Path | None, argv: list[str]) -> IO[str]:
    """`log` opened for appending, or a temporary file (HostError when TMPDIR is full or unwritable),
    with the command written at its end."""
    if log:
        out = open(log, "a+", errors="replace")
    else:
        try:
            out = tempfile.TemporaryFile("w+", errors="replace")
        except OSError as exc:
            raise host_error(exc, Path(tempfile.gettempdir())) from exc
    try:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
    except OSError as exc:
        out.close()
        if log is not None:
            raise
        raise host_error(exc, Path(tempfile.gettempdir())) from exc
    return out
