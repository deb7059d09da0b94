"""Which versions the Debian archive offers for a recipe's packages (part of an image's key).

The archive's Packages index is fetched from the host's mirror at most every few hours and
cached; offline, the last fetched versions are used, or none at all.
"""

from __future__ import annotations

import json
import lzma
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from pytest_fuselab.cache import cache_dir

MAX_AGE = 6 * 3600
Progress = Callable[[str], None]


def parse_packages(text: str, wanted: Iterable[str]) -> dict[str, str]:
    """Versions of `wanted` in a Debian Packages index (one suite lists each package once)."""
    names = set(wanted)
    found: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        package = version = None
        for line in stanza.splitlines():
            if line.startswith("Package: "):
                package = line[9:].strip()
            elif line.startswith("Version: "):
                version = line[9:].strip()
        if package in names and version:
            found[package] = version
    return found


def fetch_index(mirror: str, suite: str, timeout: float = 30) -> str:
    url = f"{mirror.rstrip('/')}/dists/{suite}/main/binary-amd64/Packages.xz"
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (the host's own mirror)
        return lzma.decompress(response.read()).decode(errors="replace")


def archive_versions(mirror: str, suite: str, packages: list[str], progress: Progress,
                     refresh: bool = False) -> dict[str, str]:
    """{package: version} as the archive offers them now; {} when it cannot be reached."""
    record = cache_dir() / f"archive-{suite}.json"
    fetched, old = 0.0, {}
    try:
        data = json.loads(record.read_text())
        fetched, old = float(data["fetched"]), dict(data["versions"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if time.time() - fetched < MAX_AGE and not refresh and set(packages) <= set(old):
        return {p: old[p] for p in packages}
    try:
        index = fetch_index(mirror, suite)
    except (OSError, urllib.error.URLError, lzma.LZMAError) as exc:
        progress(f"cannot read {suite}'s package index from {mirror} ({exc}); "
                 + ("using the versions seen last time" if old else "images are keyed by recipe only"))
        return {p: old[p] for p in packages if p in old}
    versions = parse_packages(index, packages)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"fetched": time.time(), "mirror": mirror, "versions": versions}, indent=1))
    return versions


def describe_changes(old: dict[str, str], new: dict[str, str]) -> str:
    changed = [f"{p} {old.get(p, '-')} → {v}" for p, v in sorted(new.items()) if old.get(p) != v]
    return ", ".join(changed) or "no package changes"


def kept_for(path: Path) -> dict[str, str]:
    """The archive versions an existing image was keyed with."""
    try:
        data = json.loads(path.read_text())
        keyed = data.get("archive_versions", {})
        return keyed if isinstance(keyed, dict) else {}
    except (OSError, ValueError):
        return {}
