"""Typed stash keys for the plugin's state, and where its progress messages go."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import pytest

from pytest_fuselab.vm.guest import Guest
from pytest_fuselab.lab import Lab
from pytest_fuselab.settings import Settings

SETTINGS_KEY = pytest.StashKey[Settings]()
LAB_KEY = pytest.StashKey[Lab]()
GUESTS_KEY = pytest.StashKey[list[Guest]]()
OUTCOME_KEY = pytest.StashKey[bool]()  # True when the test failed


def progress_for(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines for long steps: the terminal on the controller, stderr on xdist workers."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    worker = hasattr(config, "workerinput")

    def say(message: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            if reporter is not None and not worker:
                reporter.write_line(f"fuselab: {message}")
            else:
                print(f"fuselab: {message}", file=sys.stderr, flush=True)

    return say
