"""Crash triage: syzbot-style titles made comparable across runs, and how often a reproducer fires."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Protocol

# compiler clones of a function are the same place in the source
CLONE = re.compile(r"\.(constprop|isra|part|cold|llvm)(\.\d+)*\b")


def normalize(title: str) -> str:
    """The title with compiler clone suffixes and extra spaces removed."""
    return " ".join(CLONE.sub("", title).split())


def unique(titles: Iterable[str]) -> list[str]:
    """Normalized titles, each once, in the order first seen."""
    return list(dict.fromkeys(normalize(t) for t in titles))


class Run(Protocol):
    """One reproducer run (containment.Verdict fits)."""

    image: str
    driver: str
    verdict: str
    splats: list[str]


FIRED = ("breach", "finding")


def fire_rates(runs: Iterable[Run], repeat: int) -> list[str]:
    """One line per image and driver: how often it fired (k of N) and each distinct title with its count."""
    by_key: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_key[(run.image, run.driver)].append(run)
    lines = []
    for (image, driver), group in by_key.items():
        fired = sum(r.verdict in FIRED for r in group)
        counts = Counter(t for r in group for t in unique(r.splats))
        titles = "; ".join(f"{t} (x{n})" for t, n in counts.most_common()) or "-"
        lines.append(f"{image}  {driver}: fired {fired} of {len(group)}  {titles}")
    return lines
