"""Patch series for stack builds: a directory of patches, an mbox, or a mailing-list thread,
turned into mails applied one by one with `git am` (a series that does not apply names its patch)."""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pytest_fuselab import proc
from pytest_fuselab.errors import ImageError

PATCH_SUFFIXES = (".patch", ".diff", ".mbox", ".eml", ".mail")
SEPARATOR = re.compile(r"^\^ permalink raw reply.*$", re.M)
MBOX_FROM = re.compile(r"^From \S+ .*\d{4}$", re.M)
GIT = ["git", "-c", "user.name=fuselab", "-c", "user.email=fuselab@localhost", "-c", "commit.gpgsign=false"]


@dataclass(frozen=True)
class Patch:
    """One mail `git am` can take, and where it came from."""

    subject: str
    origin: str
    mail: str


def _subject_of(mail: str) -> str:
    match = re.search(r"^Subject:\s*(.+)$", mail, re.M)
    return match.group(1).strip() if match else "(no subject)"


def is_patch_subject(subject: str) -> bool:
    """[PATCH n/m] mails carry patches; cover letters (0/m), patchsets and replies do not."""
    if subject.lower().startswith("re:") or not re.match(r"\[PATCH\b", subject):
        return False
    number = re.search(r"\b0+/\d+\]", subject)
    return number is None


def complete_last_hunk(body: str) -> str:
    """Give back the blank context lines a thread page drops at the end of a message: the page
    cannot tell them from the blank lines between messages, the hunk header can."""
    lines = body.split("\n")[:-1]
    start = max((i for i, line in enumerate(lines) if line.startswith("@@ ")), default=None)
    if start is None:
        return body
    counts = re.match(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@", lines[start])
    if counts is None:
        return body
    old = int(counts.group(1) or 1)
    new = int(counts.group(2) or 1)
    hunk = lines[start + 1:]
    have_old = sum(1 for line in hunk if not line.startswith("+"))
    have_new = sum(1 for line in hunk if not line.startswith("-"))
    short = old - have_old
    if short > 0 and short == new - have_new:
        lines += [" "] * short
    return "\n".join(lines) + "\n"


def thread_patches(text: str, origin: str) -> list[Patch]:
    """The patches of a public-inbox thread page saved as text (messages end in
    '^ permalink raw reply'), in thread order, as mails."""
    found: list[Patch] = []
    for chunk in SEPARATOR.split(text):
        lines = chunk.strip("\n").splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("* ")), None)
        if start is None:
            continue
        subject = lines[start][2:].strip()
        for line in lines[start + 1:]:
            if line.startswith(("@ ", "  ")) or not line.strip():
                break
            subject += " " + line.strip()
        header = next((i for i, line in enumerate(lines) if re.match(r"^From: .+ @ \d{4}-", line)), None)
        if header is None or not is_patch_subject(subject):
            continue
        author, date = re.match(r"^From: (.+?) @ (.+?)(?: \(permalink.*)?$", lines[header]).groups()  # type: ignore[union-attr]
        body_start = next((i for i in range(header + 1, len(lines)) if not lines[i].strip()), len(lines))
        body = complete_last_hunk("\n".join(lines[body_start + 1:]).rstrip("\n") + "\n")
        if "\ndiff --git " not in "\n" + body and "\n--- a/" not in "\n" + body:
            continue
        mail = (f"From fuselab Mon Sep 17 00:00:00 2001\nFrom: {author} <unknown@localhost>\n"
                f"Date: {date}\nSubject: {subject}\n\n{body}")
        found.append(Patch(subject, f"{origin}: message {len(found) + 1}", mail))
    return found


def mbox_patches(text: str, origin: str) -> list[Patch]:
    """Mails of an mbox (or one mail / git format-patch file) that carry patches."""
    starts = [m.start() for m in MBOX_FROM.finditer(text)] or [0]
    mails = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    keep = [m for m in mails if is_patch_subject(_subject_of(m))]
    return [Patch(_subject_of(m), f"{origin}: mail {i + 1}", m) for i, m in enumerate(keep)]


def load(path: Path) -> list[Patch]:
    """The series at `path`: a directory (its `series` file, else its patch files by name), a
    public-inbox thread saved as text, an mbox, or a single patch mail."""
    if not path.exists():
        raise ImageError(f"patch series {path} does not exist: give a directory of patches, an mbox "
                         "or a saved mailing-list thread")
    if path.is_dir():
        series = path / "series"
        names = ([n.split()[0] for n in series.read_text().splitlines() if n.strip() and not n.startswith("#")]
                 if series.exists() else sorted(p.name for p in path.iterdir() if p.suffix in PATCH_SUFFIXES))
        patches = [p for name in names for p in load(path / name)]
    else:
        text = path.read_text(errors="replace")
        patches = thread_patches(text, str(path)) if SEPARATOR.search(text) else mbox_patches(text, str(path))
    if not patches:
        raise ImageError(f"patch series {path} holds no patches ([PATCH n/m] mails with a diff)")
    return patches


def digest(paths: list[Path]) -> str:
    """Content hash of the series (what a build's cache key needs)."""
    h = hashlib.sha256()
    for path in paths:
        for patch in load(path):
            h.update(patch.mail.encode())
    return h.hexdigest()


def apply(paths: list[Path], tree: Path, log: Path) -> list[str]:
    """Commit `tree` as it is, then `git am` each patch; return the applied subjects."""
    if not paths:
        return []
    if not (tree / ".git").exists():
        proc.run([*GIT, "init", "-q"], ImageError, log, cwd=tree)
        proc.run([*GIT, "add", "-A", "-f"], ImageError, log, cwd=tree)
        proc.run([*GIT, "commit", "-q", "--no-verify", "-m", "fuselab: tree before the series"],
                 ImageError, log, cwd=tree)
    patches = [p for path in paths for p in load(path)]
    mails = tree.resolve().parent / "series-mails"
    mails.mkdir(exist_ok=True)
    for number, patch in enumerate(patches, 1):
        mail = mails / f"{number:04d}.mail"
        mail.write_text(patch.mail)
        try:
            proc.run([*GIT, "am", "-q", str(mail)], ImageError, log, cwd=tree)
        except ImageError as exc:
            subprocess.run([*GIT, "am", "--abort"], cwd=tree, capture_output=True, check=False)
            raise ImageError(f"patch {number}/{len(patches)} {patch.subject!r} ({patch.origin}) does not apply "
                             f"to {tree.name}:\n{exc}") from None
    return [p.subject for p in patches]
