"""A real build in the real build root that fails: the error shows the command and its log's end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_fuselab.build import stack
from pytest_fuselab.errors import ImageError


@pytest.mark.skipif(os.geteuid() != 0, reason="building a stack needs root (debootstrap, chroot)")
def test_a_failing_build_names_its_command_and_log_tail(tmp_path: Path) -> None:
    tree = tmp_path / "libfuse"
    tree.mkdir()
    (tree / "meson.build").write_text("project('broken', 'c')\nerror('fuselab: this tree does not build')\n")
    spec = stack.StackSpec("broken", stack.Source("libfuse", str(tree)), stack.Source("e2fsprogs", str(tree)))
    with pytest.raises(ImageError) as info:
        stack.ensure(spec, lambda message: None)
    text = str(info.value)
    assert "$ chroot " in text and " meson setup /build/libfuse/build" in text
    assert "ERROR: Problem encountered: fuselab: this tree does not build" in text
    log = Path(text.split("full log: ")[1].split(")")[0])
    assert log.exists() and "this tree does not build" in log.read_text()
