"""Shared helpers for the project's own tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_fuselab.cache import cache_dir

# pytester moves HOME; inner runs must still find the image and snapshot already built.
os.environ.setdefault("FUSELAB_CACHE_DIR", str(cache_dir()))

DATA = Path(__file__).parent / "data"

pytest_plugins = ["pytester"]


@pytest.fixture
def data() -> Path:
    return DATA
