"""After a test: did its guest stay healthy?  Splats, a dead QEMU, a silent guest or tasks stuck
in D state say no."""

from __future__ import annotations

from dataclasses import dataclass, field

from pytest_fuselab.errors import GuestError
from pytest_fuselab.guest.protocol import HealthFacts, ProtocolError
from pytest_fuselab.guest.tasks import STUCK_GRACE
from pytest_fuselab.judge.splats import Splat
from pytest_fuselab.vm.guest import Guest
from pytest_fuselab.vm.machine import Runstate, tail


@dataclass
class Health:
    """What the lab saw of one guest over one test."""

    splats: list[Splat] = field(default_factory=list)
    lost: str | None = None  # "QEMU exited …" or "guest stopped answering …"
    stuck: list[str] = field(default_factory=list)  # tasks left in D state

    @property
    def damaged(self) -> bool:
        return bool(self.splats or self.lost or self.stuck)

    def titles(self) -> list[str]:
        stuck = [f"tasks stuck in D state: {', '.join(self.stuck)}"] if self.stuck else []
        return [s.title for s in self.splats] + ([self.lost] if self.lost else []) + stuck

    def explain(self) -> str:
        parts = [f"kernel splat: {splat.title}\n{splat.excerpt}" for splat in self.splats]
        if self.lost:
            parts.append(self.lost)
        if self.stuck:
            parts.append(f"tasks still in uninterruptible sleep (D) after {STUCK_GRACE:.0f} s: " + ", ".join(self.stuck))
        return "\n\n".join(parts)


def check(guest: Guest, since: int = 0, suppress: tuple[str, ...] = (), answer_within: float = 10.0) -> Health:
    """Scan the console since `since`, and make sure the guest still answers."""
    health = Health(splats=guest.splats(since, suppress))
    if guest.killed:
        pass  # the test pulled the plug itself
    elif not guest.machine.is_running():
        health.lost = f"QEMU exited with status {guest.machine.exitcode} (guest lost)"
    elif guest.channel.lost:
        health.lost = f"guest lost: {guest.channel.lost}"
    elif not guest.ping(answer_within):
        health.lost = f"guest stopped answering (no reply to a ping within {answer_within:.0f} s)"
    else:
        try:
            health.stuck = stuck_tasks(guest)
        except GuestError as exc:
            health.lost = f"the lab could not check the guest's tasks: {exc}"
    if health.lost and not health.splats and not guest.console_text(since).strip():
        health.lost += "; no console output during the test"
    if health.damaged:
        guest.machine.state = Runstate.CRASHED  # never handed out again
    return health


def stuck_tasks(guest: Guest) -> list[str]:
    """Tasks in D state all through the next `STUCK_GRACE` seconds (a short D is normal), as the
    guest's agent finds them (guest/tasks.py, the judge's own check): no process started for it."""
    reply = guest.channel.request("tasks", wait=STUCK_GRACE + 15, grace=STUCK_GRACE)
    try:
        return HealthFacts.from_json({k: v for k, v in reply.items() if k not in ("id", "ok")}).stuck
    except ProtocolError as exc:
        raise GuestError(f"the guest's agent sent health facts the lab cannot take: {exc}") from exc


def console_tail(guest: Guest, lines: int = 30) -> str:
    return tail(guest.paths.console, lines)
