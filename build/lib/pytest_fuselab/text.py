"""Untrusted text made safe for a terminal, and names made safe for paths.

File names, splat titles, console excerpts and kernel configs come from inputs and guests the lab
does not trust: printed raw, an escape sequence in them could rewrite the terminal (move the
cursor, hide lines, set the window title).  `printable` shows such characters as Python escapes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

# C0 controls but \t and \n, DEL, C1 controls (U+009B is a one-character CSI), bidirectional
# overrides and isolates (they reorder what follows), lone surrogates (undecodable bytes of a
# file name, which a UTF-8 terminal cannot even encode).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}

NAME_CHARS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
NAME_MAX = 64


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode: show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, lines: bool = True) -> str:
    """`text` with control characters shown as escapes; newlines and tabs kept unless not `lines`."""
    return (_UNSAFE if lines else _UNSAFE_LINE).sub(_escape, text)


def name_problem(name: object) -> str | None:
    """Why `name` cannot become a file name under a cache directory, or None if it can."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not name:
        return "must not be empty"
    if len(name) > NAME_MAX:
        return f"is {len(name)} characters long (at most {NAME_MAX})"
    if not NAME_CHARS.fullmatch(name):
        return (f"{name!r} may hold only letters, digits and . _ + - "
                "and must start with a letter, a digit or _")
    return None


def suffixes(paths: Iterable[Path]) -> dict[Path, str]:
    """Each path's shortest suffix of components that no other path ends with (tests/f_a/image.gz and
    tests/f_b/image.gz give f_a/image.gz and f_b/image.gz); keyed by the paths as given."""
    given = list(dict.fromkeys(paths))
    parts = {p: Path(os.path.abspath(p)).parts for p in given}
    names: dict[Path, str] = {}
    for path in given:
        mine = parts[path]
        others = [parts[p] for p in given if parts[p] != mine]
        k = 1
        while k < len(mine) and any(o[-k:] == mine[-k:] for o in others):
            k += 1
        tail = mine[-k:]
        names[path] = tail[0] + "/".join(tail[1:]) if tail[0] == os.sep else "/".join(tail)
    return names
