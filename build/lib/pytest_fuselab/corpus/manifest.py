"""manifest.jsonl: one JSON line per image saying how it was made, enough to make it again."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pytest_fuselab.errors import ImageError, SettingError
from .profiles import Profile, profile_named

MANIFEST = "manifest.jsonl"
Entry = dict[str, Any]


def write_manifest(directory: Path, entries: list[Entry]) -> Path:
    """Write `entries` to `directory`/manifest.jsonl at once (one sorted-key JSON object a line)."""
    path = Path(directory) / MANIFEST
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in entries))
    os.replace(partial, path)
    return path


def read_manifest(directory: Path) -> list[Entry]:
    """The entries of `directory`/manifest.jsonl, in image order."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise SettingError(f"{path} does not exist: generate the corpus first (`fuselab corpus generate`)")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ImageError(f"{path}:{number} is not JSON ({exc.msg}): regenerate the corpus with the same "
                             "seed") from exc
    return entries


def entry_parts(entry: Entry) -> tuple[Profile, int, str, list[Entry]]:
    """The profile, seed, file name and mutations of a manifest entry; SettingError when it is malformed."""
    try:
        profile, seed, name = profile_named(entry["profile"]), entry["seed"], entry["file"]
        mutations = entry["mutations"]
    except (KeyError, TypeError) as exc:
        raise SettingError(f"not a corpus manifest entry (missing {exc}): pass one line of {MANIFEST} as a "
                           "dict") from exc
    if not isinstance(seed, int) or not isinstance(name, str) or "/" in name or name.startswith("."):
        raise SettingError(f"malformed manifest entry for {name!r}: 'seed' must be an int and 'file' a plain file name")
    return profile, seed, name, mutations
