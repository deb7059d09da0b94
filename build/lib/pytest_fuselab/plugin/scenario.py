"""Helpers that scenarios share: a fresh ext4 disk, its e2fsck verdict and the hostile corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_fuselab import corpus
from pytest_fuselab.cache import cache_dir, file_lock
from pytest_fuselab.judge.drivers import USER
from pytest_fuselab.plugin.keys import SETTINGS_KEY
from pytest_fuselab.vm.channel import Result
from pytest_fuselab.vm.guest import Guest

DEFAULT_SEED, DEFAULT_COUNT = 1, 4  # the default hostile corpus: keeps the suite inside the CI budget


def mkfs_command(device: str, *options: str, owner: str | None = USER) -> str:
    """The mkfs.ext4 command line of `fresh_ext4`."""
    owned = [f"-E root_owner=$(id -u {owner}):$(id -g {owner})"] if owner else []
    return " ".join(["mkfs.ext4 -q -F", *options, *owned, device])


def fresh_ext4(guest: Guest, device: str, *options: str, owner: str | None = USER) -> Result:
    """Make an ext4 on `device` whose root directory `owner` (the lab's user; None: root) owns."""
    return guest.run(mkfs_command(device, *options, owner=owner))


def fsck(guest: Guest, device: str, timeout: float = 60) -> Result:
    """Run a read-only, forced e2fsck (`e2fsck -fn`) on `device`; its result, whatever the status."""
    return guest.run(f"e2fsck -fn {device}", check=False, timeout=timeout)


def fsck_clean(guest: Guest, device: str, timeout: float = 60) -> Result:
    """Assert that `e2fsck -fn` finds `device` clean (exit status 0); its result."""
    result = fsck(guest, device, timeout)
    if result.exit_status != 0:
        raise AssertionError(result)
    return result


def corpus_dir(config: pytest.Config) -> Path:
    """The hostile-image corpus: `--fuselab-corpus DIR`, else a small generated one, cached."""
    chosen = config.stash[SETTINGS_KEY].corpus
    if chosen:
        return Path(chosen)
    directory = cache_dir() / "corpus" / f"seed{DEFAULT_SEED}-count{DEFAULT_COUNT}"
    with file_lock(directory.with_suffix(".lock"), "the default hostile corpus"):
        if not (directory / corpus.MANIFEST).exists():
            corpus.generate(DEFAULT_SEED, DEFAULT_COUNT, directory)
    return directory
