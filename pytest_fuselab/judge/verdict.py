"""One containment verdict: what happened to one image with one driver, how far it got, and the
image's wall-clock budget (judge/containment.py decides them)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pytest_fuselab.guest.protocol import DriverRecord, StepRecord
from pytest_fuselab.judge.drivers import Driver
from pytest_fuselab.judge.health import Health
from pytest_fuselab.reproducers import Extracted
from pytest_fuselab.text import suffixes

BUDGET = 150.0  # default seconds for one image through every driver, re-judging included (TCG)
UNJUDGED = "unjudged"  # the kernel was hurt and no one can be blamed: judge it alone on a fresh guest
ERROR = "error"  # the lab failed to judge (no answer, guest lost without a splat, protocol error)
REACHED = ("refused", "mounted", "walked", "modified", "unmounted", "checked")  # how far, in order
Step = StepRecord  # one step of a verdict, as the guest's judge sent it (or the host's "judge" step)


@dataclass
class Verdict:
    image: str
    driver: str
    verdict: str  # contained | breach (FUSE) ; clean | finding (kernel) ; skipped ; error (the lab's failure)
    steps: list[Step] = field(default_factory=list)
    splats: list[str] = field(default_factory=list)
    server: str = "-"  # the FUSE server's fate
    guest: str = "answers"
    stuck_mount: bool = False  # the mount could only be detached lazily
    evidence: str = ""  # splat excerpts and what else the lab saw, for reports
    seconds: float = 0.0
    reached: str = ""  # the furthest step: one of REACHED ("" when not even the mount ended)
    refusal: str = ""  # the mount's refusal: its words and exit status
    hung: str = ""  # "server hung during walk (connection aborted)", or why no verdict came in time
    entries: int = 0  # the walk's entries seen
    walk_errors: int = 0  # the walk's failed calls

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def decide(self, driver: Driver, health: Health) -> None:
        """The verdict from what the lab saw of the kernel; a guest lost without a splat is the lab's error."""
        self.splats, self.evidence = health.titles(), health.explain()
        self.guest = "lost" if health.lost else "answers"
        if health.lost and not (health.splats or health.stuck):
            self.verdict, self.splats = ERROR, []
        elif driver.fuse:
            self.verdict = "breach" if (health.damaged or self.stuck_mount) else "contained"
        else:
            self.verdict = "finding" if health.damaged else "clean"


@dataclass
class Budget:
    """The wall-clock seconds one image may still take."""

    seconds: float = BUDGET
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return max(0.0, self.start + self.seconds - time.monotonic())

    def used(self) -> float:
        return time.monotonic() - self.start


def failed(image: str, driver: str, why: str, seconds: float = 0.0, hung: str = "", evidence: str = "") -> Verdict:
    """A lab error: no verdict could be reached for `driver`, and `why`."""
    return Verdict(image, driver, ERROR, [Step("judge", -1, why[-300:], round(seconds, 2))], seconds=round(seconds, 2),
                   guest="-", hung=hung, evidence="\n\n".join(x for x in (why, evidence) if x))


def reached_by(steps: list[Step]) -> str:
    """How far the steps got, when the guest did not say: a refused mount, or the last step that ended."""
    by = {s.name: s for s in steps}
    mount = by.get("mount")
    if mount is None or mount.status == -1:
        return ""
    if mount.status != 0:
        return "refused"
    got = "mounted"
    for name, word in (("walk", "walked"), ("modify", "modified"), ("unmount", "unmounted"), ("fsck", "checked")):
        step = by.get(name)
        if step is None or step.status == -1 or (name == "unmount" and step.status != 0):
            break
        got = word
    return got


def refusal_of(steps: list[Step]) -> str:
    """A refused mount's last words and exit status, when the guest did not say."""
    mount = next((s for s in steps if s.name == "mount"), None)
    if mount is None:
        return ""
    words = " / ".join(line.strip() for line in mount.said.strip().splitlines()[-3:] if line.strip())
    return f"{words[-240:] or 'no words'} (exit {mount.status})"


def take_record(v: Verdict, record: DriverRecord) -> None:
    """What the guest's judge says of one driver, into its verdict (before `decide`)."""
    v.steps, v.server, v.stuck_mount, v.seconds = list(record.steps), record.server, record.stuck_mount, record.seconds
    v.reached = record.reached or reached_by(v.steps)
    v.refusal = record.refusal or (refusal_of(v.steps) if v.reached == "refused" else "")
    v.hung = record.hung
    v.entries, v.walk_errors = record.entries, record.walk_errors


Key = tuple[Path, int]  # an image: its input, and its index among that input's images


def item_keys(items: Iterable[Extracted]) -> list[Key]:
    """The key of each item (a pass over lazily extracted items holds none of them)."""
    return [(item.source, item.index) for item in items]


def key_names(keys: list[Key]) -> dict[Key, str]:
    """Each image's name: the shortest path suffix telling its input apart, with #N when that
    input gave several images."""
    short = suffixes(source for source, _ in keys)
    per_source: dict[Path, set[int]] = {}
    for source, index in keys:
        per_source.setdefault(source, set()).add(index)
    return {(source, index): short[source] + (f"#{index}" if len(per_source[source]) > 1 else "")
            for source, index in keys}


def item_names(items: Iterable[Extracted]) -> dict[Key, str]:
    """Each item's name, by its key (item_keys): see key_names."""
    return key_names(item_keys(items))


def name_of(names: dict[Key, str] | None, item: Extracted) -> str:
    """`item`'s name in `names`, or its file's name and index when it has none there."""
    return (names or {}).get((item.source, item.index)) or f"{item.source.name}#{item.index}"
