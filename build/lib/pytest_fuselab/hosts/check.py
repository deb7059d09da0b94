"""`fuselab hosts check`: `fuselab doctor` on every host, read into one table."""

from __future__ import annotations

import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pytest_fuselab.hosts import ssh
from pytest_fuselab.hosts.config import HostsFile
from pytest_fuselab.hosts.ssh import Reach

COLUMNS = ("host", "state", "accel (why)", "free disk", "image", "guests")


@dataclass(frozen=True)
class Row:
    """One host's line of the table."""

    host: str
    state: str
    accel: str = "-"
    free: str = "-"
    image: str = "-"
    guests: str = "-"

    def cells(self) -> tuple[str, ...]:
        return (self.host, self.state, self.accel, self.free, self.image, self.guests)


def parse_doctor(text: str) -> dict[str, str]:
    """`fuselab doctor`'s `topic  finding` lines as {topic: finding}."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^(\S+(?: \S+)?)\s{2,}(.*)$", line)
        if match:
            rows[match[1]] = match[2].strip()
    return rows


def row_for(hosts: HostsFile, reach: Reach, timeout: float = 120) -> Row:
    """Run doctor on one host and pick out what the table shows."""
    host = reach.host
    if reach.problem:
        return Row(host.name, f"UNREACHABLE: {reach.problem}")
    if not reach.ready:
        return Row(host.name, "not set up (run `fuselab hosts setup`)", guests=str(reach.guests))
    line = ssh.remote_command(host, f"{shlex.quote(host.workdir)}/venv/bin/fuselab doctor --no-probe "
                                    f"--accel {host.accel}")
    done = ssh.run(hosts, host, line, timeout)
    found = parse_doctor(done.stdout.decode(errors="replace"))
    if not found:
        return Row(host.name, f"doctor failed (status {done.returncode}): "
                              f"{done.stderr.decode(errors='replace').strip()[-200:]}")
    free = re.search(r"\(([\d.]+ GiB) free\)", found.get("cache", ""))
    state = "ok" if done.returncode == 0 else "MISSING: " + "; ".join(
        f"{k} {v}" for k, v in found.items() if "MISSING" in v)
    return Row(host.name, state, accel=found.get("acceleration", "-").split(" (probe kernel")[0],
               free=free[1] if free else "-", image=found.get("images", "-"), guests=str(reach.guests))


def rows(hosts: HostsFile, reaches: list[Reach]) -> list[Row]:
    """Every host's row, asked at once."""
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(reaches)))) as pool:
        return list(pool.map(lambda r: row_for(hosts, r), reaches))


def table(found: list[Row]) -> list[str]:
    """The rows as aligned text lines under a header."""
    lines = [COLUMNS, *(r.cells() for r in found)]
    widths = [max(len(cells[i]) for cells in lines) for i in range(len(COLUMNS) - 1)]
    text = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(cells[:-1])) + "  " + cells[-1] for cells in lines]
    text.insert(1, "-" * min(120, max(len(t) for t in text)))
    return text
