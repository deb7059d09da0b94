"""Hostile images, one test per image × driver: the containment verdict.

A FUSE driver may fail any way it likes but must not cost the kernel anything: a kernel splat,
a hung task, a lost guest or a mount that cannot be removed fails the test with the evidence.
For kernel ext4 a splat is a finding (the point is the comparison): reported as an expected
failure with its title.  Images come from `--fuselab-corpus DIR` (raw images, compressed
images, syzkaller programs, C reproducers), by default a small generated corpus.  The host
never mounts or checks them: they are only parsed inside the guest.
"""

from __future__ import annotations

import pytest

from pytest_fuselab import corpus
from pytest_fuselab import reproducers
from pytest_fuselab.judge.containment import judge
from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.judge.verdict import ERROR, Budget
from pytest_fuselab.plugin.scenario import corpus_dir


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hostile" not in metafunc.fixturenames:
        return
    directory = corpus_dir(metafunc.config)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != corpus.MANIFEST
                   and not p.name.startswith("."))
    items = reproducers.extract_all(files)
    params = [pytest.param(item, name, id=f"{item.source.name}#{item.index}-{name}",
                           marks=[pytest.mark.fuselab_splat_ok] if name == "kernel" else [])
              for item in items for name in DRIVERS]
    metafunc.parametrize("hostile,driver", params)


def test_hostile_image(fuselab_lab, fuselab_guest, hostile, driver, tmp_path, record_property):
    name = f"{hostile.source.name}#{hostile.index}"
    v = judge(fuselab_guest, tmp_path / "disk.raw", name, hostile, DRIVERS[driver], Budget(fuselab_lab.settings.budget))
    record_property("verdict", v.verdict)
    record_property("reached", v.reached or "-")
    record_property("steps", " ".join(f"{s.name}={s.status}" for s in v.steps))
    if v.verdict == "n/a":
        pytest.skip(f"{driver} does not take this image: {v.evidence}")
    if v.verdict == ERROR:
        pytest.fail(f"the lab could not judge {name} with {driver}: {v.evidence}", pytrace=False)
    if v.verdict == "finding":
        pytest.xfail(f"kernel finding: {'; '.join(v.splats)}")
    assert v.verdict in ("contained", "clean"), (
        f"containment breach with {driver}: {'; '.join(v.splats) or 'mount could not be removed'}; "
        f"steps: {v.steps}; server: {v.server}")
