"""Kernel configs: parsing, the config IKCONFIG embeds in a bzImage, and the lab's needs."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from pytest_fuselab.build.kernel import config as kconfig
from pytest_fuselab.errors import SettingError

GOOD = "\n".join(f"CONFIG_{need.option}=y" for need in kconfig.NEEDS) + "\nCONFIG_MODULES=y\n"


def bzimage(path: Path, vmlinux: bytes, release: str = "7.9.0-lab", compress=gzip.compress) -> Path:
    """A minimal x86 bzImage: a boot sector with the setup header, a version string, a payload."""
    setup_sects = 3
    start = (setup_sects + 1) * 512
    head = bytearray(start)
    head[0x1F1] = setup_sects
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x20F)  # boot protocol 2.15
    version_at = 0x400
    struct.pack_into("<H", head, 0x20E, version_at - 0x200)
    text = f"{release} (lab@host) #1 SMP".encode() + b"\0"
    head[version_at:version_at + len(text)] = text
    payload = compress(vmlinux)
    struct.pack_into("<II", head, 0x248, 64, len(payload))
    path.write_bytes(bytes(head) + bytes(64) + payload + b"\0" * 16)
    return path


def test_parse_reads_values_and_unset_options():
    config = kconfig.parse('CONFIG_FUSE_FS=m\n# CONFIG_KASAN is not set\nCONFIG_LOCALVERSION="-lab"\n# comment\n')
    assert config == {"FUSE_FS": "m", "KASAN": "n", "LOCALVERSION": "-lab"}
    assert kconfig.value(config, "CONFIG_FUSE_FS") == "m"
    assert kconfig.value(config, "PSI") == "n"


def test_a_complete_config_passes():
    checked = kconfig.require(kconfig.parse(GOOD), True, "test")
    assert checked.fatal == [] and checked.scenario == []


def test_a_missing_option_is_named():
    text = GOOD.replace("CONFIG_VIRTIO_BLK=y", "# CONFIG_VIRTIO_BLK is not set")
    with pytest.raises(SettingError, match=r"CONFIG_VIRTIO_BLK is not set \(the root disk"):
        kconfig.require(kconfig.parse(text), True, "tree/.config")


def test_modules_without_modules_are_missing_and_core_options_must_be_built_in():
    text = GOOD.replace("CONFIG_FUSE_FS=y", "CONFIG_FUSE_FS=m").replace("CONFIG_DEVTMPFS=y", "CONFIG_DEVTMPFS=m")
    checked = kconfig.check(kconfig.parse(text), has_modules=False)
    assert any("CONFIG_FUSE_FS=m but the kernel comes without modules" in f for f in checked.fatal)
    assert any(f.startswith("CONFIG_DEVTMPFS=m (must be y") for f in checked.fatal)
    assert kconfig.check(kconfig.parse(text.replace("CONFIG_DEVTMPFS=m", "CONFIG_DEVTMPFS=y")), True).fatal == []


def test_scenario_options_do_not_refuse_the_boot():
    text = GOOD.replace("CONFIG_DM_FLAKEY=y", "# CONFIG_DM_FLAKEY is not set")
    checked = kconfig.require(kconfig.parse(text), True, "test")
    assert checked.fatal == [] and checked.scenario == ["CONFIG_DM_FLAKEY is not set (test_io_faults.py fails "
                                                        "writes with dm-flakey)"]


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress], ids=["gzip", "xz"])
def test_embedded_config_is_found_in_the_payload(tmp_path, compress):
    config = "CONFIG_FUSE_FS=y\n# CONFIG_KASAN is not set\n"
    vmlinux = b"\x7fELF" + bytes(1000) + b"IKCFG_ST" + gzip.compress(config.encode()) + b"IKCFG_ED" + bytes(50)
    image = bzimage(tmp_path / "bzImage", vmlinux, compress=compress)
    assert kconfig.embedded(image) == config
    assert kconfig.release(image) == "7.9.0-lab"
    found = kconfig.find(image)
    assert found is not None and found[0]["FUSE_FS"] == "y" and "IKCONFIG" in found[1]


def test_without_ikconfig_the_file_beside_the_kernel_serves(tmp_path):
    image = bzimage(tmp_path / "vmlinuz-7.9.0-lab", b"\x7fELF" + bytes(4000))
    assert kconfig.embedded(image) is None
    assert kconfig.find(image) is None
    (tmp_path / "config-7.9.0-lab").write_text("CONFIG_PSI=y\n")
    assert kconfig.find(image) == ({"PSI": "y"}, str(tmp_path / "config-7.9.0-lab"))


def test_a_tree_config_wins(tmp_path):
    image = bzimage(tmp_path / "bzImage", b"\x7fELF")
    (tmp_path / ".config").write_text("CONFIG_EXT4_FS=m\n")
    assert kconfig.find(image, tree=tmp_path) == ({"EXT4_FS": "m"}, str(tmp_path / ".config"))


def test_not_a_bzimage(tmp_path):
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF" + bytes(5000))
    with pytest.raises(ValueError, match="not an x86 bzImage"):
        kconfig.release(tmp_path / "vmlinux")
