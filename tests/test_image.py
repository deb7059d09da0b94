"""Unit: recipes, the initramfs module closure, the host mirror, and cached-image checks."""

import json
import lzma
import os
import subprocess
from pathlib import Path

import pytest

from pytest_fuselab import cache
from pytest_fuselab.build import image
from pytest_fuselab.build import initramfs
from pytest_fuselab.build import recipe
from pytest_fuselab.errors import ImageError


def test_default_recipe_loads_and_has_the_stack():
    r = recipe.load("sid")
    assert r.suite == "sid"
    for pkg in ("fuse3", "fuse2fs", "e2fsprogs", "systemd-sysv", "python3", "openssh-server"):
        assert pkg in r.packages
    assert "/etc/systemd/system/fuselab-agent.service" in r.file_sources()


def test_recipe_digest_follows_its_files(tmp_path):
    (tmp_path / "files").mkdir()
    unit = tmp_path / "files" / "x.service"
    unit.write_text("[Unit]\n")
    toml = tmp_path / "mini.toml"
    toml.write_text('name = "mini"\nsuite = "sid"\npackages = ["kmod"]\nkernel_package = "linux-image-amd64"\n'
                    'initramfs_modules = ["ext4"]\n[files]\n"/etc/x.service" = "files/x.service"\n')
    first = recipe.load(str(toml)).digest()
    unit.write_text("[Unit]\nDescription=changed\n")
    assert recipe.load(str(toml)).digest() != first


def test_bad_recipes_say_what_is_wrong(tmp_path):
    with pytest.raises(ImageError, match="not found .* available: .*sid"):
        recipe.load("no-such-recipe")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ImageError, match="not valid TOML"):
        recipe.load(str(bad))
    odd = tmp_path / "odd.toml"
    odd.write_text('name = "odd"\ncolour = "blue"\n')
    with pytest.raises(ImageError, match="colour"):
        recipe.load(str(odd))


def test_module_closure_orders_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz\n"
        "kernel/fs/jbd2/jbd2.ko.xz:\nkernel/fs/mbcache.ko.xz:\n"
        "kernel/drivers/block/virtio_blk.ko.xz:\n")
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    order = initramfs.module_closure(tmp_path, ["virtio_pci", "virtio_blk", "ext4"])
    assert order == ["kernel/drivers/block/virtio_blk.ko.xz", "kernel/fs/jbd2/jbd2.ko.xz",
                     "kernel/fs/mbcache.ko.xz", "kernel/fs/ext4/ext4.ko.xz"]
    with pytest.raises(ImageError, match="'nosuchmod' not found"):
        initramfs.module_closure(tmp_path, ["nosuchmod"])


def test_decompress_xz_module(tmp_path):
    mod = tmp_path / "m.ko.xz"
    mod.write_bytes(lzma.compress(b"\x7fELF module"))
    assert initramfs.decompress(mod) == b"\x7fELF module"


def test_host_mirror_comes_from_apt_sources_or_the_environment(monkeypatch):
    monkeypatch.setenv("FUSELAB_MIRROR", "http://mirror.invalid/debian")
    assert image.host_mirror() == "http://mirror.invalid/debian"
    monkeypatch.delenv("FUSELAB_MIRROR")
    assert "/debian" in image.host_mirror()  # read from this host's /etc/apt


def test_a_damaged_cached_image_is_noticed(tmp_path):
    img = image.Image(tmp_path)
    assert "manifest unreadable" in img.problem()
    (tmp_path / "vmlinuz").write_bytes(b"k" * 100)
    (tmp_path / "manifest.json").write_text(json.dumps({"sizes": {"vmlinuz": 100, "initrd.gz": 5}}))
    assert img.problem() == "initrd.gz is missing"
    (tmp_path / "initrd.gz").write_bytes(b"i" * 4)
    assert "initrd.gz has 4 bytes" in img.problem()


def fake_image(work: Path, data: bytes = b"") -> None:
    """What _build leaves: a real (small) qcow2 and a manifest with sizes and digests."""
    raw = work / "base.raw"
    raw.write_bytes(data or os.urandom(4 << 20))
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "base.qcow2")], check=True)
    raw.unlink()
    files = ("base.qcow2",)
    manifest = {"sizes": {f: (work / f).stat().st_size for f in files},
                "digests": {f: cache.digest_of(work / f) for f in files}, "recipe_key": "k"}
    (work / "manifest.json").write_text(json.dumps(manifest))


def test_ensure_sets_a_corrupt_image_aside_and_rebuilds_it_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSELAB_CACHE_DIR", str(tmp_path))
    archive = {"fuse3": "3.18.3-1"}
    monkeypatch.setattr(image.versions, "archive_versions", lambda *a, **k: archive)
    monkeypatch.setattr(image, "require_root", lambda what: None)
    built = []
    monkeypatch.setattr(image, "_build", lambda rec, work, progress, arch, layer: built.append(work) or fake_image(work))
    r = recipe.load("sid")
    target = image.image_for(r, archive)
    target.directory.mkdir(parents=True)
    (target.directory / "manifest.json").write_text("{broken")
    said = []
    assert image.ensure(r, said.append) == target
    assert [w.name for w in built] == [f"{target.directory.name}.build-{os.getpid()}"]
    assert target.problem() is None
    assert any("unusable (manifest unreadable" in m and "set aside" in m for m in said)
    aside = list(target.directory.parent.glob(target.directory.name + ".bad-*"))
    assert (aside[0] / "manifest.json").read_text() == "{broken"  # kept for a person to read
    assert image.built_images() == [target]
    image.ensure(r, said.append)
    assert len(built) == 1


def test_random_bytes_inside_the_base_image_are_detected(tmp_path):
    """1 MiB of random bytes written inside base.qcow2 (same size, mtime put back) fails its digest."""
    fake_image(tmp_path)
    img = image.Image(tmp_path)
    assert img.problem() is None
    base = tmp_path / "base.qcow2"
    before = base.stat()
    assert before.st_size > 3 << 20
    with open(base, "r+b") as f:
        f.seek(before.st_size - (2 << 20))
        f.write(os.urandom(1 << 20))
    os.utime(base, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert base.stat().st_size == before.st_size
    assert img.problem() == "base.qcow2 does not match the digest recorded when it was built"


def test_an_image_without_recorded_digests_is_still_usable(tmp_path):
    fake_image(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["digests"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert image.Image(tmp_path).problem() is None


def test_new_archive_versions_mean_a_new_image(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSELAB_CACHE_DIR", str(tmp_path))
    r = recipe.load("sid")
    old, new = {"fuse3": "3.18.3-1"}, {"fuse3": "3.18.4-1"}
    assert image.image_for(r, old) != image.image_for(r, new)
    assert image.image_for(r, old) == image.image_for(r, dict(old))


def test_packages_index_parsing():
    from pytest_fuselab.build.versions import describe_changes, parse_packages
    index = ("Package: fuse3\nVersion: 3.18.3-1\nArchitecture: amd64\n\n"
             "Package: fuse2fs\nVersion: 1.47.4-1\n\nPackage: other\nVersion: 1\n")
    assert parse_packages(index, ["fuse3", "fuse2fs", "absent"]) == {"fuse3": "3.18.3-1", "fuse2fs": "1.47.4-1"}
    assert describe_changes({"fuse3": "1"}, {"fuse3": "2"}) == "fuse3 1 → 2"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
def test_remove_tree_undoes_mounts_a_chroot_left(tmp_path):
    """An interrupted debootstrap leaves /proc mounted in its chroot: cleaning must undo it."""
    proc = tmp_path / "work" / "root" / "proc"
    proc.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "fuselab-test", str(proc)], check=True)
    (proc / "kept").write_text("x")
    image.remove_tree(tmp_path / "work")
    assert not (tmp_path / "work").exists()
    assert str(proc) not in Path("/proc/self/mountinfo").read_text()
