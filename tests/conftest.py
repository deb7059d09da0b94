"""Shared helpers for the project's own tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_fuselab.cache import cache_dir

# pytester moves HOME; inner runs must still find the image and snapshot already built.
os.environ.setdefault("FUSELAB_CACHE_DIR", str(cache_dir()))

HERE = Path(__file__).parent
DATA = HERE / "data"

pytest_plugins = ["pytester"]


GUEST_FIXTURES = {"fuselab_guest", "fuselab_guest_pair", "fuselab_module_guest"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory that is neither `guest` nor `build` as `unit`."""
    for item in items:
        if not item.path.is_relative_to(HERE):
            continue
        if GUEST_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.guest)  # a test that boots a guest is one, marked or not
        if not any(item.iter_markers("guest")) and not any(item.iter_markers("build")):
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def data() -> Path:
    return DATA
