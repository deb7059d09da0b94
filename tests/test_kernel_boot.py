"""Kernels from anywhere, without a guest: trees, modules directories, the modules disk, the
initramfs for a foreign kernel, and refusal before boot when the config lacks something."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from pytest_fuselab.build import initramfs
from pytest_fuselab.build.kernel import boot as kernel
from pytest_fuselab.errors import SettingError
from pytest_fuselab.settings import resolve

from test_kernel_config import GOOD, bzimage

RELEASE = "7.9.0-lab"
MAKEFILE = """modules_install:
\tmkdir -p $(INSTALL_MOD_PATH)/lib/modules/{release}/kernel/fs
\techo 'not a real module' > $(INSTALL_MOD_PATH)/lib/modules/{release}/kernel/fs/lab.ko
\techo kernel/fs/lab.ko > $(INSTALL_MOD_PATH)/lib/modules/{release}/modules.order
\tdepmod -b $(INSTALL_MOD_PATH) {release}
"""


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSELAB_CACHE_DIR", str(tmp_path / "cache"))


def tree(root: Path, config: str = GOOD) -> Path:
    """A kernel build tree as far as the lab looks: Makefile, .config, bzImage, modules.order."""
    (root / "arch/x86/boot").mkdir(parents=True)
    bzimage(root / "arch/x86/boot/bzImage", b"\x7fELF" + bytes(100), RELEASE)
    (root / "Makefile").write_text(MAKEFILE.format(release=RELEASE))
    (root / ".config").write_text(config)
    (root / "modules.order").write_text("fs/lab.ko\n")
    return root


def test_a_tree_is_a_kernel_setting(tmp_path):
    t = tree(tmp_path / "linux")
    assert resolve({"kernel": str(t)}, env={}).kernel == t
    (tmp_path / "plain").mkdir()
    with pytest.raises(SettingError, match="not a kernel build tree"):
        resolve({"kernel": str(tmp_path / "plain")}, env={})


def test_a_tree_gets_its_modules_installed_where_the_lab_says(tmp_path):
    t = tree(tmp_path / "linux")
    seen: list[str] = []
    found = kernel.locate(t, None, seen.append)
    assert found is not None and found.release == RELEASE and found.tree == t
    assert found.modules is not None and found.modules.name == RELEASE
    assert kernel.kernels_dir() in found.modules.parents  # lab-managed, not the user's system
    assert (found.modules / "kernel/fs/lab.ko").read_text() == "not a real module\n"
    assert "kernel/fs/lab.ko:" in (found.modules / "modules.dep").read_text()
    assert any("make modules_install INSTALL_MOD_PATH=" in s for s in seen)
    seen.clear()
    again = kernel.locate(t, None, seen.append)  # unchanged tree: not installed again
    assert again == found and not any("modules_install" in s for s in seen)


def test_a_missing_option_refuses_the_kernel_before_boot(tmp_path):
    t = tree(tmp_path / "linux", GOOD.replace("CONFIG_VIRTIO_CONSOLE=y", "# CONFIG_VIRTIO_CONSOLE is not set"))
    with pytest.raises(SettingError, match=r"CONFIG_VIRTIO_CONSOLE is not set \(the lab's agent"):
        kernel.locate(t, None, lambda _: None)


def test_a_tree_without_bzimage(tmp_path):
    t = tree(tmp_path / "linux")
    (t / "arch/x86/boot/bzImage").unlink()
    with pytest.raises(SettingError, match="has no arch/x86/boot/bzImage: build it first"):
        kernel.locate(t, None, lambda _: None)


def test_modules_directory_layouts_and_depmod(tmp_path):
    for layout in ("lib/modules", "usr/lib/modules", ""):
        root = tmp_path / (layout.replace("/", "_") or "flat")
        moddir = root / layout / RELEASE
        (moddir / "kernel").mkdir(parents=True)
        found = kernel.version_dir(root, RELEASE)
        assert found.name == RELEASE and (found / "modules.dep").exists()
        assert not (moddir / "modules.dep").exists()  # the user's directory is never written
    with pytest.raises(SettingError, match=r"no modules for kernel 1\.2\.3 .*found modules for: 7\.9\.0-lab"):
        kernel.version_dir(tmp_path / "lib_modules", "1.2.3")


def test_modules_disk_is_an_ext4_image_made_once(tmp_path):
    moddir = tmp_path / RELEASE
    (moddir / "kernel/fs").mkdir(parents=True)
    (moddir / "kernel/fs/lab.ko").write_bytes(b"x" * 5000)
    disk = kernel.modules_disk(moddir)
    with open(disk, "rb") as f:
        f.seek(1024 + 0x38)
        assert f.read(2) == b"\x53\xef"  # the ext2/3/4 superblock magic
    listing = subprocess.run(["debugfs", "-R", "ls -p /kernel/fs", str(disk)], capture_output=True, text=True)
    assert "lab.ko" in listing.stdout
    assert kernel.modules_disk(moddir) == disk and oct(disk.stat().st_mode)[-3:] == "444"


def test_initramfs_of_a_kernel_without_modules_has_none(tmp_path):
    image = bzimage(tmp_path / "bzImage", b"\x7fELF", RELEASE)
    k = kernel.Kernel(image, RELEASE, None, None, "unknown")
    initrd = kernel.base_initrd(k, ["virtio_blk", "ext4"])
    names = subprocess.run(["cpio", "-it", "--quiet"], input=gzip.decompress(initrd.read_bytes()),
                           capture_output=True).stdout.decode().split()
    assert "init" in names and "bin/busybox" in names and not [n for n in names if n.endswith(".ko")]


def test_builtin_drivers_are_skipped(tmp_path):
    (tmp_path / "modules.dep").write_text("kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\nkernel/fs/fat/fat.ko:\n")
    (tmp_path / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\n")
    assert initramfs.module_closure(tmp_path, ["virtio_blk", "vfat"]) == ["kernel/fs/fat/fat.ko",
                                                                          "kernel/fs/fat/vfat.ko"]


def test_init_mounts_the_modules_disk_before_switch_root():
    script = initramfs.INIT_SCRIPT
    assert script.index('mount -t ext4 -o ro "$m" /newroot/lib/modules/$v') < script.index("switch_root")
    assert f"fuselab_modules={kernel.MODULES_SERIAL}".split("=")[1] == "fuselab-modules"


def test_fuselab_exec_refuses_the_kernel_with_the_option_name(tmp_path, capsys):
    from pytest_fuselab.cli import main

    t = tree(tmp_path / "linux", GOOD.replace("CONFIG_FUSE_FS=y", "# CONFIG_FUSE_FS is not set"))
    assert main(["exec", "--kernel", str(t), "true"]) == 2
    err = capsys.readouterr().err
    assert "CONFIG_FUSE_FS is not set (every FUSE driver" in err and "lacks what the lab needs" in err
