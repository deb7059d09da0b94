"""Tasks stuck in D state, for the judge and for the host's health check (runs in the guest, stdlib only).

    python3 -S -m pytest_fuselab.guest.tasks [GRACE]   prints each stuck task, "comm[pid]", on a line

A task counts once it stayed in D state through the next GRACE seconds (default 5): a short D
is normal.  The host checks the lines with protocol.HealthFacts; this module imports no more than
it must (not even json), since the host runs it after every test.
"""

from __future__ import annotations

import os
import sys
import time

STUCK_GRACE = 5.0


def d_state_tasks() -> set[str]:
    """Every task in D state now, as "comm[pid]"."""
    tasks = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm, _, rest = text.partition(" (")[2].rpartition(") ")
        if rest.startswith("D"):
            tasks.add(f"{comm}[{pid}]")
    return tasks


def stuck_tasks(grace: float = STUCK_GRACE) -> list[str]:
    """Tasks in D state all through the next `grace` seconds."""
    stuck, deadline = d_state_tasks(), time.monotonic() + grace
    while stuck and time.monotonic() < deadline:
        time.sleep(0.1)
        stuck &= d_state_tasks()
    return sorted(stuck)


def main(args: list[str]) -> int:
    grace = float(args[0]) if args else STUCK_GRACE
    for task in stuck_tasks(grace):
        print(task.replace("\n", "\\n"))  # a task may name itself anything (PR_SET_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
