"""After a test: did its guest stay healthy?  Splats, a dead QEMU or a silent guest say no."""

from __future__ import annotations

from dataclasses import dataclass, field

from .guest import Guest
from .machine import Runstate, tail
from .splats import Splat


@dataclass
class Health:
    """What the lab saw of one guest over one test."""

    splats: list[Splat] = field(default_factory=list)
    lost: str | None = None  # "QEMU exited …" or "guest stopped answering …"

    @property
    def damaged(self) -> bool:
        return bool(self.splats or self.lost)

    def titles(self) -> list[str]:
        return [s.title for s in self.splats] + ([self.lost] if self.lost else [])

    def explain(self) -> str:
        parts = []
        for splat in self.splats:
            parts.append(f"kernel splat: {splat.title}\n{splat.excerpt}")
        if self.lost:
            parts.append(self.lost)
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
    if health.lost and not health.splats and not guest.console_text(since).strip():
        health.lost += "; no console output during the test"
    if health.damaged:
        guest.machine.state = Runstate.CRASHED  # never handed out again
    return health


def console_tail(guest: Guest, lines: int = 30) -> str:
    return tail(guest.paths.console, lines)
