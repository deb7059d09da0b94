"""Programs that run inside the guest, never on the host (stdlib only; stallfs also needs pyfuse3).

Every guest gets this package from the lab's initramfs layer (build/recipe.py `guest_files`) at
/usr/local/lib/fuselab/pytest_fuselab/guest, with PYTHONPATH set for whatever the agent runs, so
a guest program is `python3 -m pytest_fuselab.guest.NAME`.  Nothing here imports host code:
`protocol` describes what crosses the boundary, and both sides import it.
"""

from __future__ import annotations

GUEST_LIB = "/usr/local/lib/fuselab"


def module_command(name: str) -> str:
    """The guest's command line that runs the guest program `name` (e.g. "stallfs", "probes.dio_probe")."""
    return f"python3 -m pytest_fuselab.guest.{name}"
