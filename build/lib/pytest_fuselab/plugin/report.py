"""The run summary: one row per scenario and variant (driver), with result, time and splats."""

from __future__ import annotations

import re
from typing import Any

from pytest_fuselab.text import printable

MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfailed": "XFAIL"}


def split_nodeid(nodeid: str) -> tuple[str, str]:
    """'scenarios/test_x.py::test_y[kernel-fuse2fs]' -> ('test_x.py::test_y', 'kernel-fuse2fs')."""
    match = re.match(r"^(.*?)(?:\[(.*)\])?$", nodeid)
    assert match is not None
    name = match.group(1).rsplit("/", 1)[-1]
    return name, match.group(2) or "-"


def table(results: list[dict[str, Any]], accel: str | None = None) -> list[str]:
    """The summary's lines; splat titles come from guest consoles, so every cell is escaped."""
    rows: list[tuple[str, ...]] = [("scenario", "variant", "result", "time", "kernel splats / guest / notes")]
    for r in results:
        scenario, variant = split_nodeid(r["nodeid"])
        result = MARK.get(r["outcome"], r["outcome"].upper())
        if r.get("when") not in (None, "call"):
            result += f" ({r['when']})"
        cells = (scenario, variant, result, f"{r['seconds']:.1f}s", "; ".join(r["splats"]) or "-")
        rows.append(tuple(printable(cell, lines=False) for cell in cells))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4] for row in rows]
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    counts = {k: sum(1 for r in results if r["outcome"] == k) for k in ("passed", "failed", "skipped", "xfailed")}
    lines.append(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
                 + (f", {counts['xfailed']} expected failures (findings)" if counts["xfailed"] else "")
                 + (f"; acceleration: {accel}" if accel else ""))
    return lines
