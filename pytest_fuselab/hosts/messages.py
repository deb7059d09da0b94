"""Every message of `fuselab repro --hosts` over an execnet channel (controller and host alike; stdlib only).

The controller opens pytest_fuselab.hosts.remote_judge on a host and sends `hello(settings, warm)`; the host
answers `ready(drivers)` or `failure(why)`.  Then, one at a time, `image(...)` (the image's bytes, as extents)
to which the host answers any number of `watch(image, what)` and one `verdicts([...])`; `None` ends the
session.  Messages are dicts of execnet's plain types; `check_*` refuse a wrong key, type or size and name
the field, so neither side trusts the sizes the other sends.
"""

from __future__ import annotations

import math

MAX_IMAGE = 1 << 40  # an image's size (1 TiB, as `repro --size-limit` allows)
MAX_EXTENTS = 1 << 20
MAX_NAME = 4096  # an image's name, a driver's, a step's
MAX_TEXT = 1 << 20  # evidence, a refusal, a failure's words
MAX_DRIVERS = 64
MAX_STEPS = 64
MAX_SECONDS = 7 * 86400.0
VERDICT_TEXTS = ("image", "driver", "verdict", "server", "guest", "evidence", "reached", "refusal", "hung")
STEP_KEYS = {"name": str, "status": int, "said": str, "seconds": float, "errno": str}


class MessageError(ValueError):
    """A message of the hosts' channel is not what the protocol says; the text names the field."""


def _text(value: object, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise MessageError(f"{where}: wanted a string of at most {limit} characters, got {type(value).__name__}")
    return value


def _integer(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(f"{where}: wanted a whole number from {low} to {high}, got {value!r:.80}")
    return value


def _number(value: object, where: str, low: float = 0.0, high: float = MAX_SECONDS) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise MessageError(f"{where}: wanted a number from {low:g} to {high:g}, got {value!r:.80}")
    return float(value)


def _texts(value: object, where: str, count: int, limit: int = MAX_NAME) -> list[str]:
    if not isinstance(value, (list, tuple)) or len(value) > count:
        raise MessageError(f"{where}: wanted a list of at most {count} strings")
    return [_text(v, f"{where}[{i}]", limit) for i, v in enumerate(value)]


def body(message: object, name: str) -> dict[str, object]:
    """The body of a message that must be a `name` message, or MessageError."""
    found = kind(message)
    if found != name:
        raise MessageError(f"wanted a {name!r} message, got a {found!r} message")
    inner = message[name]  # type: ignore[index]
    return dict(inner)


def hello(settings: dict[str, str], warm: bool) -> dict[str, object]:
    """Controller to host: the lab settings chosen on the controller (name -> text), and whether to build the
    guest's snapshot before answering (a benchmark times judging only)."""
    return {"hello": {"settings": dict(settings), "warm": warm}}


def check_hello(message: object) -> tuple[dict[str, str], bool]:
    got = body(message, "hello")
    raw = got.get("settings")
    if not isinstance(raw, dict) or len(raw) > 64:
        raise MessageError("hello.settings: wanted an object of at most 64 settings")
    settings = {_text(k, "hello.settings", 64): _text(v, f"hello.settings.{k}", MAX_TEXT) for k, v in raw.items()}
    warm = got.get("warm")
    if not isinstance(warm, bool):
        raise MessageError("hello.warm: wanted a boolean")
    return settings, warm


def ready(drivers: list[str]) -> dict[str, object]:
    """Host to controller: the lab is up there, and these drivers its stack can run."""
    return {"ready": {"drivers": list(drivers)}}


def check_ready(message: object) -> list[str]:
    """The drivers of a `ready` message."""
    return _texts(body(message, "ready").get("drivers"), "ready.drivers", MAX_DRIVERS, 64)


def failure(why: str) -> dict[str, object]:
    """Host to controller: the lab could not start there (the host is skipped)."""
    return {"failure": {"why": why[-MAX_TEXT:]}}


def image(name: str, fstype: str, mount_options: str, mount_flags: int, notes: list[str], size: int,
          extents: list[tuple[int, bytes]], drivers: list[str]) -> dict[str, object]:
    """Controller to host: one image to judge with `drivers`, its bytes as (offset, data) extents."""
    return {"image": {"name": name, "fstype": fstype, "mount_options": mount_options, "mount_flags": mount_flags,
                      "notes": list(notes), "size": size, "extents": [[at, data] for at, data in extents],
                      "drivers": list(drivers)}}


def check_image(got: dict[str, object]) -> dict[str, object]:
    """An `image` message's body, checked: extents sorted, apart and within the image's size."""
    size = _integer(got.get("size"), "image.size", 0, MAX_IMAGE)
    raw = got.get("extents")
    if not isinstance(raw, list) or len(raw) > MAX_EXTENTS:
        raise MessageError(f"image.extents: wanted a list of at most {MAX_EXTENTS} extents")
    extents, end = [], 0
    for i, pair in enumerate(raw):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[1], bytes):
            raise MessageError(f"image.extents[{i}]: wanted [offset, bytes]")
        at = _integer(pair[0], f"image.extents[{i}]", end, size)
        if at + len(pair[1]) > size:
            raise MessageError(f"image.extents[{i}]: ends past the image's size {size}")
        extents.append((at, pair[1]))
        end = at + len(pair[1])
    return {"name": _text(got.get("name"), "image.name", MAX_NAME), "fstype": _text(got.get("fstype"), "image.fstype", 64),
            "mount_options": _text(got.get("mount_options"), "image.mount_options"),
            "mount_flags": _integer(got.get("mount_flags"), "image.mount_flags", 0, (1 << 64) - 1),
            "notes": _texts(got.get("notes"), "image.notes", 256, MAX_TEXT), "size": size, "extents": extents,
            "drivers": _texts(got.get("drivers"), "image.drivers", MAX_DRIVERS, 64)}


def watch(name: str, what: str) -> dict[str, object]:
    """Host to controller: what is being done to an image (for the progress line)."""
    return {"watch": {"image": name, "what": what}}


def verdicts(found: list[dict[str, object]]) -> dict[str, object]:
    """Host to controller: an image's verdicts (Verdict.to_json each)."""
    return {"verdicts": {"list": list(found)}}


def kind(message: object) -> str:
    """Which message this is ("ready", "failure", "watch", "verdicts", "image", "hello"), or MessageError."""
    if isinstance(message, dict) and len(message) == 1:
        name = next(iter(message))
        if name in ("hello", "ready", "failure", "image", "watch", "verdicts") and isinstance(message[name], dict):
            return str(name)
    raise MessageError(f"not a message of the hosts' channel: {str(message)[:120]!r}")


def check_step(data: object, where: str) -> dict[str, object]:
    """One step of a verdict (Step's fields), checked."""
    if not isinstance(data, dict) or not set(data) <= set(STEP_KEYS) or not {"name", "status"} <= set(data):
        raise MessageError(f"{where}: wanted a step with keys among {', '.join(STEP_KEYS)}")
    return {"name": _text(data["name"], f"{where}.name", 64), "status": _integer(data["status"], f"{where}.status", -255, 255),
            "said": _text(data.get("said", ""), f"{where}.said"),
            "seconds": _number(data.get("seconds", 0.0), f"{where}.seconds"),
            "errno": _text(data.get("errno", ""), f"{where}.errno", 64)}


def check_verdict(data: object, where: str = "verdict") -> dict[str, object]:
    """A verdict's fields (Verdict.to_json), each checked; the caller makes the Verdict."""
    known = {*VERDICT_TEXTS, "steps", "splats", "stuck_mount", "seconds", "entries", "walk_errors"}
    if not isinstance(data, dict) or not set(data) <= known or not {"image", "driver", "verdict"} <= set(data):
        raise MessageError(f"{where}: wanted a verdict with keys among {', '.join(sorted(known))}")
    out: dict[str, object] = {k: _text(data[k], f"{where}.{k}") for k in VERDICT_TEXTS if k in data}
    steps = data.get("steps", [])
    if not isinstance(steps, list) or len(steps) > MAX_STEPS:
        raise MessageError(f"{where}.steps: wanted a list of at most {MAX_STEPS} steps")
    out["steps"] = [check_step(s, f"{where}.steps[{i}]") for i, s in enumerate(steps)]
    out["splats"] = _texts(data.get("splats", []), f"{where}.splats", 256, MAX_TEXT)
    if not isinstance(data.get("stuck_mount", False), bool):
        raise MessageError(f"{where}.stuck_mount: wanted a boolean")
    out["stuck_mount"] = data.get("stuck_mount", False)
    out["seconds"] = _number(data.get("seconds", 0.0), f"{where}.seconds")
    for key in ("entries", "walk_errors"):
        out[key] = _integer(data.get(key, 0), f"{where}.{key}", 0, 1 << 31)
    return out
