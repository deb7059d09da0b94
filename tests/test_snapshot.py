"""Snapshots that heal: digests catch a state corrupted at the same size; one that fails to restore is remade."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from qemu.qmp.qmp_client import ExecInterruptedError

from pytest_fuselab.lab import Lab
from pytest_fuselab.settings import resolve
from pytest_fuselab.vm import snapshot


def fake_snapshot(directory: Path, digests: bool = True) -> snapshot.Snapshot:
    """What save() leaves: root, state and meta.json (with digests unless an older lab saved it)."""
    directory.mkdir(parents=True, exist_ok=True)
    snap = snapshot.Snapshot(directory)
    snap.root.write_bytes(os.urandom(1 << 16))
    snap.state.write_bytes(os.urandom(3 << 20))
    snap.meta_path.write_text(json.dumps({"root_size": 1 << 16, "state_size": 3 << 20}))
    if digests:
        snap.record_digests()
    return snap


def corrupt_in_place(path: Path) -> None:
    """1 MiB of random bytes in the middle of `path`: the size stays the same."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2 - (1 << 19))
        f.write(os.urandom(1 << 20))
    assert path.stat().st_size == size


class FakeGuest:
    """Stands in for vm.guest.Guest in checked(): a restore that works or that QEMU rejects."""

    restores: list[Path] = []
    fails = False

    def __init__(self, spec: object, rundir: Path) -> None:
        pass

    def __enter__(self) -> FakeGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def restore(self, root: Path, state: Path) -> None:
        FakeGuest.restores.append(state)
        if FakeGuest.fails:
            raise ExecInterruptedError("Disconnected")

    def run(self, command: str, timeout: float) -> None:
        pass


def test_a_state_corrupted_at_the_same_size_fails_its_digest(tmp_path):
    snap = fake_snapshot(tmp_path / "s")
    assert snap.problem() is None
    corrupt_in_place(snap.state)
    assert snap.problem() == "state.bin does not match the digest recorded when it was built"


def test_a_snapshot_without_digests_must_restore_once_then_gets_them(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "Guest", FakeGuest)
    monkeypatch.setattr(FakeGuest, "restores", [])
    snap, said = fake_snapshot(tmp_path / "s", digests=False), []
    assert snapshot.checked(snap, None, tmp_path / "run", said.append) is None  # type: ignore[arg-type]
    assert "digests" in snap.meta() and len(FakeGuest.restores) == 1
    assert snapshot.checked(snap, None, tmp_path / "run", said.append) is None  # type: ignore[arg-type]
    assert len(FakeGuest.restores) == 1  # verified by digest from now on
    assert any("no digests" in m for m in said)


def test_a_snapshot_without_digests_that_fails_to_restore_is_unusable(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "Guest", FakeGuest)
    monkeypatch.setattr(FakeGuest, "fails", True)
    snap = fake_snapshot(tmp_path / "s", digests=False)
    assert snapshot.checked(snap, None, tmp_path / "run", print) == "restoring it failed: Disconnected"
    assert "digests" not in snap.meta()


def test_ensure_sets_a_corrupt_snapshot_aside_and_makes_it_again(tmp_path, monkeypatch):
    target = fake_snapshot(tmp_path / "snapshots" / "k")
    corrupt_in_place(target.state)
    made: list[Path] = []
    monkeypatch.setattr(snapshot, "snapshot_for", lambda spec, base: target)
    monkeypatch.setattr(snapshot, "make", lambda spec, base, rundir, work, *a: made.append(work) or fake_snapshot(work))
    said: list[str] = []
    assert snapshot.ensure(None, tmp_path, tmp_path / "work", said.append) == target  # type: ignore[arg-type]
    assert target.problem() is None and len(made) == 1
    assert any("unusable (state.bin does not match" in m and "set aside" in m for m in said)
    assert len(list((tmp_path / "snapshots").glob("k.bad-*"))) == 1
    snapshot.ensure(None, tmp_path, tmp_path / "work", said.append)  # type: ignore[arg-type]
    assert len(made) == 1


@pytest.mark.guest
def test_a_corrupt_snapshot_state_is_set_aside_and_the_lab_boots_again(tmp_path, monkeypatch):
    """A copy of the shared snapshot, as an older lab saved it (no digests), with its state corrupted at the
    same size: the lab must notice, set it aside, cold-boot a new one and hand out a working guest."""
    said: list[str] = []
    lab = Lab(resolve({}, {}, env={}), tmp_path / "work", progress=said.append)
    shared = snapshot.ensure(lab.spec, lab.image.base, tmp_path / "work", said.append)
    monkeypatch.setenv("FUSELAB_CACHE_DIR", str(tmp_path / "cache"))  # the copy's key stays the same
    copy = snapshot.snapshot_for(lab.spec, lab.image.base)
    assert copy.directory != shared.directory
    shutil.copytree(shared.directory, copy.directory)
    meta = copy.meta()
    meta.pop("digests", None)
    copy.meta_path.write_text(json.dumps(meta))
    corrupt_in_place(copy.state)
    with lab.guest() as guest:
        assert guest.run("echo back").stdout == "back\n"
    assert lab.snapshot == copy and copy.problem() is None and "digests" in copy.meta()
    assert any("restoring it failed" in m and "set aside" in m for m in said), said
    aside = list(copy.directory.parent.glob(copy.directory.name + ".bad-*"))
    assert len(aside) == 1 and aside[0].joinpath("state.bin").exists()  # set aside, not deleted
