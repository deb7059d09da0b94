"""partitions.write_disk: a GPT disk file with a copy of an image per partition (unit tests; the
guest's kernel reading it is tests/test_guest.py::test_partitioned_disk_gives_a_copy_per_partition)."""

import struct
import zlib

import pytest

from pytest_fuselab.judge import partitions

IMAGE = b"superblock" + bytes(3 << 20) + b"tail data" + bytes(1000)  # not a multiple of 512 bytes


def header(disk, lba):
    raw = disk[lba * 512:lba * 512 + 92]
    fields = struct.unpack("<8sIIIIQQQQ16sQIII", raw)
    unsummed = raw[:16] + b"\0\0\0\0" + raw[20:]
    assert fields[0] == b"EFI PART" and fields[3] == zlib.crc32(unsummed)
    return fields


def test_each_partition_holds_the_image_and_both_tables_agree(tmp_path):
    path = tmp_path / "disk.raw"
    placed = partitions.write_disk(path, IMAGE, 3)
    disk = path.read_bytes()
    assert disk[510:512] == b"\x55\xaa" and disk[450] == 0xEE  # the protective MBR
    last = len(disk) // 512 - 1
    primary, backup = header(disk, 1), header(disk, last)
    assert (primary[5], primary[6], backup[5], backup[6]) == (1, last, last, 1)
    entries = disk[2 * 512:34 * 512]
    assert disk[backup[10] * 512:(backup[10] + 32) * 512] == entries
    assert primary[13] == backup[13] == zlib.crc32(entries)
    assert len(placed) == 3
    for i, (offset, size) in enumerate(placed):
        first, end = struct.unpack_from("<QQ", entries, i * 128 + 32)
        assert (first * 512, (end - first + 1) * 512) == (offset, size)
        assert offset % (1 << 20) == 0 and size == -(-len(IMAGE) // 512) * 512
        assert primary[7] <= first and end <= primary[8]
        assert disk[offset:offset + len(IMAGE)] == IMAGE
        assert disk[offset + len(IMAGE):offset + size] == bytes(size - len(IMAGE))
    assert entries[3 * 128:] == bytes(len(entries) - 3 * 128)  # no fourth partition


def test_same_image_same_disk_and_holes_stay_holes(tmp_path):
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    partitions.write_disk(a, IMAGE, 4)
    partitions.write_disk(b, IMAGE, 4)
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_blocks * 512 < a.stat().st_size / 2  # the zeros were never written


@pytest.mark.parametrize(("image", "copies"), [(b"", 2), (IMAGE, 0), (IMAGE, 129)])
def test_refuses_what_no_table_can_hold(tmp_path, image, copies):
    with pytest.raises(ValueError):
        partitions.write_disk(tmp_path / "disk.raw", image, copies)


def test_a_sparse_image_makes_the_same_disk_as_its_bytes(tmp_path):
    """A SparseImage (the readers' form: extents, holes never held) gives byte-identical disks."""
    from pytest_fuselab.reproducers.sparse import SparseImage

    sparse = SparseImage(5 << 20, ((4096, b"\x53\xef" * 8), ((3 << 20) + 7, b"tail")))
    partitions.write_disk(tmp_path / "a.raw", sparse, 3)
    partitions.write_disk(tmp_path / "b.raw", sparse.tobytes(), 3)
    assert (tmp_path / "a.raw").read_bytes() == (tmp_path / "b.raw").read_bytes()
