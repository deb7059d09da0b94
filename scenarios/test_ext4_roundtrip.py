"""ext4 round trip: write with one driver, read back with another, then e2fsck.

On a fresh virtio disk: mkfs.ext4; mount with the writer (kernel ext4, fuse2fs as root, or
fuse2fs as an unprivileged user); write files whose checksums the host knows; unmount;
mount with the reader; verify every byte, the symlink and the xattr; unmount; e2fsck -fn.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.plugin.scenario import fresh_ext4, fsck_clean

MNT = "/mnt/scenario"
PAYLOAD = "/tmp/payload"
PAIRS = [(w, r) for w in DRIVERS for r in DRIVERS if w != r]


def payload(seed: int = 2026) -> dict[str, bytes]:
    """Deterministic file contents: small, odd-sized, block-crossing and a few MiB."""
    rng = random.Random(seed)
    files = {"small.bin": rng.randbytes(1000), "odd.bin": rng.randbytes(4097),
             "big.bin": rng.randbytes(3 * 1024 * 1024 + 123), "empty.bin": b""}
    files.update({f"tree/d{i % 7}/f{i}.txt": f"file {i}\n".encode() * (i + 1) for i in range(60)})
    return files


@pytest.mark.parametrize("writer,reader", PAIRS, ids=[f"{w}-to-{r}" for w, r in PAIRS])
def test_ext4_roundtrip(fuselab_guest, fuselab_disk, writer, reader):
    guest = fuselab_guest
    disk = fuselab_disk("256M")
    fresh_ext4(guest, disk.path)

    files = payload()
    guest.put_tree(PAYLOAD, files)
    guest.run(f"chmod -R a+rX {PAYLOAD}")

    w = DRIVERS[writer]
    w.mount(guest, disk.path, MNT)
    guest.run(w.wrap(f"cp -r {PAYLOAD}/. {MNT}/ && ln -s small.bin {MNT}/link "
                     f"&& setfattr -n user.fuselab -v roundtrip {MNT}/small.bin && sync"))
    w.unmount(guest, MNT)

    r = DRIVERS[reader]
    r.mount(guest, disk.path, MNT)
    sums = guest.run(r.wrap(f"cd {MNT} && find . -type f -print0 | sort -z | xargs -0 sha256sum"))
    seen = {line.split(None, 1)[1][2:]: line.split()[0] for line in sums.stdout.splitlines()}
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    assert seen == expected
    assert guest.run(r.wrap(f"readlink {MNT}/link")).stdout.strip() == "small.bin"
    xattr = guest.run(r.wrap(f"getfattr --only-values -n user.fuselab {MNT}/small.bin")).stdout
    assert xattr == "roundtrip"
    r.unmount(guest, MNT)

    fsck_clean(guest, disk.path)
