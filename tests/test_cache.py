"""Unit: build_once with real file locks and a fake builder; sweeping and setting aside."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest

from pytest_fuselab import cache
from pytest_fuselab.errors import ImageError


def slow_build(log: Path):
    """A builder that records each call and takes long enough for callers to overlap."""
    def build(work: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        (work / "result").write_text("whole")
    return build


def whole(path: Path) -> str | None:
    return None if (path / "result").exists() else "no result"


def _ask(final: str, log: str) -> None:
    cache.build_once(Path(final), slow_build(Path(log)), problem=whole)


def _fail(final: str) -> None:
    def build(work: Path) -> None:
        (work / "build.log").write_text("half way\n")
        raise RuntimeError("the build broke")
    try:
        cache.build_once(Path(final), build, problem=whole)
    except RuntimeError:
        pass


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_concurrent_callers_build_once(tmp_path):
    final, log = tmp_path / "thing", tmp_path / "calls.log"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_ask, args=(str(final), str(log))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    assert len(log.read_text().splitlines()) == 1
    assert (final / "result").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.log", "thing", "thing.lock"]


def test_a_usable_result_is_not_built_again(tmp_path):
    final, log = tmp_path / "thing", tmp_path / "calls.log"
    cache.build_once(final, slow_build(log), problem=whole)
    cache.build_once(final, slow_build(log), problem=whole)
    assert len(log.read_text().splitlines()) == 1
    cache.build_once(final, slow_build(log), problem=whole, rebuild=True)
    assert len(log.read_text().splitlines()) == 2
    assert not list(tmp_path.glob("thing.old-*"))


def test_a_failed_build_leaves_no_result_and_its_partial_dir_is_swept_later(tmp_path):
    final = tmp_path / "thing"
    child = multiprocessing.get_context("fork").Process(target=_fail, args=(str(final),))
    child.start()
    child.join(30)
    assert not final.exists()
    partial = tmp_path / f"thing.build-{child.pid}"
    assert (partial / "build.log").read_text() == "half way\n"  # kept for a person to read
    cache.build_once(final, slow_build(tmp_path / "calls.log"), problem=whole)
    assert not partial.exists()
    assert (final / "result").exists()


def test_a_failed_build_in_this_process_raises_and_installs_nothing(tmp_path):
    final = tmp_path / "thing"
    with pytest.raises(RuntimeError, match="broke"):
        cache.build_once(final, lambda work: (_ for _ in ()).throw(RuntimeError("broke")), problem=whole)
    assert not final.exists()


def test_stale_build_dirs_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    stale = tmp_path / f"other.build-{dead_pid()}"
    stale.mkdir()
    (stale / "junk").write_text("x")
    leftover = tmp_path / f"thing.old-{dead_pid()}"
    leftover.mkdir()
    live = tmp_path / f"other.build-{os.getppid()}"
    live.mkdir()
    cache.build_once(tmp_path / "thing", slow_build(tmp_path / "calls.log"), problem=whole)
    assert not stale.exists() and not leftover.exists()
    assert live.exists()


def test_an_unusable_result_is_set_aside_with_a_message_and_built_again(tmp_path):
    final, said = tmp_path / "thing", []
    final.mkdir()
    (final / "half").write_text("x")
    cache.build_once(final, slow_build(tmp_path / "calls.log"), problem=whole, progress=said.append)
    aside = list(tmp_path.glob("thing.bad-*"))
    assert len(aside) == 1 and (aside[0] / "half").exists()
    assert any("unusable (no result): set aside as thing.bad-" in m for m in said)
    assert (final / "result").exists()


def test_only_the_newest_set_aside_copy_is_kept(tmp_path):
    final = tmp_path / "thing"
    (tmp_path / "thing.bad-20000101-000000").mkdir()
    final.mkdir()
    aside = cache.set_aside(final, "broken")
    assert aside is not None and aside.exists()
    assert [p.name for p in tmp_path.iterdir()] == [aside.name]
    assert cache.set_aside(final, "gone") is None


def test_a_build_that_gives_an_unusable_result_is_an_error(tmp_path):
    final = tmp_path / "thing"
    with pytest.raises(ImageError, match=r"unusable result \(no result\); it is kept in .*thing.build-"):
        cache.build_once(final, lambda work: None, problem=whole)
    assert not final.exists()


def test_the_default_check_is_existence_and_the_lock_can_be_shared(tmp_path):
    shared = tmp_path / "all.lock"
    made = cache.build_once(tmp_path / "a", lambda work: None, lock=shared)
    assert made.is_dir()
    assert shared.exists() and not (tmp_path / "a.lock").exists()
