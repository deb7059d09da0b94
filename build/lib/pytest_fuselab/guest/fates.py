"""How a FUSE server ended, in words (runs on both sides, stdlib only, imports nothing).

A keeper (fuseserver.py) writes a server's fate as one JSON object, {"server", "pid", "exit",
"signal", "core", "ended"}; protocol.ServerFate checks such a record on the host.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TypedDict

    class Fate(TypedDict, total=False):
        """A fate record (for the type checker only: at run time it is a dict)."""

        server: str
        pid: int | None
        exit: int | None
        signal: str | None
        core: bool
        ended: float


def fate_text(record: Mapping[str, object]) -> str:
    """The fate `record` in words: "exit status 0", "killed by SIGSEGV (core dumped)"."""
    if record.get("signal"):
        return f"killed by {record['signal']}" + (" (core dumped)" if record.get("core") else "")
    return f"exit status {record.get('exit')}"
