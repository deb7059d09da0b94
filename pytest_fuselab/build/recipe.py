"""Guest image recipes: TOML files in recipes/ that say what a guest is made of."""

from __future__ import annotations

import hashlib
import json
import tomllib
from importlib import resources
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pytest_fuselab.errors import ImageError
from pytest_fuselab.text import name_problem

IMAGES_DIR = Path(__file__).resolve().parent.parent / "recipes"  # package data: an installed wheel has them


def guest_files() -> dict[str, Path]:
    """The lab's guest programs and their settings, by path in the guest's initramfs layer.

    `lib/` becomes /usr/local/lib/fuselab (the package `pytest_fuselab.guest`, run with
    `python3 -m`), `rules/` /etc/udev/rules.d, `journald.conf` a journald drop-in (see initramfs.py)."""
    root = Path(str(resources.files("pytest_fuselab.guest")))
    files = {"lib/pytest_fuselab/__init__.py": root / "__init__.py"}  # the guest's package is only `guest`
    for path in sorted(root.rglob("*.py")):
        files[f"lib/pytest_fuselab/guest/{path.relative_to(root)}"] = path
    files["rules/59-fuselab-disks.rules"] = root / "udev_early.rules"
    files["rules/99-zz-fuselab-disks.rules"] = root / "udev_late.rules"
    files["journald.conf"] = root / "journald.conf"
    return files


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    suite: str
    packages: list[str]
    kernel_package: str
    initramfs_modules: list[str]
    description: str = ""
    variant: str = "minbase"
    size_mb: int = 2048
    prune_modules: list[str] = field(default_factory=list)
    users: list[dict[str, object]] = field(default_factory=list)
    default_target: str = "multi-user.target"
    enable: list[str] = field(default_factory=list)
    setuid: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def file_sources(self) -> dict[str, Path]:
        """Guest path -> host file."""
        return {guest: (self.path.parent / host) for guest, host in self.files.items()}

    def digest(self) -> str:
        """Hash of everything that goes into the image: the recipe and every file it installs."""
        h = hashlib.sha256()
        data = asdict(self)
        data.pop("path")
        h.update(json.dumps(data, sort_keys=True).encode())
        for guest, host in sorted(self.file_sources().items()):
            h.update(guest.encode())
            h.update(host.read_bytes())
        return h.hexdigest()


def available(directory: Path = IMAGES_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def load(name_or_path: str, directory: Path = IMAGES_DIR) -> Recipe:
    """Load a recipe by name (recipes/NAME.toml) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = directory / f"{name_or_path}.toml"
    if not path.is_file():
        raise ImageError(f"image recipe {name_or_path!r} not found (looked for {path}); "
                         f"available: {', '.join(available(directory)) or 'none'}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ImageError(f"image recipe {path} is not valid TOML: {exc}") from exc
    try:
        recipe = Recipe(path=path.resolve(), **data)
    except TypeError as exc:
        raise ImageError(f"image recipe {path}: {exc}") from exc
    problem = name_problem(recipe.name)
    if problem:
        raise ImageError(f"image recipe {path}: name {problem} (it names the image's cache directory)")
    for guest, host in recipe.file_sources().items():
        if not host.exists():
            raise ImageError(f"image recipe {path}: file for {guest} not found at {host}")
    return recipe
