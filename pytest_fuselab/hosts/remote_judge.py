"""Runs ON A HOST of hosts.toml, sent there by execnet's `remote_exec` (`fuselab repro|bench --hosts`).

It judges the images the controller sends over its channel with the host's installed pytest_fuselab (the
same ImageRunner as a local run), one at a time, and sends each image's verdicts back as JSON-ready dicts.
Every message is described in pytest_fuselab.hosts.messages; this module depends on nothing of the
controller's side.  The host's environment (FUSELAB_CACHE_DIR, FUSELAB_ACCEL, TMPDIR under its workdir)
comes with the gateway's spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_fuselab.hosts import messages


def _lab(settings: dict[str, str], workdir: Path) -> Any:
    """The host's Lab with the controller's chosen settings over the host's own environment."""
    from pytest_fuselab.lab import Lab
    from pytest_fuselab.settings import resolve

    return Lab(resolve(settings), workdir)


def _extracted(got: dict[str, Any], workdir: Path) -> Any:
    """The image of an `image` message as the judge takes it (its bytes written by the runner, under TMPDIR)."""
    from pytest_fuselab.reproducers import Extracted
    from pytest_fuselab.reproducers.sparse import SparseImage

    sparse = SparseImage(got["size"], tuple(got["extents"]))
    return Extracted(source=workdir / "images" / got["name"], index=0, fstype=got["fstype"], sparse=sparse,
                     mount_options=got["mount_options"], mount_flags=got["mount_flags"], notes=list(got["notes"]))


def judge_one(runner: Any, got: dict[str, Any], usable: list[str], workdir: Path) -> list[dict[str, object]]:
    """One image's verdicts; a driver this host cannot run, or a failure of the lab here, is a lab error."""
    from pytest_fuselab.errors import FuselabError
    from pytest_fuselab.judge.verdict import failed

    name, drivers = got["name"], list(got["drivers"])
    missing = [d for d in drivers if d not in usable]
    if missing:
        why = f"this host's stack cannot run {', '.join(missing)}"
        return [failed(name, d, why).to_json() for d in drivers]
    try:
        return [v.to_json() for v in runner.judge_item(_extracted(got, workdir), drivers, None, name)]
    except FuselabError as exc:
        runner.close()
        return [failed(name, d, f"the lab failed on this host: {exc}").to_json() for d in drivers]


def serve(channel: Any) -> None:
    """The host's side of the session: hello, ready, then images until None."""
    from pytest_fuselab.judge.containment import ImageRunner, usable_drivers
    from pytest_fuselab.workdirs import work_dir

    settings, warm = messages.check_hello(channel.receive())
    with work_dir("fuselab-hosts-") as tmp:
        try:
            lab = _lab(settings, tmp)
            usable = usable_drivers(lab)
            if warm:
                lab.guest().shutdown()  # the snapshot is built (or found) outside the timings
        except Exception as exc:  # noqa: BLE001 - whatever stops the lab here is said to the controller
            channel.send(messages.failure(f"{type(exc).__name__}: {exc}"))
            return
        channel.send(messages.ready(usable))
        runner = ImageRunner(lab, tmp / "runner", watch=lambda image, what: channel.send(messages.watch(image, what)))
        try:
            while (message := channel.receive()) is not None:
                got = messages.check_image(messages.body(message, "image"))
                channel.send(messages.verdicts(judge_one(runner, got, usable, tmp)))
        finally:
            runner.close()


if __name__ == "__channelexec__":
    serve(channel)  # type: ignore[name-defined]  # noqa: F821 - execnet's global in a remote_exec
