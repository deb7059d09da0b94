"""The fixtures: `fuselab_lab` (session), `fuselab_guest` and `fuselab_disk` (per test)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest

from pytest_fuselab import capabilities
from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.errors import FuselabError
from pytest_fuselab.vm.guest import Disk, Guest, create_overlay
from pytest_fuselab.lab import Lab
from pytest_fuselab.plugin.keys import GUESTS_KEY, LAB_KEY, OUTCOME_KEY, SETTINGS_KEY, progress_for

SIZE = re.compile(r"^(\d+)([KMGT]?)i?B?$", re.I)


def parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    match = SIZE.match(size.strip())
    if not match:
        raise ValueError(f"disk size {size!r} is not a size like 512M or 4G")
    exponent: int = " KMGT".index(match.group(2).upper() or " ")
    return int(match.group(1)) * (1 << (10 * exponent))


@pytest.fixture(scope="session")
def fuselab_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """The session's lab: image, kernel, acceleration and snapshot, built on first use."""
    config = request.config
    if LAB_KEY not in config.stash:
        workdir = tmp_path_factory.mktemp("fuselab", numbered=True)
        config.stash[LAB_KEY] = Lab(config.stash[SETTINGS_KEY], workdir, progress_for(config))
    return config.stash[LAB_KEY]


def _start(lab: Lab, request: pytest.FixtureRequest, suffix: str = "") -> Guest:
    """A restored guest registered with the test, so the plugin judges its health."""
    _require_drivers(lab, request)
    rundir = lab.rundir(_safe_name(request.node.name) + suffix)
    try:
        guest = lab.guest(rundir)
    except FuselabError as exc:
        pytest.fail(f"fuselab could not start a guest: {exc}", pytrace=False)
    request.node.stash.setdefault(GUESTS_KEY, []).append(guest)
    return guest


def _require_drivers(lab: Lab, request: pytest.FixtureRequest) -> None:
    """Skip a test parametrised with a driver the image's stack lacks, naming what is missing."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    needs = [DRIVERS[v].needs for v in params.values() if isinstance(v, str) and v in DRIVERS and DRIVERS[v].needs]
    if needs:
        capabilities.require(lab, *needs)


def _stop(lab: Lab, request: pytest.FixtureRequest, guests: list[Guest]) -> None:
    for guest in guests:
        guest.shutdown()
    for guest in guests:
        _retain(request, guest.rundir, lab.settings.keep)


@pytest.fixture
def fuselab_guest(fuselab_lab: Lab, request: pytest.FixtureRequest) -> Iterator[Guest]:
    """A ready guest, fresh for this test (restored from the booted snapshot)."""
    guest = _start(fuselab_lab, request)
    yield guest
    _stop(fuselab_lab, request, [guest])


@pytest.fixture
def fuselab_guest_pair(fuselab_lab: Lab, request: pytest.FixtureRequest) -> Iterator[tuple[Guest, Guest]]:
    """Two fresh guests, each with its own root overlay, for disks shared between them."""
    first = _start(fuselab_lab, request, "-a")
    try:
        second = _start(fuselab_lab, request, "-b")
    except BaseException:
        _stop(fuselab_lab, request, [first])
        raise
    yield first, second
    _stop(fuselab_lab, request, [first, second])


@pytest.fixture(scope="module")
def _fuselab_module_guest(fuselab_lab: Lab, request: pytest.FixtureRequest) -> Iterator[tuple[Guest, list[bool]]]:
    """The guest behind `fuselab_module_guest`, and whether any test using it failed."""
    try:
        guest = fuselab_lab.guest(fuselab_lab.rundir(_safe_name(request.node.name)))
    except FuselabError as exc:
        pytest.fail(f"fuselab could not start a guest: {exc}", pytrace=False)
    failed: list[bool] = []
    yield guest, failed
    guest.shutdown()
    keep = fuselab_lab.settings.keep
    if keep == "none" or (keep == "failed" and not failed):
        shutil.rmtree(guest.rundir, ignore_errors=True)


@pytest.fixture
def fuselab_module_guest(_fuselab_module_guest: tuple[Guest, list[bool]],
                         request: pytest.FixtureRequest) -> Iterator[Guest]:
    """One guest shared by the tests of a module (for many cheap conversations with one set-up);
    judged after each test like `fuselab_guest`, so a splat fails the test that saw it and every
    later one.  Tests must leave it usable: clean up their mounts and processes."""
    guest, failed = _fuselab_module_guest
    request.node.stash.setdefault(GUESTS_KEY, []).append(guest)
    yield guest
    if request.node.stash.get(OUTCOME_KEY, False):
        failed.append(True)


@pytest.fixture
def fuselab_shared_disk(fuselab_guest_pair: tuple[Guest, Guest]) -> Callable[..., tuple[Disk, Disk]]:
    """Attach one raw disk to both guests of the pair at once: `fuselab_shared_disk("256M")`.
    No image locking, `share-rw=on`, host cache off, as two hosts sharing a LUN would see it."""

    def attach(size: str | int = "256M") -> tuple[Disk, Disk]:
        first, second = fuselab_guest_pair
        host = first.rundir / f"shared{len(first.disks) + 1}.raw"
        with open(host, "wb") as f:
            f.truncate(parse_size(size))
        name = host.stem
        return (first.attach_disk(host, fmt="raw", name=name, shared=True),
                second.attach_disk(host, fmt="raw", name=name, shared=True))

    return attach


@pytest.fixture
def fuselab_disk(fuselab_guest: Guest, request: pytest.FixtureRequest) -> Callable[..., Disk]:
    """Attach a fresh virtio disk: `fuselab_disk("1G")`, or `fuselab_disk(image=path)` (the
    image is never written: the guest writes to a copy-on-write overlay)."""

    def attach(size: str | int = "1G", image: str | os.PathLike[str] | None = None,
               block_size: int | None = None) -> Disk:
        n = len(fuselab_guest.disks) + 1
        if image is not None:
            source = Path(image).resolve()
            if not source.is_file():
                raise FuselabError(f"disk image {source} does not exist")
            host = fuselab_guest.rundir / f"disk{n}.qcow2"
            create_overlay(host, source, fmt="raw")
            return fuselab_guest.attach_disk(host, fmt="qcow2", block_size=block_size)
        host = fuselab_guest.rundir / f"disk{n}.raw"
        with open(host, "wb") as f:
            f.truncate(parse_size(size))
        return fuselab_guest.attach_disk(host, fmt="raw", block_size=block_size)

    return attach


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)[:60]


def _retain(request: pytest.FixtureRequest, rundir: Path, keep: str) -> None:
    failed = request.node.stash.get(OUTCOME_KEY, False)
    if keep == "all" or (keep == "failed" and failed):
        for big in [*rundir.glob("disk*"), *rundir.glob("shared*"), rundir / "root.qcow2"]:
            big.unlink(missing_ok=True)  # disks are big and rebuildable; console and logs are kept
        return
    shutil.rmtree(rundir, ignore_errors=True)
