"""A foreign kernel in a real guest: Debian's prebuilt cloud kernel, given as a bzImage with its
modules directory, boots the image unchanged; its modules come from the read-only modules disk."""

from __future__ import annotations

import gzip
import subprocess

import pytest

from pytest_fuselab.build.kernel import debian as debkernel
from pytest_fuselab.build.kernel import boot as kernel
from pytest_fuselab.lab import Lab
from pytest_fuselab.settings import resolve

pytestmark = pytest.mark.guest

SERIES = (r"7\.2\.\d+\+deb13-cloud-amd64", "trixie-backports")  # VIRTIO_BLK=m: the initramfs must load it


def test_a_foreign_kernel_boots_with_its_own_modules(tmp_path):
    deb = debkernel.fetch(debkernel.newest(SERIES[1], SERIES[0]), SERIES[1])
    lab = Lab(resolve({"kernel": str(deb.bzimage), "modules": str(deb.root)}, env={}), tmp_path)
    assert lab.foreign is not None and lab.foreign.config_source == str(deb.config)
    base = kernel.base_initrd(lab.foreign, lab.recipe.initramfs_modules)
    names = subprocess.run(["cpio", "-it", "--quiet"], input=gzip.decompress(base.read_bytes()),
                           capture_output=True).stdout.decode().split()
    assert "modules/virtio_blk.ko" in names  # modular in this kernel: its own module, in the initramfs
    assert "modules/ext4.ko" not in names  # built in: skipped (modules.builtin)
    with lab.cold_guest() as guest:
        assert guest.run("uname -r").stdout.strip() == deb.release
        mount = guest.run(f"findmnt -n -o SOURCE,FSTYPE,OPTIONS /lib/modules/{deb.release}").stdout.split()
        serial = guest.run(f"cat /sys/block/{mount[0].rsplit('/', 1)[1]}/serial").stdout.strip()
        assert (serial, mount[1], mount[2].split(",")[0]) == (kernel.MODULES_SERIAL, "ext4", "ro")
        guest.run("modprobe dm-flakey && modprobe vfat")
        loaded = guest.run("lsmod").stdout
        assert all(m in loaded for m in ("dm_flakey", "vfat", "virtio_blk")), loaded
        assert guest.run("systemctl is-system-running --wait", check=False, timeout=120).stdout.strip() \
            in ("running", "degraded")
        assert not guest.splats()
