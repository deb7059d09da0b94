"""Hostile ext4 images through the mount service: fuse4fs@ parses them in its sandbox.

The containment verdict of scenarios/hostile_images, with the mount made by fuservicemount3 and a
socket-activated fuse4fs@ instance as the server: the instance may die, the kernel must stay clean,
the mount must be removable, and the next instance must still serve.
"""

from __future__ import annotations

import pytest

from pytest_fuselab import reproducers
from pytest_fuselab.judge.containment import judge
from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.judge.verdict import Budget
from pytest_fuselab.plugin.scenario import corpus_dir  # the same default corpus as scenarios/hostile_images

SERVICE = DRIVERS["fuse4fs-service"]  # fuservicemount3 -t ext4 through fuse4fs.socket


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hostile" in metafunc.fixturenames:
        directory = corpus_dir(metafunc.config)
        files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix != ".jsonl")
        items = reproducers.extract_all(files)
        metafunc.parametrize("hostile", items, ids=[f"{i.source.name}#{i.index}" for i in items])


def test_hostile_image_through_the_service(fuselab_lab, service, hostile, tmp_path, record_property):
    service.require("fuse4fs-service")
    service.sh("systemctl restart fuse4fs.socket")
    v = judge(service.guest, tmp_path / "disk.raw", f"{hostile.source.name}#{hostile.index}", hostile, SERVICE,
              Budget(fuselab_lab.settings.budget))
    record_property("verdict", v.verdict)
    evidence = service.evidence("fuse4fs@*")
    assert v.verdict in ("contained", "n/a"), f"{v}\n{evidence}"
    after = service.sh("fuservicemount3 -t ext4 --check")
    assert after.exit_status == 0, f"fuse4fs.socket stopped serving after the image\n{evidence}"
