"""The `fuselab` command, one module per command group; `main` (in main.py) is its entry point."""

from __future__ import annotations

from pytest_fuselab.cli.main import main

__all__ = ["main"]
