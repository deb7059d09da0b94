"""The filesystem type an image's magic numbers say, and which types are one family."""

from __future__ import annotations


def _le(data: bytes, offset: int, size: int) -> int:
    if len(data) < offset + size:
        return -1
    return int.from_bytes(data[offset:offset + size], "little")


# (fstype, offset, magic bytes) checked in order; ext2/3/4 and FAT are told apart by detect_fstype.
_SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("xfs", 0, b"XFSB"), ("btrfs", 0x10040, b"_BHRfS_M"), ("f2fs", 1024, b"\x10\x20\xf5\xf2"),
    ("erofs", 1024, b"\xe2\xe1\xf5\xe0"), ("squashfs", 0, b"hsqs"), ("iso9660", 0x8001, b"CD001"),
    ("jfs", 0x8000, b"JFS1"), ("romfs", 0, b"-rom1fs-"), ("cramfs", 0, b"\x45\x3d\xcd\x28"),
    ("bfs", 0, b"\xce\xfa\xad\x1b"), ("exfat", 3, b"EXFAT   "), ("ntfs", 3, b"NTFS    "),
    ("hfsplus", 1024, b"H+"), ("hfsplus", 1024, b"HX"), ("nilfs2", 1030, b"\x34\x34"),
    ("reiserfs", 0x10034, b"ReIsEr"), ("gfs2", 0x10000, b"\x01\x16\x19\x70"),
)
_EXT3_INCOMPAT = 0x2 | 0x4 | 0x10  # filetype, recover, meta_bg
_EXT3_RO_COMPAT = 0x1 | 0x2 | 0x4  # sparse_super, large_file, btree_dir


def detect_fstype(image: bytes) -> str:
    """The filesystem type an image's magic numbers say ("ext4", "vfat", "xfs", ...), or ""."""
    if _le(image, 1024 + 0x38, 2) == 0xEF53:
        incompat, ro_compat = _le(image, 1024 + 0x60, 4), _le(image, 1024 + 0x64, 4)
        if incompat & ~_EXT3_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT:
            return "ext4"
        return "ext3" if _le(image, 1024 + 0x5C, 4) & 0x4 else "ext2"
    for fstype, offset, magic in _SIGNATURES:
        if image[offset:offset + len(magic)] == magic:
            return fstype
    if image[54:59] in (b"FAT12", b"FAT16") or image[82:87] == b"FAT32" or _fat_geometry(image):
        return "vfat"
    return ""


def _fat_geometry(image: bytes) -> bool:
    """A FAT boot sector without a type string (Atari and old images): its geometry fields are sane."""
    sector, per_cluster, reserved = _le(image, 11, 2), _le(image, 13, 1), _le(image, 14, 2)
    fats, media = _le(image, 16, 1), _le(image, 21, 1)
    return (sector in (512, 1024, 2048, 4096) and per_cluster > 0 and per_cluster & (per_cluster - 1) == 0
            and reserved >= 1 and fats in (1, 2) and (media == 0xF0 or media >= 0xF8))


def family(fstype: str) -> str:
    if fstype in ("ext2", "ext3", "ext4"):
        return "ext"
    if fstype in ("vfat", "msdos"):
        return "fat"
    return {"ntfs3": "ntfs", "gfs2meta": "gfs2"}.get(fstype, fstype)

