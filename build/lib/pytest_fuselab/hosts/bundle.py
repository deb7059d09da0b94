"""The controller's exact project as wheels: its own (built from the source it runs) and its dependencies' pins."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest_fuselab
from pytest_fuselab.cache import Progress, build_once, cache_dir
from pytest_fuselab.errors import HostError

SOURCES = ("pyproject.toml", "README.md", "pytest_fuselab")


@dataclass(frozen=True)
class Bundle:
    """A directory of wheels: the project's and every dependency pinned as the controller has it."""

    directory: Path
    key: str

    @property
    def project_wheel(self) -> Path:
        return next(self.directory.glob("pytest_fuselab-*.whl"))

    def wheels(self) -> list[Path]:
        return sorted(self.directory.glob("*.whl"))


def project_root() -> Path:
    """The source tree this controller runs the project from."""
    root = Path(pytest_fuselab.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise HostError(f"pytest-fuselab runs from {root}, not from a source tree (no pyproject.toml there): "
                        "install it in editable mode (pip install -e) to send it to hosts")
    return root


def source_key(root: Path) -> str:
    """The digest of every file a wheel of the project is built from."""
    digest = hashlib.sha256()
    for name in SOURCES:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts and p.suffix != ".pyc")
        for file in files:
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def _pip(args: list[str], log: Path, what: str) -> None:
    with open(log, "a") as out:
        done = subprocess.run([sys.executable, "-m", "pip", *args], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise HostError(f"{what} failed (pip exit status {done.returncode}); log: {log}")


def _fill(root: Path, work: Path) -> None:
    log = work / "bundle.log"
    with tempfile.TemporaryDirectory(prefix="fuselab-src-") as tmp:  # builds leave build/ dirs: not in the tree
        for name in SOURCES:
            source = root / name
            if source.is_dir():
                shutil.copytree(source, Path(tmp) / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif source.is_file():
                shutil.copy2(source, Path(tmp) / name)
        _pip(["wheel", "-q", "--no-deps", "-w", str(work), tmp], log, "building the project's wheel")
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    constraints = work / "constraints.txt"
    constraints.write_text(frozen)
    wheel = next(work.glob("pytest_fuselab-*.whl"))
    _pip(["download", "-q", "--only-binary=:all:", "-d", str(work), "-c", str(constraints), str(wheel)], log,
         "downloading the dependencies' wheels (pinned as installed here)")


def ensure(progress: Progress) -> Bundle:
    """The bundle of the project as it is now, made once per source digest."""
    root = project_root()
    key = source_key(root)
    final = cache_dir() / "hosts" / f"bundle-{key[:16]}"

    def problem(path: Path) -> str | None:
        return None if any(path.glob("pytest_fuselab-*.whl")) and (path / "constraints.txt").is_file() else "missing"

    if problem(final) is not None:
        progress(f"making the project's wheels from {root} (pip wheel, pip download)")
    build_once(final, lambda work: _fill(root, work), problem=problem, what="the hosts' bundle", progress=progress)
    return Bundle(final, key)
