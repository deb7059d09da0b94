"""What the FUSE stack installed in a guest can do, probed in a real guest and cached per image.

The API scenarios use (stable):

    caps = capabilities.of(fuselab_guest)            # or of(fuselab_lab): probed once per snapshot
    caps.has("fuservicemount3")                      # bool
    caps.missing("fuse4fs-service")                  # None, or why not ("... is not installed")
    capabilities.require(fuselab_lab, "mount-service", "libfuse>=3.19")   # pytest.skip naming what is missing

Feature names are listed in FEATURES; `libfuse>=X.Y[.Z]` compares the installed library's version.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from collections.abc import Callable

from pytest_fuselab.build.stack.spec import label
from pytest_fuselab.cache import cache_dir
from pytest_fuselab.errors import FuselabError
from pytest_fuselab.guest.probes import capabilities as guest_probe
from pytest_fuselab.guest.probes.capabilities import Program, SocketUnit
from pytest_fuselab.settings import Settings
from pytest_fuselab.vm.channel import Result

if TYPE_CHECKING:
    from pytest_fuselab.lab import Lab

FORMAT = 1

FEATURES: dict[str, str] = {
    "libfuse": "a libfuse 3 shared library",
    "fusermount3": "fusermount3, setuid root",
    "fuservicemount3": "fuservicemount3, libfuse's mount service helper",
    "fuservicemount3-setuid": "fuservicemount3, setuid root (mounts as an unprivileged user)",
    "fuse2fs": "fuse2fs",
    "fuse4fs": "fuse4fs",
    "fuse4fs-service": "fuse4fs.socket and fuse4fs@.service (fuse4fs as a socket-activated service)",
    "mount-service": "the mount service: fuservicemount3 plus a socket unit listening in the socket directory",
    "so_passrights": "the kernel's SO_PASSRIGHTS socket option",
    "fsopen-fuse-subtype": "fsopen(\"fuse\") with a `subtype` fsconfig parameter",
}

# Runs in the guest, as root, and prints one JSON object (what it finds is documented there).
PROBE_ARGV = ["python3", "-S", "-m", guest_probe.__name__]


class Runner(Protocol):
    """What the probe needs of a guest: running a command as root."""

    def run(self, cmd: str | list[str], timeout: float = ..., check: bool = ...,
            input: bytes | str = ..., env: dict[str, str] | None = ...) -> Result: ...


def _version(text: str | None) -> tuple[int, ...]:
    """(3, 19, 0) from '3.19.0-rc0'; () when unknown."""
    return tuple(int(n) for n in re.findall(r"\d+", (text or "").split("-")[0])[:3])


@dataclass(frozen=True)
class Capabilities:
    """The probe's findings about one guest image (see guest/probes/capabilities.py for how each is found)."""

    kernel: str = ""
    libfuse_version: str | None = None
    libfuse_libraries: list[str] = field(default_factory=list)
    programs: dict[str, Program] = field(default_factory=dict)
    fuse3_pc: dict[str, str] = field(default_factory=dict)
    socket_units: dict[str, SocketUnit] = field(default_factory=dict)
    fuse_conf: dict[str, str | bool] = field(default_factory=dict)
    so_passrights: str = "unknown"
    fsopen_fuse: str = "unknown"
    fsopen_fuse_subtype: str = "unknown"
    filesystems: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Capabilities:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def socket_dirs(self) -> list[str]:
        """Directories the socket units listen in (e.g. /run/filesystems)."""
        dirs = {str(Path(p).parent) for unit in self.socket_units.values() for p in unit.get("listen", [])}
        return sorted(dirs)

    @property
    def socket_dir(self) -> str | None:
        """The mount service's socket directory: fuse3.pc's, else the socket units'."""
        return self.fuse3_pc.get("service_socket_dir") or (self.socket_dirs[0] if self.socket_dirs else None)

    def program(self, name: str) -> Program | None:
        return self.programs.get(name)

    def missing(self, feature: str) -> str | None:
        """None when the stack has `feature`, else a sentence saying what is missing."""
        match = re.fullmatch(r"libfuse\s*>=\s*([\d.]+)", feature)
        if match:
            want = _version(match.group(1))
            have = _version(self.libfuse_version)
            if have and have >= want:
                return None
            return f"libfuse >= {match.group(1)} is not installed (the guest has {self.libfuse_version or 'none'})"
        check: Check | None = _CHECKS.get(feature)
        if check is None:
            raise FuselabError(f"unknown capability {feature!r}: known are {', '.join(FEATURES)} "
                               "and libfuse>=X.Y")
        return check(self)

    def has(self, feature: str) -> bool:
        return self.missing(feature) is None

    def summary(self) -> list[str]:
        """Short lines for the pytest header and `fuselab doctor`."""
        progs = []
        for name in ("fusermount3", "fuservicemount3", "mount.fuse3", "fuse2fs", "fuse4fs"):
            info = self.programs.get(name)
            progs.append(f"{name} " + ("absent" if info is None else "setuid" if info["setuid_root"] else "present"))
        units = ", ".join(f"{n} ({u.get('enabled') or '?'}, mode {u.get('mode') or '?'})"
                          for n, u in sorted(self.socket_units.items()))
        conf = ", ".join(f"{k}={v}" for k, v in sorted(self.fuse_conf.items())) or "defaults"
        service = "present" if self.has("mount-service") else f"ABSENT ({self.missing('mount-service')})"
        return [f"libfuse {self.libfuse_version or 'absent'}; " + ", ".join(progs),
                f"mount service {service}; socket dir {self.socket_dir or '-'}; socket units {units or 'none'}",
                f"kernel {self.kernel}: SO_PASSRIGHTS {self.so_passrights}, "
                f"fsopen subtype {self.fsopen_fuse_subtype}; fuse.conf {conf}"]


Check = Callable[["Capabilities"], "str | None"]


def _program(name: str, setuid: bool = False) -> Check:
    def check(caps: Capabilities) -> str | None:
        info = caps.programs.get(name)
        if info is None:
            return f"{name} is not installed" + (
                f" (libfuse {caps.libfuse_version} has no mount service; build a stack with one: --fuselab-stack)"
                if name == "fuservicemount3" else "")
        if setuid and not info.get("setuid_root"):
            return f"{info['path']} is not setuid root (mode {info.get('mode')})"
        return None
    return check


def _fuse4fs_service(caps: Capabilities) -> str | None:
    unit = caps.socket_units.get("fuse4fs.socket")
    if unit is None:
        return "fuse4fs.socket is not installed" + ("" if "fuse4fs" in caps.programs else " (nor fuse4fs)")
    if not unit.get("service"):
        return "fuse4fs.socket is installed but fuse4fs@.service is not"
    return None


def _mount_service(caps: Capabilities) -> str | None:
    helper = _program("fuservicemount3")(caps)
    if helper:
        return str(helper)
    if not caps.socket_units:
        return "no socket unit listens for the mount service (ListenSequentialPacket=)"
    return None


def _kernel(attribute: str, what: str) -> Check:
    def check(caps: Capabilities) -> str | None:
        value = str(getattr(caps, attribute))
        return None if value == "yes" else f"kernel {caps.kernel} lacks {what} ({value})"
    return check


_CHECKS: dict[str, Check] = {
    "libfuse": lambda caps: None if caps.libfuse_version else "no libfuse3 library is installed",
    "fusermount3": _program("fusermount3", setuid=True),
    "fuservicemount3": _program("fuservicemount3"),
    "fuservicemount3-setuid": _program("fuservicemount3", setuid=True),
    "fuse2fs": _program("fuse2fs"),
    "fuse4fs": _program("fuse4fs"),
    "fuse4fs-service": _fuse4fs_service,
    "mount-service": _mount_service,
    "so_passrights": _kernel("so_passrights", "SO_PASSRIGHTS"),
    "fsopen-fuse-subtype": _kernel("fsopen_fuse_subtype", "fsconfig subtype for fsopen(\"fuse\")"),
}


def probe(guest: Runner) -> Capabilities:
    """Run the probe in `guest` (as root) and parse what it found."""
    result = guest.run(PROBE_ARGV, timeout=60, check=False)
    if result.exit_status != 0:
        raise FuselabError(f"the capability probe failed in the guest (status {result.exit_status}):\n"
                           f"{result.stderr[-2000:]}")
    return Capabilities.from_json(json.loads(result.stdout))


_PER_GUEST: weakref.WeakKeyDictionary[Runner, Capabilities] = weakref.WeakKeyDictionary()


def records_dir() -> Path:
    return cache_dir() / "capabilities"


def for_lab(lab: Lab) -> Capabilities:
    """Capabilities of the lab's image, probed once per snapshot and kept next to the cache.

    The snapshot's key covers the initramfs layer and so the probe module's content."""
    snap = lab.snapshot
    per_run = f"{lab.settings.socket_mode}|{lab.settings.fuse_conf or ''}"
    suffix = "" if per_run == "|" else "-" + hashlib.sha256(per_run.encode()).hexdigest()[:8]
    record = records_dir() / f"{snap.directory.name}{suffix}.json"
    try:
        data = json.loads(record.read_text())
        if data.get("format") == FORMAT:
            return Capabilities.from_json(data["capabilities"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    guest = lab.guest(lab.rundir("capabilities-probe"))
    try:
        caps = probe(guest)
    finally:
        guest.shutdown()
    settings = lab.settings
    save_record(record, caps, {"image": lab.image.directory.name, "recipe": settings.image,
                               "stack": label(settings.stack)})
    return caps


def save_record(record: Path, caps: Capabilities, about: dict[str, str]) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **about, "probed": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "capabilities": caps.to_json()}, indent=1, sort_keys=True))
    tmp.rename(record)


def latest_record(recipe: str, stack: str) -> dict[str, Any] | None:
    """The newest cached probe of an image of `recipe` with `stack` (cheap: no guest, no build)."""
    best: tuple[float, dict[str, Any]] | None = None
    for path in records_dir().glob("*.json") if records_dir().exists() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("format") == FORMAT and data.get("recipe") == recipe and data.get("stack") == stack:
            mtime = path.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, data)
    return best[1] if best else None


def of(where: Lab | Runner) -> Capabilities:
    """Capabilities of a Lab (cached per snapshot) or of one running guest (probed once per guest)."""
    from pytest_fuselab.lab import Lab

    if isinstance(where, Lab):
        return for_lab(where)
    caps = _PER_GUEST.get(where)
    if caps is None:
        caps = _PER_GUEST[where] = probe(where)
    return caps


def require(where: Lab | Runner, *features: str) -> Capabilities:
    """Skip the calling test, naming what is missing, unless the stack has every feature."""
    caps = of(where)
    reasons = [r for r in (caps.missing(f) for f in features) if r]
    if reasons:
        import pytest

        pytest.skip("stack lacks what this test needs: " + "; ".join(reasons))
    return caps


def header_lines(settings: Settings) -> list[str]:
    """For the pytest header: the newest cached probe of this recipe and stack (no guest started)."""
    stack = label(settings.stack)
    record = latest_record(settings.image, stack)
    if record is None:
        return [f"fuselab: stack {stack}: capabilities not probed yet (probed once per image on first use; "
                "`fuselab doctor` shows them)"]
    caps = Capabilities.from_json(record["capabilities"])
    return [f"fuselab: stack {stack} (image {record.get('image')}, probed {record.get('probed')}):"] + [
        f"fuselab:   {line}" for line in caps.summary()]


def doctor_rows(settings: Settings) -> list[tuple[str, str]]:
    """For `fuselab doctor`: the stack's capabilities, probed in a guest (cached per image)."""
    from pytest_fuselab.lab import Lab, stderr_progress
    from pytest_fuselab.workdirs import work_dir

    stack = label(settings.stack)
    try:
        with work_dir("fuselab-doctor-") as tmp:  # a full or unwritable TMPDIR is a HostError
            lab = Lab(settings, Path(tmp), stderr_progress)
            caps = for_lab(lab)
            where = lab.image.directory.name
    except FuselabError as exc:
        return [("stack", f"{stack}: not probed ({exc})")]
    return [("stack", f"{stack} on image {where}")] + [("", line) for line in caps.summary()]
