"""What decides a stack component's build: the content of its source, patches and options."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

from pytest_fuselab.build.stack import buildroot
from pytest_fuselab.build.stack import patchseries
from pytest_fuselab.build.stack.spec import Source
from pytest_fuselab.errors import ImageError

FORMAT = 1  # bump when what a key covers changes

def _git(tree: Path, *args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        raise ImageError(f"git {' '.join(args)} in {tree} failed: {exc.stderr.decode(errors='replace')[-500:]}"
                         ) from exc


def is_git(tree: Path) -> bool:
    return (tree / ".git").exists() or (tree / "HEAD").is_file() and (tree / "objects").is_dir()


def tree_files(tree: Path) -> list[str]:
    """Files of a work tree as a build sees them: tracked and untracked-not-ignored for git."""
    if is_git(tree):
        return sorted(n for n in _git(tree, "ls-files", "-z", "-co", "--exclude-standard").decode().split("\0")
                      if n and (tree / n).exists())
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if not p.is_dir() and ".git" not in p.parts)


def _tree_digest(tree: Path) -> str:
    h = hashlib.sha256()
    if is_git(tree):
        h.update(_git(tree, "rev-parse", "HEAD") + _git(tree, "diff", "HEAD", "--binary"))
        untracked = _git(tree, "ls-files", "-z", "-o", "--exclude-standard").decode().split("\0")
        names = [n for n in untracked if n]
    else:
        names = tree_files(tree)
    for name in sorted(names):
        p = tree / name
        h.update(name.encode() + b"\0" + (os.readlink(p).encode() if p.is_symlink() else p.read_bytes()))
    return h.hexdigest()


def source_key(source: Source, root: buildroot.BuildRoot | None, log: Path) -> str:
    """What decides a component's build: its input's content, patches and options."""
    package = source.debian_package
    if package:
        assert root is not None
        content = f"dsc:{dsc_identity(root, package, log)}"
    elif source.ref:
        content = "git:" + _git(Path(source.origin), "rev-parse", "--verify", f"{source.ref}^{{commit}}").decode().strip()
    else:
        content = "tree:" + _tree_digest(Path(source.origin))
    patches = patchseries.digest([Path(p) for p in source.patches]) if source.patches else ""
    data = json.dumps([FORMAT, source.component, content, patches, list(source.options)])
    return hashlib.sha256(data.encode()).hexdigest()


def dsc_identity(root: buildroot.BuildRoot, package: str, log: Path) -> str:
    """The .dsc's name and checksum as the archive lists them (apt-get source --print-uris)."""
    out = root.apt(["source", "--print-uris", package], log)
    match = re.search(r"^'[^']+' (\S+\.dsc) \d+ (\S+)$", out, re.M)
    if not match:
        raise ImageError(f"apt-get source --print-uris {package} listed no .dsc (is deb-src for the build root's "
                         f"suite on the host's mirror?); it said:\n{out[-1000:]}")
    return f"{match.group(1)} {match.group(2)}"


