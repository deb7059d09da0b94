"""Unit: work directories are removed, swept once their run is dead, and a full TMPDIR is explained."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_fuselab import workdirs
from pytest_fuselab.errors import HostError
from pytest_fuselab.workdirs import MARKER, sweep_work_dirs, work_dir

PREFIX = "fuselab-repro-"


def run_holding_a_work_dir(parent: Path) -> tuple[subprocess.Popen[str], Path]:
    """A separate process that makes a work directory and waits in it."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pytest_fuselab.workdirs import work_dir
        with work_dir({PREFIX!r}, parent=Path({str(parent)!r})) as d:
            print(d, flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, Path(child.stdout.readline().strip())


def test_a_work_dir_is_marked_and_removed(tmp_path: Path) -> None:
    with work_dir(PREFIX, parent=tmp_path) as d:
        assert d.parent == tmp_path and d.name.startswith(PREFIX)
        assert (d / MARKER).read_text() == f"{os.getpid()}\n"
        (d / "image.img").write_bytes(b"x")
        assert sweep_work_dirs(PREFIX, tmp_path) == []  # its owner, this process, is alive
    assert not d.exists()


def test_the_dir_of_a_killed_run_is_swept_and_a_live_one_kept(tmp_path: Path) -> None:
    alive, alive_dir = run_holding_a_work_dir(tmp_path)
    killed, killed_dir = run_holding_a_work_dir(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_dir.exists()
        assert sweep_work_dirs(PREFIX, tmp_path) == [killed_dir]
        assert not killed_dir.exists() and alive_dir.exists()
        with work_dir(PREFIX, parent=tmp_path):  # a new run sweeps on its way in
            pass
        assert alive_dir.exists()
    finally:
        alive.kill()
        alive.wait()
    assert sweep_work_dirs(PREFIX, tmp_path) == [alive_dir]


def test_unmarked_dirs_are_kept_until_old_and_others_never_touched(tmp_path: Path) -> None:
    fresh, old, other = tmp_path / f"{PREFIX}new1", tmp_path / f"{PREFIX}old1", tmp_path / "fuselab-abcdefgh"
    for d in (fresh, old, other):
        d.mkdir()
    (other / "qmp.sock").write_text("")
    (tmp_path / f"{PREFIX}file").write_text("not a directory")
    week_ago = time.time() - 7 * 86400
    for d in (old, other):
        os.utime(d, (week_ago, week_ago))
    assert sweep_work_dirs(PREFIX, tmp_path) == [old]
    assert fresh.exists() and other.exists() and (tmp_path / f"{PREFIX}file").exists()


def test_a_marker_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    d = tmp_path / f"{PREFIX}evil"
    d.mkdir()
    (d / MARKER).symlink_to("/etc/passwd")
    assert sweep_work_dirs(PREFIX, tmp_path) == []


def test_no_space_while_creating_is_a_host_error_naming_the_directory(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def full(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith(MARKER + ".new"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(HostError, match=rf"No space left on device in the work directory {tmp_path}/{PREFIX}"
                                        rf"\w+ under {tmp_path} \(TMPDIR; .* free now\).*set TMPDIR"):
        with work_dir(PREFIX, parent=tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


def test_no_space_inside_is_a_host_error_elsewhere_not(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="No space left on device in the work directory"):
        with work_dir(PREFIX, parent=tmp_path) as d:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(d / "image.img"))
    with pytest.raises(HostError, match="No space left"):
        with work_dir(PREFIX, parent=tmp_path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write(2) names no file
    with pytest.raises(OSError) as caught:
        with work_dir(PREFIX, parent=tmp_path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/elsewhere/cache/base.qcow2")
    assert not isinstance(caught.value, HostError)
    assert list(tmp_path.iterdir()) == []


def test_too_little_space_or_no_directory_is_said_up_front(tmp_path: Path) -> None:
    with pytest.raises(HostError, match=rf"not enough free space .* in {tmp_path} \(TMPDIR\): .* MiB free, "
                                        r"about 1,073,741,824 MiB needed"):
        with work_dir(PREFIX, need=1 << 50, parent=tmp_path):
            pass
    with pytest.raises(HostError, match=rf"cannot make a work directory in {tmp_path}/missing \(TMPDIR\): "
                                        "No such file or directory; set TMPDIR"):
        with work_dir(PREFIX, parent=tmp_path / "missing"):
            pass


def test_a_really_full_filesystem(tmp_path: Path) -> None:
    """On a small tmpfs filled up, when this host lets us mount one."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(HostError, match=f"No space left on device in the work directory {mnt}/"):
            with work_dir(PREFIX, parent=mnt) as d:
                (d / "image.img").write_bytes(b"\0" * (1 << 20))
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/filler", "bs=4k"], capture_output=True)  # fill it
        with pytest.raises(HostError, match=f"in .*under {mnt} \\(TMPDIR; 0 MiB free now\\)"):
            with work_dir(PREFIX, parent=mnt):
                pass
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_host_error_for_other_temporary_files(tmp_path: Path) -> None:
    full = workdirs.host_error(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), tmp_path)
    assert f"Disk quota exceeded in a work directory under {tmp_path} (TMPDIR;" in str(full)
    readonly = workdirs.host_error(OSError(errno.EROFS, os.strerror(errno.EROFS)), tmp_path)
    assert f"cannot make a work directory in {tmp_path} (TMPDIR): Read-only file system" in str(readonly)
