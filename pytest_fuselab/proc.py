"""Run host commands with their output logged, and errors that show the command and its log tail."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from pytest_fuselab.errors import FuselabError


def run(argv: list[str], error: type[FuselabError], log: Path | None = None, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> str:
    """Run `argv`, its output streamed to `log` as it comes; return the output, or raise `error`
    naming the command and its last lines."""
    with (open(log, "a+", errors="replace") if log else tempfile.TemporaryFile("w+", errors="replace")) as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
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
        raise error(f"command failed with status {proc.returncode}{where}:\n$ {' '.join(argv)}\n{last}")
    return text
