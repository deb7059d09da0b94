"""Triage: syzbot-style titles made comparable across runs, how often a reproducer fires, and how
much of each driver a run exercised (refusals sorted by their reason)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

from pytest_fuselab.guest.protocol import StepRecord
from pytest_fuselab.text import printable

# compiler clones of a function are the same place in the source
CLONE = re.compile(r"\.(constprop|isra|part|cold|llvm)(\.\d+)*\b")
# why a mount was refused, from its words (fuse2fs 1.47 says "quotas not supported." and then a
# misleading "unrecognized options"; the kernel says "Structure needs cleaning" for EUCLEAN)
REFUSALS = (
    ("quota feature", re.compile(r"quota", re.I)),
    ("EUCLEAN", re.compile(r"EUCLEAN|structure needs cleaning", re.I)),
    ("bad superblock", re.compile(r"superblock|bad magic|wrong fs type|can't find an? ext|not an? ext[234]"
                                  r"|no valid|corrupt", re.I)),
    ("journal/feature unsupported", re.compile(r"journal|feature|unsupported|not supported", re.I)),
)
NOT_APPLICABLE = ("skipped", "n/a")  # a driver that does not take this kind of image


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


class Reach(Protocol):
    """How far one image got with one driver (containment.Verdict fits)."""

    driver: str
    verdict: str
    reached: str
    refusal: str
    hung: str
    steps: list[StepRecord]


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
        lines.append(printable(f"{image}  {driver}: fired {fired} of {len(group)}  {titles}", lines=False))
    return lines


def refusal_kind(words: str) -> str:
    """The reason of a refusal, from its words: quota feature, EUCLEAN, bad superblock, journal/feature
    unsupported, or other."""
    return next((kind for kind, pattern in REFUSALS if pattern.search(words)), "other")


def why_refused(v: Reach) -> str:
    """The reason of a verdict's refused mount, from the refusal and everything its mount step said
    (a server started by systemd-run says first which unit it runs as)."""
    said = "\n".join(s.said for s in v.steps if s.name == "mount")
    return refusal_kind(f"{v.refusal}\n{said}")


def exercised(verdicts: Sequence[Reach]) -> list[str]:
    """One line per driver: how many images it really exercised (mounted at least), how many it
    refused and why, how many hung, how many the lab failed to judge, how many did not apply."""
    by_driver: dict[str, list[Reach]] = defaultdict(list)
    for v in verdicts:
        by_driver[v.driver].append(v)
    lines = []
    for driver, group in by_driver.items():
        judged = [v for v in group if v.verdict not in NOT_APPLICABLE]
        refused = [v for v in judged if v.reached == "refused"]
        errors = sum(v.verdict == "error" for v in judged)
        mounted = sum(bool(v.reached) and v.reached != "refused" and v.verdict != "error" for v in judged)
        parts = [f"{driver}: exercised {mounted} of {len(judged)}"]
        if refused:
            kinds = Counter(why_refused(v) for v in refused)
            parts.append(f"refused {len(refused)} ({', '.join(f'{k} {n}' for k, n in kinds.most_common())})")
        hung = sum(bool(v.hung) and v.verdict != "error" for v in judged)
        unmounted = sum(not v.reached and not v.hung and v.verdict != "error" for v in judged)
        for count, what in ((hung, "hung"), (unmounted, "mount never ended"), (errors, "lab errors"),
                            (len(group) - len(judged), "n/a")):
            if count:
                parts.append(f"{what} {count}")
        lines.append(printable(", ".join(parts), lines=False))
    return lines
