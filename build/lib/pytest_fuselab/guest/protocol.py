"""Every message that crosses the guest boundary for the containment verdict (both sides, stdlib only).

The host sends the guest's judge a JudgeSpec (a DriverSpec per driver); the judge answers with a
JudgeAnswer: a DriverRecord per driver, each with its StepRecords.  A FUSE server's keeper
leaves a ServerFate in a file, and the agent's "tasks" request reports HealthFacts.
`to_json()` gives what goes on the wire; `from_json()` checks every field (its type, that it is
known, its size) and raises ProtocolError naming the first field that is wrong: the host never
trusts the keys or sizes a guest sends.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from pytest_fuselab.guest.fates import fate_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed import DataclassInstance

STEPS = ("mount", "walk", "modify", "unmount", "fsck")  # what the judge runs for a driver, in order
# How far a driver got: refused at mount, or the last step of an unbroken run of steps that each
# ran to its end ("" when the mount itself never ended); see DriverRecord.reached.
REACHED = ("", "refused", "mounted", "walked", "modified", "unmounted", "checked")
MAX_DRIVERS = 64  # drivers in one call (a guest holds 56 disks)
MAX_NAME = 64  # names: driver, user, server, signal, errno, systemd units
MAX_PATH = 4096
MAX_ARGS = 64  # arguments of a command
MAX_ARG = 8192  # one argument, or a shell command
MAX_STOP = 16384  # the stop pattern
MAX_SAID = 1024  # a step's last words (the judge keeps 300, and may add a line)
MAX_TEXT = 4096  # a failure's words, a server's fate
MAX_KMSG = 1 << 20  # the kernel log of one driver
MAX_TASKS = 10000  # tasks in D state
MAX_TASK = 256  # one task, "comm[pid]"
MAX_SECONDS = 7 * 86400.0
MAX_PID = 1 << 22  # the kernel's PID_MAX_LIMIT
MAX_COUNT = 1 << 31  # a walk's counts
MOUNT_KINDS = {"sh": (1, 1), "exec": (1, MAX_ARGS), "start": (3, MAX_ARGS), "sandbox": (4, 4)}  # arguments


class ProtocolError(ValueError):
    """A message across the guest boundary breaks the protocol; `field` says where."""

    def __init__(self, where: str, problem: str) -> None:
        self.field = where or "message"
        super().__init__(f"{self.field}: {problem}")


# -- checking values ------------------------------------------------------------------------

_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
          float: "a number", type(None): "null"}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _wrong(where: str, wanted: str, value: object) -> ProtocolError:
    return ProtocolError(where, f"{wanted} expected, not {_kind(value)}")


def _text(value: object, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise _wrong(where, "a string", value)
    if len(value) > limit:
        raise ProtocolError(where, f"longer than {limit} characters ({len(value)})")
    return value


def _maybe_text(value: object, where: str, limit: int) -> str | None:
    return None if value is None else _text(value, where, limit)


def _list(value: object, where: str, limit: int) -> list[object]:
    if not isinstance(value, list):
        raise _wrong(where, "a list", value)
    if len(value) > limit:
        raise ProtocolError(where, f"more than {limit} items ({len(value)})")
    return value


def _texts(value: object, where: str, count: int, limit: int) -> list[str]:
    return [_text(item, f"{where}[{i}]", limit) for i, item in enumerate(_list(value, where, count))]


def _integer(value: object, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(where, "an integer", value)
    if not low <= value <= high:
        raise ProtocolError(where, f"{value} is not within {low}..{high}")
    return value


def _maybe_integer(value: object, where: str, low: int, high: int) -> int | None:
    return None if value is None else _integer(value, where, low, high)


def _number(value: object, where: str, low: float, high: float) -> float:
    """A number as sent (an integer stays one, so "60 s" still reads "60 s")."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _wrong(where, "a number", value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ProtocolError(where, f"{value} is not within {low:g}..{high:g}")
    return value


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(where, "a boolean", value)
    return value


_REQUIRED = object()


class _Object:
    """The fields of one JSON object at `where` ("verdicts[1].steps[0]"), each read once checked."""

    def __init__(self, data: object, where: str, known: Iterable[str]) -> None:
        self.where = where
        if not isinstance(data, dict):
            raise _wrong(where, "an object", data)
        allowed = set(known)
        for key in data:
            if key not in allowed:
                raise ProtocolError(self.at(str(key)[:MAX_NAME]), "unknown field")
        self.data: dict[object, object] = data

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def __call__(self, key: str, default: object = _REQUIRED) -> tuple[object, str]:
        """The value of `key` and its place, for the checks above."""
        if key in self.data:
            return self.data[key], self.at(key)
        if default is _REQUIRED:
            raise ProtocolError(self.at(key), "missing")
        return default, self.at(key)


def _command(value: object, where: str) -> str | list[str]:
    """A shell command (a string) or an argv (a list of strings, not empty)."""
    if isinstance(value, str):
        return _text(value, where, MAX_ARG)
    argv = _texts(value, where, MAX_ARGS, MAX_ARG)
    if not argv:
        raise ProtocolError(where, "an empty command")
    return argv


def _fields(cls: type[DataclassInstance]) -> list[str]:
    return [f.name for f in fields(cls)]


# -- host to guest: what to judge -----------------------------------------------------------

@dataclass
class DriverSpec:
    """One driver for the judge to run on its own disk (containment: Driver.judge_spec)."""

    name: str
    device: str
    mountpoint: str
    # ["sh", COMMAND] | ["exec", ARGV...] | ["start", FATE, MOUNTPOINT, ARGV...] |
    # ["sandbox", FATE, DEVICE, MOUNTPOINT, OPTIONS]
    mount: list[str]
    unmount: str | list[str]  # a shell command, or an argv the judge runs
    user: str | None = None  # run every step but fsck as this account
    fate: str | None = None  # where the keeper writes the FUSE server's fate
    units: str | None = None  # systemd's instances of a service-mode server (their journal tells its fate)
    fstype: str = ""  # the kernel's mount type ("" = ext4), named in the judge's words
    readonly: bool = False  # a read walk only: no modify step
    checker: list[str] = field(default_factory=list)  # the filesystem's checker, the device appended; [] = none

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str = "") -> DriverSpec:
        get = _Object(data, where, _fields(cls))
        mount = _texts(*get("mount"), MAX_ARGS + 1, MAX_ARG)
        if not mount or mount[0] not in MOUNT_KINDS:
            raise ProtocolError(get.at("mount"), f"the kind must be one of {', '.join(MOUNT_KINDS)}")
        low, high = MOUNT_KINDS[mount[0]]
        if not low <= len(mount) - 1 <= high:
            raise ProtocolError(get.at("mount"), f"{mount[0]!r} takes {low}..{high} arguments, not {len(mount) - 1}")
        return cls(name=_text(*get("name"), MAX_NAME), device=_text(*get("device"), MAX_PATH),
                   mountpoint=_text(*get("mountpoint"), MAX_PATH), mount=mount, unmount=_command(*get("unmount")),
                   user=_maybe_text(*get("user", None), MAX_NAME), fate=_maybe_text(*get("fate", None), MAX_PATH),
                   units=_maybe_text(*get("units", None), MAX_NAME), fstype=_text(*get("fstype", ""), MAX_NAME),
                   readonly=_flag(*get("readonly", False)), checker=_texts(*get("checker", []), MAX_ARGS, MAX_ARG))


@dataclass
class JudgeSpec:
    """One call of the guest's judge: its drivers, each step's deadline, when to stop."""

    drivers: list[DriverSpec] = field(default_factory=list)
    deadlines: dict[str, float] = field(default_factory=dict)  # seconds, for every step of STEPS
    stop: str = ""  # a driver's kernel log matching this (a splat) stops a batch run one by one
    together: bool = False  # every driver at once, each in a process of its own
    budget: float = 0  # seconds for the whole request (0: none); then the judge stops and answers
    stall: float = 12  # seconds a step may wait on a FUSE server without progress (0: no watch)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str = "") -> JudgeSpec:
        get = _Object(data, where, _fields(cls))
        items, at = get("drivers", [])
        drivers = [DriverSpec.from_json(d, f"{at}[{i}]") for i, d in enumerate(_list(items, at, MAX_DRIVERS))]
        seconds = _Object(*get("deadlines", {}), STEPS)
        deadlines = {step: _number(*seconds(step), 0.0, MAX_SECONDS) for step in STEPS
                     if drivers or step in seconds.data}
        stop = _text(*get("stop", ""), MAX_STOP)
        try:
            re.compile(stop)
        except re.error as exc:
            raise ProtocolError(get.at("stop"), f"not a regular expression: {exc}") from None
        return cls(drivers=drivers, deadlines=deadlines, stop=stop, together=_flag(*get("together", False)),
                   budget=_number(*get("budget", 0), 0.0, MAX_SECONDS), stall=_number(*get("stall", 12), 0.0, MAX_SECONDS))


# -- guest to host: what happened -----------------------------------------------------------

@dataclass
class StepRecord:
    """One step of a driver, as the judge ran it (containment calls it Step)."""

    name: str
    status: int  # exit status; -1 when the step timed out or the guest went away
    said: str  # the end of its output
    seconds: float
    errno: str = ""  # the errno the step failed with, when it failed on a system call

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str = "") -> StepRecord:
        get = _Object(data, where, _fields(cls))
        name = _text(*get("name"), MAX_NAME)
        if name not in STEPS:
            raise ProtocolError(get.at("name"), f"{name!r} is not one of {', '.join(STEPS)}")
        return cls(name=name, status=_integer(*get("status"), -255, 255), said=_text(*get("said"), MAX_SAID),
                   seconds=_number(*get("seconds"), 0.0, MAX_SECONDS), errno=_text(*get("errno", ""), MAX_NAME))


@dataclass
class DriverRecord:
    """Everything the judge saw of one driver; with `error`, the judge failed on it."""

    name: str
    steps: list[StepRecord] = field(default_factory=list)
    server: str = "-"  # the FUSE server's fate ("killed by SIGSEGV during walk"), "-" when none is known
    stuck_mount: bool = False  # the mount could only be detached lazily
    stuck: list[str] = field(default_factory=list)  # tasks in D state afterwards
    kmsg: str = ""  # the kernel's log while this driver ran
    seconds: float = 0.0
    error: str = ""
    reached: str = ""  # one of REACHED: how far the driver got
    refusal: str = ""  # when refused: the first meaningful line of the refusal and its exit status
    entries: int = 0  # the walk's entries seen
    files: int = 0  # the walk's files read
    walk_errors: int = 0  # the walk's failed calls
    hung: str = ""  # "server hung during walk (connection aborted)"
    livelock: str = ""  # a task that never returned from a step, not in D state, with its kernel stack

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str = "") -> DriverRecord:
        get = _Object(data, where, _fields(cls))
        steps, at = get("steps")
        reached = _text(*get("reached", ""), MAX_NAME)
        if reached not in REACHED:
            raise ProtocolError(get.at("reached"), f"{reached!r} is not one of {', '.join(REACHED[1:])} or ''")
        return cls(reached=reached, refusal=_text(*get("refusal", ""), MAX_SAID),
                   entries=_integer(*get("entries", 0), 0, MAX_COUNT), files=_integer(*get("files", 0), 0, MAX_COUNT),
                   walk_errors=_integer(*get("walk_errors", 0), 0, MAX_COUNT), hung=_text(*get("hung", ""), MAX_SAID),
                   livelock=_text(*get("livelock", ""), MAX_TEXT),
                   name=_text(*get("name"), MAX_NAME),
                   steps=[StepRecord.from_json(s, f"{at}[{i}]") for i, s in enumerate(_list(steps, at, len(STEPS)))],
                   server=_text(*get("server"), MAX_TEXT), stuck_mount=_flag(*get("stuck_mount")),
                   stuck=_texts(*get("stuck"), MAX_TASKS, MAX_TASK), kmsg=_text(*get("kmsg"), MAX_KMSG),
                   seconds=_number(*get("seconds"), 0.0, MAX_SECONDS), error=_text(*get("error", ""), MAX_TEXT))


@dataclass
class JudgeAnswer:
    """The judge's answer to a JudgeSpec; with `error`, the judge itself failed."""

    verdicts: list[DriverRecord] = field(default_factory=list)  # in the order asked; fewer after a stop
    together: bool = False
    hurt: bool = False  # together: the kernel was hurt (splat, stuck task) or a driver's judge failed
    stuck: list[str] = field(default_factory=list)  # together: tasks in D state afterwards
    kmsg: str = ""  # together: the kernel's log while the drivers ran
    error: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, asked: JudgeSpec | None = None, where: str = "") -> JudgeAnswer:
        """The answer in `data`; with `asked`, its records must be for the drivers asked, in order."""
        get = _Object(data, where, _fields(cls))
        items, at = get("verdicts", [])
        records = [DriverRecord.from_json(r, f"{at}[{i}]") for i, r in enumerate(_list(items, at, MAX_DRIVERS))]
        if asked is not None:
            names = [d.name for d in asked.drivers]
            if len(records) > len(names):
                raise ProtocolError(at, f"{len(records)} records for {len(names)} drivers")
            for i, (record, name) in enumerate(zip(records, names, strict=False)):
                if record.name != name:
                    raise ProtocolError(f"{at}[{i}].name", f"{record.name!r}, but driver {i} is {name!r}")
        return cls(verdicts=records, together=_flag(*get("together", False)), hurt=_flag(*get("hurt", False)),
                   stuck=_texts(*get("stuck", []), MAX_TASKS, MAX_TASK), kmsg=_text(*get("kmsg", ""), MAX_KMSG),
                   error=_text(*get("error", ""), MAX_TEXT))


@dataclass
class ServerFate:
    """How a FUSE server ended, as its keeper (fuseserver.py) writes it."""

    exit: int | None  # its exit status, None when a signal killed it
    signal: str | None  # "SIGSEGV"
    core: bool = False
    server: str = ""  # its name
    pid: int | None = None
    ended: float | None = None  # when (the guest's clock)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def text(self) -> str:
        return fate_text(self.to_json())

    @classmethod
    def from_json(cls, data: object, where: str = "") -> ServerFate:
        get = _Object(data, where, _fields(cls))
        ended, at = get("ended", None)
        return cls(exit=_maybe_integer(*get("exit"), 0, 255), signal=_maybe_text(*get("signal"), MAX_NAME),
                   core=_flag(*get("core", False)), server=_text(*get("server", ""), MAX_NAME),
                   pid=_maybe_integer(*get("pid", None), 0, MAX_PID),
                   ended=None if ended is None else _number(ended, at, 0.0, 1e12))


@dataclass
class HealthFacts:
    """What the guest says of its own health after a test (the agent's "tasks" request)."""

    stuck: list[str] = field(default_factory=list)  # tasks in D state through the grace period, "comm[pid]"

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str = "") -> HealthFacts:
        get = _Object(data, where, _fields(cls))
        return cls(stuck=_texts(*get("stuck"), MAX_TASKS, MAX_TASK))
