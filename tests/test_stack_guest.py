"""A stack built from Debian's source packages, installed into a real guest (cold: build root, two
builds, an image; cached after).  What the guest runs must be the layer's files, and capability
detection must say that this stack has no mount service."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_fuselab import capabilities
from pytest_fuselab.build.stack import build
from pytest_fuselab.build.stack.spec import parse
from pytest_fuselab.plugin.keys import SETTINGS_KEY
from pytest_fuselab.lab import Lab

# Cold, the first test builds the build root, the stack and its image: far more than the suite's
# per-test timeout on a loaded 2-core machine.
pytestmark = [pytest.mark.guest, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def source_lab(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    settings = dataclasses.replace(pytestconfig.stash[SETTINGS_KEY], stack=parse("debian-source"))
    return Lab(settings, tmp_path_factory.mktemp("stack-lab"))


def layer_of(lab: Lab) -> build.Layer:
    assert lab.settings.stack is not None
    return build.ensure(lab.settings.stack, lab.progress)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_guest_runs_the_layer(source_lab: Lab) -> None:
    layer = layer_of(source_lab)
    assert source_lab.image.manifest()["stack"] == layer.manifest()
    tree = layer.tree
    wanted = {f"/{p.relative_to(tree)}": sha256(p) for p in
              [tree / "usr/bin/fusermount3", tree / "usr/sbin/mke2fs", *tree.glob("usr/bin/fuse2fs"),
               *tree.glob("usr/lib/x86_64-linux-gnu/libfuse3.so.*.*")] if not p.is_symlink()}
    assert len(wanted) >= 4, wanted
    with source_lab.guest() as guest:
        seen = dict(reversed(line.split()) for line in
                    guest.run(["sha256sum", *sorted(wanted)]).stdout.splitlines())
        assert seen == wanted
        assert guest.run("stat -c '%a %U' /usr/bin/fusermount3").stdout.split() == ["4755", "root"]
        soname = next(p.name for p in tree.glob("usr/lib/x86_64-linux-gnu/libfuse3.so.*") if p.is_symlink())
        resolved = guest.run(f"ldconfig -p | grep -m1 '{soname} '").stdout
        assert resolved.split("=> ")[1].strip() == f"/usr/lib/x86_64-linux-gnu/{soname}"
        assert guest.run(f"readlink -f /usr/lib/x86_64-linux-gnu/{soname}").stdout.strip() in wanted
        assert layer.key in guest.run("cat /usr/local/lib/fuselab/stack.json").stdout


def test_capabilities_say_the_service_is_absent(source_lab: Lab) -> None:
    caps = capabilities.of(source_lab)
    assert caps.libfuse_version == layer_of(source_lab).manifest()["versions"]["libfuse"]  # type: ignore[index]
    assert caps.has("fusermount3") and caps.has("fuse2fs")
    reason = caps.missing("mount-service")
    assert reason is not None and "fuservicemount3 is not installed" in reason
    with pytest.raises(pytest.skip.Exception, match="fuservicemount3 is not installed"):
        capabilities.require(source_lab, "fuservicemount3")
    record = capabilities.latest_record(source_lab.settings.image, "debian-source")
    assert record is not None and record["image"] == source_lab.image.directory.name


def allow_other_as_user(guest: Any) -> Any:
    guest.run("truncate -s 32M /tmp/fs.img && mkfs.ext4 -q -F /tmp/fs.img && chown fuselab /tmp/fs.img "
              "&& mkdir -p /tmp/m && chown fuselab /tmp/m")
    return guest.run("runuser -u fuselab -- fuse2fs /tmp/fs.img /tmp/m -o allow_other,fakeroot", check=False)


def test_fuse_conf_is_set_per_run(source_lab: Lab, tmp_path: Path) -> None:
    with source_lab.guest() as guest:
        refused = allow_other_as_user(guest)
        assert refused.exit_status != 0 and "user_allow_other" in refused.stdout + refused.stderr
    settings = dataclasses.replace(source_lab.settings, fuse_conf="user_allow_other,mount_max=7")
    lab = Lab(settings, tmp_path)
    with lab.guest() as guest:
        assert capabilities.probe(guest).fuse_conf == {"user_allow_other": True, "mount_max": "7"}
        mounted = allow_other_as_user(guest)
        assert mounted.ok, mounted
        guest.run("echo data > /tmp/m/f && runuser -u fuselab -- fusermount3 -u /tmp/m && e2fsck -fn /tmp/fs.img")


SERVICE_STACK = "FUSELAB_TEST_SERVICE_STACK"  # a stack with the mount service (e.g. libfuse main + fuse4fs)


def test_service_stack_and_its_socket_mode_per_run(pytestconfig: pytest.Config, tmp_path: Path) -> None:
    """With a service stack (named by $FUSELAB_TEST_SERVICE_STACK): capabilities find the service,
    and --fuselab-socket-mode reaches the socket units through a visible drop-in."""
    value = os.environ.get(SERVICE_STACK)
    if not value:
        pytest.skip(f"set {SERVICE_STACK} to a stack with the mount service (upstream trees are not in CI)")
    base = dataclasses.replace(pytestconfig.stash[SETTINGS_KEY], stack=parse(value))
    caps = capabilities.of(Lab(base, tmp_path / "a"))
    for feature in ("mount-service", "fuservicemount3-setuid", "fuse4fs-service", "libfuse>=3.19"):
        assert caps.has(feature), caps.missing(feature)
    assert caps.socket_dir == "/run/filesystems" and caps.socket_units["fuse4fs.socket"]["mode"] == "0220"
    lab = Lab(dataclasses.replace(base, socket_mode="0666"), tmp_path / "b")
    with lab.guest() as guest:
        assert capabilities.probe(guest).socket_units["fuse4fs.socket"]["mode"] == "0666"
        assert "SocketMode=0666" in guest.run("systemctl cat fuse4fs.socket").stdout
        guest.run("systemctl start fuse4fs.socket")
        assert guest.run("stat -c %a /run/filesystems/ext4").stdout.strip() == "666"
