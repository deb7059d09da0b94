"""`fuselab kernel build`: the shipped fragments, what a config did not take, and a failing build
that names its command and shows the log's tail (real make runs on small Makefiles)."""

from __future__ import annotations

import pytest

from pytest_fuselab.build.kernel import build as kbuild
from pytest_fuselab.build.kernel import config as kconfig
from pytest_fuselab.errors import SettingError


def test_the_fragment_covers_what_the_lab_checks():
    fragment = kconfig.parse(kbuild.FRAGMENT.read_text())
    assert kconfig.check(fragment, has_modules=True).fatal == []
    assert kconfig.check(fragment, has_modules=True).scenario == []
    debug = kconfig.parse(kbuild.DEBUG_FRAGMENT.read_text())
    assert {"KASAN", "PROVE_LOCKING", "KFENCE", "UBSAN"} <= {k for k, v in debug.items() if v == "y"}
    assert fragment["VFAT_FS"] == fragment["MSDOS_FS"] == "m" and fragment["IKCONFIG"] == "y"


def test_unmet_lists_options_the_config_did_not_take(tmp_path):
    frag = tmp_path / "f.config"
    frag.write_text("CONFIG_FUSE_FS=y\nCONFIG_VFAT_FS=m\nCONFIG_KASAN=y\n# CONFIG_DEBUG_VM is not set\n")
    config = {"FUSE_FS": "y", "VFAT_FS": "y", "KASAN": "n"}
    assert kbuild.unmet(config, [frag]) == ["CONFIG_KASAN=y (got n)"]


def test_a_failing_build_names_the_target_and_shows_the_tail(tmp_path):
    (tmp_path / "Makefile").write_text("all: fs/fuse/dir.o\nfs/fuse/dir.o:\n\t@echo 'fs/fuse/dir.c:12: error: "
                                       "expected ; before }'\n\t@false\n")
    log = tmp_path / "build.log"
    with pytest.raises(kbuild.BuildError) as exc:
        kbuild.make(tmp_path, ["all"], log)
    message = str(exc.value)
    assert f"`make -C {tmp_path} all` failed with status 2 building fs/fuse/dir.o (rule at Makefile:4)" in message
    assert "fs/fuse/dir.c:12: error: expected ; before }" in message and str(log) in message
    assert "error: expected" in log.read_text()


def test_progress_counts_build_steps(tmp_path):
    lines = "".join(f"\t@echo '  CC      f{i}.o'\n" for i in range(3))
    (tmp_path / "Makefile").write_text(f"all:\n{lines}")
    seen: list[str] = []
    kbuild.make(tmp_path, ["all"], tmp_path / "log", seen.append)
    assert "CC      f2.o" in (tmp_path / "log").read_text()


def test_not_a_source_tree(tmp_path):
    with pytest.raises(SettingError, match="not a kernel source tree"):
        kbuild.build(tmp_path, lambda _: None)
