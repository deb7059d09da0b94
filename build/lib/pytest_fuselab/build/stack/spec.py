"""What a `--fuselab-stack` value names, parsed once into a typed StackSpec (no build, no guest).

A stack is `debian` (the released packages: no spec, None), `debian-source` (`apt-get source fuse3`
and `e2fsprogs`), a TOML file, or inline `libfuse=SRC[@REF],e2fsprogs=SRC[@REF],libfuse-patches=P,
e2fsprogs-patches=P`.  SRC is a directory, a git repository (with @REF: that commit; without: the
work tree as it is) or `debian:PACKAGE`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from pytest_fuselab.text import name_problem, printable

DEFAULT = "debian"  # the released packages: no stack is built
COMPONENTS = {"libfuse": "fuse3", "e2fsprogs": "e2fsprogs"}  # component -> Debian source package
INLINE_KEYS = {"name", "libfuse", "e2fsprogs", "libfuse-patches", "e2fsprogs-patches"}
TOML_KEYS = {"name", *COMPONENTS}
SECTION_KEYS = {"source", "ref", "patches", "options"}
GIT_REF = re.compile(r"[^-\s\x00-\x1f\x7f][^\s\x00-\x1f\x7f]*")  # never an option of git
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
TOML_MAX = 1 << 20  # a stack file is a few lines: more is not one


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
        if ref and not GIT_REF.fullmatch(ref):
            raise ValueError(f"{component} ref {ref!r} is not a git revision (it may not start with '-' "
                             "or hold spaces or control characters)")
    if origin.startswith("debian:"):
        if not DEBIAN_PACKAGE.fullmatch(origin.split(":", 1)[1]):
            raise ValueError(f"{component} source {origin!r}: {origin.split(':', 1)[1]!r} is not a "
                             "Debian source package name")
    else:
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
    name = fields.get("name", "custom")
    problem = name_problem(name)
    if problem:
        raise ValueError(f"stack name= {problem} (it names the stack's cache directory)")
    return StackSpec(name,
                     _source("libfuse", fields.get("libfuse"), fields.get("libfuse-patches", [])),
                     _source("e2fsprogs", fields.get("e2fsprogs"), fields.get("e2fsprogs-patches", [])))


def _strings(path: Path, where: str, value: object) -> list[str]:
    """A TOML value that may be one string or a list of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"stack file {path}: {where} must be a string or a list of strings")
    return [str(item) for item in items]


def _read_toml(path: Path) -> dict[str, object]:
    """The stack file's table; ValueError naming the file when it is not a small TOML text file."""
    if not path.is_file():
        raise ValueError(f"stack file {path} does not exist (or is not a regular file)")
    try:
        with path.open("rb") as f:
            raw = f.read(TOML_MAX + 1)
    except OSError as exc:
        raise ValueError(f"stack file {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > TOML_MAX:
        raise ValueError(f"stack file {path} is larger than {TOML_MAX // 1024} KiB: not a stack file")
    try:
        return tomllib.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise ValueError(f"stack file {path} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"stack file {path} is not valid TOML: {exc}") from None


def _unknown(path: Path, table: dict[str, object], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"stack file {path}: unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(printable(k, lines=False) for k in unknown)} {where} "
                         f"(known: {', '.join(sorted(known))})")


def _toml_source(path: Path, component: str, section: dict[str, object]) -> Source:
    """One component's [section] of a stack file, paths taken relative to the file."""
    _unknown(path, section, SECTION_KEYS, f"in [{component}]")
    for key in ("source", "ref"):
        if section.get(key) is not None and not isinstance(section[key], str):
            raise ValueError(f"stack file {path}: {component}.{key} must be a string")
    src = section.get("source")
    ref = section.get("ref")
    assert src is None or isinstance(src, str)
    if ref and not src:
        raise ValueError(f"stack file {path}: {component}.ref needs {component}.source (a git repository)")
    if src and not src.startswith("debian:"):
        tree, at, tail = src.partition("@")
        src = str((path.parent / tree).resolve()) + (f"@{tail}" if at else "")
    if ref:
        src = f"{src}@{ref}"
    patches = [str(path.parent / p) for p in _strings(path, f"{component}.patches", section.get("patches", []))]
    options = _strings(path, f"{component}.options", section.get("options", []))
    try:
        return _source(component, src, patches, options)
    except ValueError as exc:
        raise ValueError(f"stack file {path}: {exc}") from None


def _from_toml(path: Path) -> StackSpec:
    data = _read_toml(path)
    _unknown(path, data, TOML_KEYS, "at the top")
    parts: dict[str, Source] = {}
    for component in COMPONENTS:
        section = data.get(component, {})
        if not isinstance(section, dict):
            raise ValueError(f"stack file {path}: [{component}] must be a table")
        parts[component] = _toml_source(path, component, section)
    if "name" in data:
        name = data["name"]
        problem = name_problem(name)
        if problem:
            raise ValueError(f"stack file {path}: name {problem} (it names the stack's cache directory)")
    else:  # the file's own name, made safe: a file may be called anything
        name = re.sub(r"[^A-Za-z0-9._+-]", "-", path.stem).lstrip(".-+")[:64] or "stack"
    assert isinstance(name, str)
    return StackSpec(name, parts["libfuse"], parts["e2fsprogs"])
