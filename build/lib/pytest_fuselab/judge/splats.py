"""Recognise kernel splats in console text and give each a syzbot-style title."""

from __future__ import annotations

import re
from dataclasses import dataclass

TIMESTAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s*(\[\s*[TC]\d+\]\s*)?")
FUNC = re.compile(r"([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
RIP = re.compile(r"RIP: [0-9a-f]{4}:([A-Za-z_][\w.]*)\+0x")
END = re.compile(r"---\[ end (trace|Kernel panic)")
# Frames that say where a task waits, not why: skipped when naming a hung task.
SCHED_FRAMES = re.compile(r"^(__schedule|schedule|schedule_timeout|schedule_preempt_disabled|"
                          r"io_schedule|io_schedule_timeout|__wait_for_common|wait_for_completion\w*|"
                          r"rwsem_down_\w+_slowpath|__mutex_lock(\.constprop\.\d+)?|mutex_lock|"
                          r"down_read|down_write|bit_wait\w*|__wait_on_bit\w*|out_of_line_wait_on_bit\w*|"
                          r"folio_wait_bit_common|__folio_lock|__\w+_lock_slowpath|dump_stack\w*)$")


@dataclass(frozen=True)
class Splat:
    """One kernel report found on the console."""

    title: str
    excerpt: str
    line: int  # 1-based line in the scanned text

    def __str__(self) -> str:
        return f"{self.title}\n{self.excerpt}"


# (start pattern, kind); the kind picks how the title is made.
STARTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"BUG: (KASAN|KFENCE|KMSAN|KCSAN): ([\w -]+?) in "), "sanitizer"),
    (re.compile(r"UBSAN: ([\w-]+) in (\S+)"), "ubsan"),
    (re.compile(r"INFO: task (\S+):\d+ blocked for more than \d+ seconds"), "hung"),
    (re.compile(r"rcu: INFO: \w+ (self-)?detected stalls?"), "rcu"),
    (re.compile(r"watchdog: BUG: soft lockup"), "softlockup"),
    (re.compile(r"kernel BUG at (\S+?)!?$"), "kernel_bug"),
    (re.compile(r"BUG: unable to handle (page fault|kernel \w+ \w+)"), "rip"),
    (re.compile(r"general protection fault"), "rip"),
    (re.compile(r"Oops: "), "rip"),
    (re.compile(r"BUG: (.+)"), "bug"),
    (re.compile(r"WARNING: "), "warning"),
    (re.compile(r"VFS: Busy inodes after unmount of (\S+)"), "busy"),
    (re.compile(r"Kernel panic - not syncing: (.*)"), "panic"),
]


def strip(line: str) -> str:
    return TIMESTAMP.sub("", line.rstrip("\r"))


def first_func(lines: list[str], skip_sched: bool = False) -> str | None:
    for line in lines:
        match = RIP.search(line)
        if match:
            return str(match.group(1))
    for line in lines:
        for name in FUNC.findall(line):
            if skip_sched and SCHED_FRAMES.match(name):
                continue
            return str(name)
    return None


def make_title(kind: str, match: re.Match[str], body: list[str]) -> str:
    first = body[0]
    func = first_func(body[1:], skip_sched=kind == "hung") or "?"
    if kind == "sanitizer":
        access = re.search(r"(Read|Write) of size", "\n".join(body[:4]))
        rw = f" {access.group(1)}" if access else ""
        where = FUNC.search(first)
        return f"{match.group(1)}: {match.group(2)}{rw} in {where.group(1) if where else func}"
    if kind == "ubsan":
        return f"UBSAN: {match.group(1)} in {match.group(2)}"
    if kind == "hung":
        return f"INFO: task hung in {func}"
    if kind == "rcu":
        return f"INFO: rcu detected stall in {func}"
    if kind == "softlockup":
        return f"BUG: soft lockup in {func}"
    if kind == "kernel_bug":
        return f"kernel BUG in {func if func != '?' else match.group(1)}"
    if kind == "rip":
        head = "general protection fault" if "general protection" in first else "BUG: unable to handle kernel paging request"
        return f"{head} in {func}"
    if kind == "warning":
        where = FUNC.search(first)
        return f"WARNING in {where.group(1) if where else func}"
    if kind == "busy":
        return f"VFS: Busy inodes after unmount of {match.group(1)}"
    if kind == "panic":
        return f"kernel panic: {match.group(1).strip()}"
    return f"BUG: {match.group(1).strip()}"


def starts_report(line: str) -> bool:
    """A line that opens a new report (a panic line continues the report before it)."""
    return any(p.search(line) for p, kind in STARTS if kind != "panic") and not END.search(line)


def excerpt_end(lines: list[str], start: int, limit: int = 60) -> int:
    """The report runs to its end marker, a sanitizer's closing rule, or the next report."""
    for i in range(start + 1, min(len(lines), start + limit)):
        if END.search(lines[i]) or lines[i].startswith("====="):
            return i + 1
        if starts_report(lines[i]) and not lines[i].startswith("Oops: "):
            return i
    return min(len(lines), start + limit)


def scan(text: str, suppress: list[str] | tuple[str, ...] = ()) -> list[Splat]:
    """Return the splats in `text`, minus those whose title matches a `suppress` regex."""
    lines = [strip(line) for line in text.splitlines()]
    found: list[Splat] = []
    skip_to = 0
    for i, line in enumerate(lines):
        if i < skip_to:
            continue
        for pattern, kind in STARTS:
            match = pattern.search(line)
            if not match:
                continue
            end = excerpt_end(lines, i)
            body = lines[i:end]
            title = make_title(kind, match, body)
            if not any(re.search(s, title) for s in suppress):
                found.append(Splat(title, "\n".join(body), i + 1))
            skip_to = end
            break
    return found
