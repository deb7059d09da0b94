"""What a `--fuselab-stack` value names, parsed once into a typed StackSpec (no build, no guest).

A stack is `debian` (the released packages: no spec, None), `debian-source` (`apt-get source fuse3`
and `e2fsprogs`), a TOML file, or inline `libfuse=SRC[@REF],e2fsprogs=SRC[@REF],libfuse-patches=P,
e2fsprogs-patches=P`.  SRC is a directory, a git repository (with @REF: that commit; without: the
work tree as it is) or `debian:PACKAGE`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT = "debian"  # the released packages: no stack is built
COMPONENTS = {"libfuse": "fuse3", "e2fsprogs": "e2fsprogs"}  # component -> Debian source package
INLINE_KEYS = {"name", "libfuse", "e2fsprogs", "libfuse-patches", "e2fsprogs-patches"}


@dataclass(frozen=True)
class Source:
    """One component's input and how to build it."""

    component: str
    origin: str  # a directory, a git repository, or debian:PACKAGE
    ref: str = ""
    patches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def debian_package(self) -> str | None:
        """The Debian source package this component comes from, if any."""
        return self.origin.split(":", 1)[1] if self.origin.startswith("debian:") else None

    def describe(self) -> str:
        """Origin, ref and patch files, for progress lines and the layer's manifest."""
        text = self.origin + (f"@{self.ref}" if self.ref else "")
        return text + "".join(f" + {Path(p).name}" for p in self.patches)


@dataclass(frozen=True)
class StackSpec:
    """A stack built from source: its name, its two components, and the setting that named it."""

    name: str
    libfuse: Source
    e2fsprogs: Source
    setting: str = field(default="", compare=False)  # the --fuselab-stack text, to pass on or show

    @property
    def sources(self) -> tuple[Source, Source]:
        """Both components, in build order."""
        return (self.libfuse, self.e2fsprogs)


def label(spec: StackSpec | None) -> str:
    """How a stack is named in headers, records and command lines (`debian` for None)."""
    if spec is None:
        return DEFAULT
    return spec.setting or spec.name


def _source(component: str, value: str | None, patches: list[str] | str | None = None,
            options: list[str] | None = None) -> Source:
    value = value or f"debian:{COMPONENTS[component]}"
    origin, ref = (value, "")
    if not value.startswith("debian:") and "@" in value:
        origin, ref = value.rsplit("@", 1)
    if not origin.startswith("debian:"):
        path = Path(origin).expanduser()
        if not path.is_dir():
            raise ValueError(f"{component} source {origin} is not a directory (give a source tree, "
                             "a git repository, or debian:PACKAGE)")
        origin = str(path.resolve())
    plist = [patches] if isinstance(patches, str) else list(patches or [])
    for p in plist:
        if not Path(p).expanduser().exists():
            raise ValueError(f"{component} patch series {p} does not exist")
    return Source(component, origin, ref, tuple(str(Path(p).expanduser().resolve()) for p in plist),
                  tuple(options or []))


def parse(value: str) -> StackSpec | None:
    """The stack named by a setting value; None for the released Debian packages."""
    value = value.strip()
    if value in ("", DEFAULT):
        return None
    if value == "debian-source":
        spec = StackSpec("debian-source", _source("libfuse", None), _source("e2fsprogs", None))
    elif value.endswith(".toml"):
        spec = _from_toml(Path(value).expanduser())
    else:
        spec = _inline(value)
    return replace(spec, setting=value)


def _inline(value: str) -> StackSpec:
    fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    unknown = set(fields) - INLINE_KEYS
    if unknown or not fields:
        raise ValueError("a stack is debian, debian-source, a .toml file, or "
                         "libfuse=SRC[@REF],e2fsprogs=SRC[@REF],libfuse-patches=P,e2fsprogs-patches=P"
                         + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
    return StackSpec(fields.get("name", "custom"),
                     _source("libfuse", fields.get("libfuse"), fields.get("libfuse-patches", [])),
                     _source("e2fsprogs", fields.get("e2fsprogs"), fields.get("e2fsprogs-patches", [])))


def _strings(path: Path, where: str, value: object) -> list[str]:
    """A TOML value that may be one string or a list of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"stack file {path}: {where} must be a string or a list of strings")
    return [str(item) for item in items]


def _from_toml(path: Path) -> StackSpec:
    if not path.is_file():
        raise ValueError(f"stack file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"stack file {path} is not valid TOML: {exc}") from None
    base = path.parent
    parts: dict[str, Source] = {}
    for component in COMPONENTS:
        section = data.get(component, {})
        if not isinstance(section, dict):
            raise ValueError(f"stack file {path}: [{component}] must be a table")
        src = section.get("source")
        if src is not None and not isinstance(src, str):
            raise ValueError(f"stack file {path}: {component}.source must be a string")
        if src and not src.startswith("debian:"):
            tree, at, ref = src.partition("@")
            src = str((base / tree).resolve()) + (f"@{ref}" if at else "")
        if section.get("ref"):
            src = f"{src}@{section['ref']}"
        patches = [str(base / p) for p in _strings(path, f"{component}.patches", section.get("patches", []))]
        options = _strings(path, f"{component}.options", section.get("options", []))
        parts[component] = _source(component, src, patches, options)
    name = data.get("name", path.stem)
    return StackSpec(str(name), parts["libfuse"], parts["e2fsprogs"])
