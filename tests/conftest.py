"""Shared helpers for the project's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

pytest_plugins = ["pytester"]


@pytest.fixture
def data() -> Path:
    return DATA
