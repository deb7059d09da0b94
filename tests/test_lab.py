"""Unit: Lab.guest() heals a snapshot that passes its digests but fails to restore (fake guests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from qemu.qmp import ExecInterruptedError

from pytest_fuselab import lab as labmod
from pytest_fuselab.errors import BootError, GuestLost, MachineError, SettingError
from pytest_fuselab.settings import resolve
from pytest_fuselab.vm.snapshot import Snapshot


class FakeGuest:
    """Restores by asking `outcomes` what happens to the n-th restore."""

    outcomes: list[BaseException | Callable[[], BaseException] | None] = []
    restored: list[Path] = []
    stopped = 0

    def __init__(self, spec: object, rundir: Path, ssh_port: int | None = None) -> None:
        self.rundir = rundir

    def restore(self, root: Path, state: Path) -> None:
        FakeGuest.restored.append(state.parent)
        outcome = FakeGuest.outcomes.pop(0)
        if callable(outcome):
            outcome = outcome()
        if outcome is not None:
            raise outcome

    def shutdown(self) -> None:
        FakeGuest.stopped += 1


@pytest.fixture
def fake_lab(tmp_path, monkeypatch):
    """A Lab whose snapshots are directories under tmp_path, made by counting calls to ensure()."""
    made: list[Path] = []
    messages: list[str] = []

    def ensure(*args: object, **kwargs: object) -> Snapshot:
        directory = tmp_path / "snapshots" / "key"
        if not directory.exists():
            directory.mkdir(parents=True)
            (directory / "state.bin").write_bytes(b"state %d" % len(made))
            made.append(directory)
        return Snapshot(directory)

    monkeypatch.setattr(labmod.snapshot, "ensure", ensure)
    monkeypatch.setattr(labmod, "Guest", FakeGuest)
    monkeypatch.setattr(labmod, "configure_from", lambda guest, settings: [])
    FakeGuest.restored, FakeGuest.stopped = [], 0
    lab = labmod.Lab(resolve(env={}), tmp_path / "work", messages.append)
    lab.__dict__["spec"] = object()  # no image, kernel or QEMU needed
    return lab, made, messages


@pytest.mark.parametrize("failure", [
    ExecInterruptedError("Disconnected"),  # what QMP raised on a state corrupted at the same size
    BootError("restoring state.bin failed (loading the saved state failed (status failed))"),
    BootError("restoring state.bin failed (the guest did not answer)"),
    EOFError(),
    ConnectionResetError(),
])
def test_a_snapshot_that_fails_to_restore_is_set_aside_and_made_again_once(fake_lab, failure):
    lab, made, messages = fake_lab
    FakeGuest.outcomes = [failure, None]
    guest = lab.guest()
    assert isinstance(guest, FakeGuest) and len(made) == 2 and FakeGuest.stopped == 1
    aside = [p.name for p in made[0].parent.iterdir() if ".bad-" in p.name]
    assert len(aside) == 1 and (made[0].parent / aside[0] / "state.bin").read_bytes() == b"state 0"
    assert (made[1] / "state.bin").read_bytes() == b"state 1"
    assert any("restoring it failed" in m and "making it again" in m for m in messages)
    FakeGuest.outcomes = [None]
    lab.guest()  # the lab keeps the new snapshot
    assert len(made) == 2


def test_a_second_failure_is_the_error_and_a_lab_error(fake_lab):
    lab, made, _ = fake_lab
    FakeGuest.outcomes = [ExecInterruptedError("Disconnected"), ExecInterruptedError("Disconnected")]
    with pytest.raises(BootError, match="freshly made snapshot .* failed too: Disconnected"):
        lab.guest()
    assert len(made) == 2 and FakeGuest.stopped == 2 and not FakeGuest.outcomes


@pytest.mark.parametrize("failure", [
    SettingError("bad"),
    MachineError("command failed with status 1:\n$ qemu-img create ...: No space left on device"),
    MachineError("QEMU exited with status 1 during start-up"),
    GuestLost("cannot connect to the agent socket"),
])
def test_failures_before_the_state_is_read_are_not_blamed_on_the_snapshot(fake_lab, failure):
    lab, made, _ = fake_lab
    FakeGuest.outcomes = [failure]
    with pytest.raises(type(failure)):
        lab.guest()
    assert len(made) == 1 and made[0].exists() and not FakeGuest.outcomes


def test_a_snapshot_another_process_set_aside_is_not_set_aside_again(fake_lab):
    lab, made, messages = fake_lab
    snap = lab.snapshot

    def someone_else_healed() -> BaseException:
        snap.directory.rename(snap.directory.with_name("elsewhere"))
        return BootError("restoring state.bin failed (gone)")

    FakeGuest.outcomes = [someone_else_healed, None]
    lab.guest()
    assert len(made) == 2 and not any(".bad-" in p.name for p in made[0].parent.iterdir())
    assert any("another process has set it aside" in m for m in messages)


@pytest.fixture
def unusable_tmpdir(tmp_path, monkeypatch):
    """TMPDIR under a file: every temporary file or directory there fails (ENOTDIR), even for root."""
    import tempfile

    (tmp_path / "file").write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "file" / "tmp"))
    return tmp_path / "file" / "tmp"


def test_a_guest_under_an_unusable_tmpdir_is_a_host_error(unusable_tmpdir, tmp_path):
    from pytest_fuselab.errors import HostError
    from pytest_fuselab.vm.guest import Guest

    with pytest.raises(HostError, match=f"cannot make a work directory in {unusable_tmpdir} .TMPDIR.*set TMPDIR"):
        Guest(object(), tmp_path / "run")  # type: ignore[arg-type]


def test_host_commands_under_an_unusable_tmpdir_are_a_host_error(unusable_tmpdir):
    from pytest_fuselab import proc
    from pytest_fuselab.errors import HostError, ImageError

    with pytest.raises(HostError, match="set TMPDIR to a writable directory"):
        proc.run(["true"], ImageError)


def test_doctor_under_an_unusable_tmpdir_says_so(unusable_tmpdir):
    from pytest_fuselab import capabilities

    rows = capabilities.doctor_rows(resolve(env={}))
    assert rows[0][0] == "stack" and "not probed (cannot make a work directory" in rows[0][1]


def test_kvm_probe_output_goes_to_its_work_directory(tmp_path, monkeypatch):
    from pytest_fuselab.vm import accel

    monkeypatch.setattr(accel, "_die_with_parent", lambda: None)
    out = tmp_path / "probe.out"
    why = accel._run_probe(["sh", "-c", "echo no kernel here; exit 3"], 5, out)
    assert why == "a KVM probe guest failed (QEMU status 3: no kernel here)" and out.exists()
