"""A real build in the real build root that fails: the error shows the command and its log's end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_fuselab.build.stack import build
from pytest_fuselab.build.stack.spec import Source, StackSpec
from pytest_fuselab.errors import ImageError

pytestmark = pytest.mark.build  # a real build root (debootstrap of sid) on first use: minutes


@pytest.mark.skipif(os.geteuid() != 0, reason="building a stack needs root (debootstrap, chroot)")
def test_a_failing_build_names_its_command_and_log_tail(tmp_path: Path) -> None:
    tree = tmp_path / "libfuse"
    tree.mkdir()
    (tree / "meson.build").write_text("project('broken', 'c')\nerror('fuselab: this tree does not build')\n")
    spec = StackSpec("broken", Source("libfuse", str(tree)), Source("e2fsprogs", str(tree)))
    with pytest.raises(ImageError) as info:
        build.ensure(spec, lambda message: None)
    text = str(info.value)
    assert "$ chroot " in text and " meson setup /build/libfuse/build" in text
    assert "ERROR: Problem encountered: fuselab: this tree does not build" in text
    log = Path(text.split("full log: ")[1].split(")")[0])
    assert log.exists() and "this tree does not build" in log.read_text()
