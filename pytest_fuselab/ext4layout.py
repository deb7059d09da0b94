"""Read the on-disk layout of an ext4 image the corpus generator just made (trusted, never a hostile one)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .errors import ImageError

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
EXT4_MAGIC = 0xEF53
EXTENT_MAGIC = 0xF30A
XATTR_MAGIC = 0xEA020000
JBD2_MAGIC = 0xC03B3998
MMP_MAGIC = 0x004D4D50
MMP_SEQ_CLEAN = 0xFF4D4D50
ROOT_INO = 2
JOURNAL_INO = 8
GOOD_OLD_INODE_SIZE = 128

S_IFMT, S_IFDIR, S_IFREG, S_IFLNK = 0xF000, 0x4000, 0x8000, 0xA000
INDEX_FL = 0x1000
EXTENTS_FL = 0x80000
EA_INODE_FL = 0x200000
INLINE_DATA_FL = 0x10000000
CASEFOLD_FL = 0x40000000

FieldTable = dict[str, tuple[int, int]]

# name: (offset, size); integers are little-endian except in the journal superblock.
SB_FIELDS: FieldTable = {
    "s_inodes_count": (0x0, 4), "s_blocks_count_lo": (0x4, 4), "s_r_blocks_count_lo": (0x8, 4),
    "s_free_blocks_count_lo": (0xC, 4), "s_free_inodes_count": (0x10, 4), "s_first_data_block": (0x14, 4),
    "s_log_block_size": (0x18, 4), "s_log_cluster_size": (0x1C, 4), "s_blocks_per_group": (0x20, 4),
    "s_clusters_per_group": (0x24, 4), "s_inodes_per_group": (0x28, 4), "s_mtime": (0x2C, 4),
    "s_wtime": (0x30, 4), "s_mnt_count": (0x34, 2), "s_max_mnt_count": (0x36, 2), "s_magic": (0x38, 2),
    "s_state": (0x3A, 2), "s_errors": (0x3C, 2), "s_minor_rev_level": (0x3E, 2), "s_lastcheck": (0x40, 4),
    "s_checkinterval": (0x44, 4), "s_creator_os": (0x48, 4), "s_rev_level": (0x4C, 4),
    "s_def_resuid": (0x50, 2), "s_def_resgid": (0x52, 2), "s_first_ino": (0x54, 4), "s_inode_size": (0x58, 2),
    "s_block_group_nr": (0x5A, 2), "s_feature_compat": (0x5C, 4), "s_feature_incompat": (0x60, 4),
    "s_feature_ro_compat": (0x64, 4), "s_uuid": (0x68, 16), "s_volume_name": (0x78, 16),
    "s_last_mounted": (0x88, 64), "s_reserved_gdt_blocks": (0xCE, 2), "s_journal_uuid": (0xD0, 16),
    "s_journal_inum": (0xE0, 4), "s_journal_dev": (0xE4, 4), "s_last_orphan": (0xE8, 4),
    "s_hash_seed": (0xEC, 16), "s_def_hash_version": (0xFC, 1), "s_jnl_backup_type": (0xFD, 1),
    "s_desc_size": (0xFE, 2), "s_default_mount_opts": (0x100, 4), "s_first_meta_bg": (0x104, 4),
    "s_mkfs_time": (0x108, 4), "s_jnl_blocks": (0x10C, 68), "s_blocks_count_hi": (0x150, 4),
    "s_r_blocks_count_hi": (0x154, 4), "s_free_blocks_count_hi": (0x158, 4), "s_min_extra_isize": (0x15C, 2),
    "s_want_extra_isize": (0x15E, 2), "s_flags": (0x160, 4), "s_raid_stride": (0x164, 2),
    "s_mmp_update_interval": (0x166, 2), "s_mmp_block": (0x168, 8), "s_raid_stripe_width": (0x170, 4),
    "s_log_groups_per_flex": (0x174, 1), "s_checksum_type": (0x175, 1), "s_kbytes_written": (0x178, 8),
    "s_error_count": (0x194, 4), "s_first_error_time": (0x198, 4), "s_first_error_ino": (0x19C, 4),
    "s_first_error_func": (0x1A8, 32), "s_mount_opts": (0x200, 64), "s_usr_quota_inum": (0x240, 4),
    "s_grp_quota_inum": (0x244, 4), "s_overhead_clusters": (0x248, 4), "s_backup_bgs": (0x24C, 8),
    "s_lpf_ino": (0x268, 4), "s_prj_quota_inum": (0x26C, 4), "s_checksum_seed": (0x270, 4),
    "s_encoding": (0x27C, 2), "s_encoding_flags": (0x27E, 2), "s_orphan_file_inum": (0x280, 4),
    "s_checksum": (0x3FC, 4),
}
GD_FIELDS: FieldTable = {
    "bg_block_bitmap_lo": (0x0, 4), "bg_inode_bitmap_lo": (0x4, 4), "bg_inode_table_lo": (0x8, 4),
    "bg_free_blocks_count_lo": (0xC, 2), "bg_free_inodes_count_lo": (0xE, 2), "bg_used_dirs_count_lo": (0x10, 2),
    "bg_flags": (0x12, 2), "bg_exclude_bitmap_lo": (0x14, 4), "bg_block_bitmap_csum_lo": (0x18, 2),
    "bg_inode_bitmap_csum_lo": (0x1A, 2), "bg_itable_unused_lo": (0x1C, 2), "bg_checksum": (0x1E, 2),
    "bg_block_bitmap_hi": (0x20, 4), "bg_inode_bitmap_hi": (0x24, 4), "bg_inode_table_hi": (0x28, 4),
    "bg_free_blocks_count_hi": (0x2C, 2), "bg_free_inodes_count_hi": (0x2E, 2), "bg_used_dirs_count_hi": (0x30, 2),
    "bg_itable_unused_hi": (0x32, 2), "bg_exclude_bitmap_hi": (0x34, 4), "bg_block_bitmap_csum_hi": (0x38, 2),
    "bg_inode_bitmap_csum_hi": (0x3A, 2),
}
INODE_FIELDS: FieldTable = {
    "i_mode": (0x0, 2), "i_uid": (0x2, 2), "i_size_lo": (0x4, 4), "i_atime": (0x8, 4), "i_ctime": (0xC, 4),
    "i_mtime": (0x10, 4), "i_dtime": (0x14, 4), "i_gid": (0x18, 2), "i_links_count": (0x1A, 2),
    "i_blocks_lo": (0x1C, 4), "i_flags": (0x20, 4), "i_version": (0x24, 4), "i_block": (0x28, 60),
    "i_generation": (0x64, 4), "i_file_acl_lo": (0x68, 4), "i_size_high": (0x6C, 4),
    "i_blocks_high": (0x74, 2), "i_file_acl_high": (0x76, 2), "i_uid_high": (0x78, 2), "i_gid_high": (0x7A, 2),
    "i_checksum_lo": (0x7C, 2), "i_extra_isize": (0x80, 2), "i_checksum_hi": (0x82, 2),
    "i_crtime": (0x90, 4), "i_version_hi": (0x98, 4), "i_projid": (0x9C, 4),
}
EXTENT_HEADER_FIELDS: FieldTable = {
    "eh_magic": (0x0, 2), "eh_entries": (0x2, 2), "eh_max": (0x4, 2), "eh_depth": (0x6, 2), "eh_generation": (0x8, 4),
}
EXTENT_FIELDS: FieldTable = {"ee_block": (0x0, 4), "ee_len": (0x4, 2), "ee_start_hi": (0x6, 2), "ee_start_lo": (0x8, 4)}
INDEX_FIELDS: FieldTable = {"ei_block": (0x0, 4), "ei_leaf_lo": (0x4, 4), "ei_leaf_hi": (0x8, 2), "ei_unused": (0xA, 2)}
DIRENT_FIELDS: FieldTable = {"inode": (0x0, 4), "rec_len": (0x4, 2), "name_len": (0x6, 1), "file_type": (0x7, 1)}
DX_INFO_FIELDS: FieldTable = {"reserved_zero": (0x0, 4), "hash_version": (0x4, 1), "info_length": (0x5, 1),
                              "indirect_levels": (0x6, 1), "unused_flags": (0x7, 1)}
DX_COUNT_FIELDS: FieldTable = {"limit": (0x0, 2), "count": (0x2, 2), "block": (0x4, 4)}
XATTR_HEADER_FIELDS: FieldTable = {"h_magic": (0x0, 4), "h_refcount": (0x4, 4), "h_blocks": (0x8, 4),
                                   "h_hash": (0xC, 4), "h_checksum": (0x10, 4)}
XATTR_ENTRY_FIELDS: FieldTable = {"e_name_len": (0x0, 1), "e_name_index": (0x1, 1), "e_value_offs": (0x2, 2),
                                  "e_value_inum": (0x4, 4), "e_value_size": (0x8, 4), "e_hash": (0xC, 4)}
JSB_FIELDS: FieldTable = {  # big-endian
    "h_magic": (0x0, 4), "h_blocktype": (0x4, 4), "h_sequence": (0x8, 4), "s_blocksize": (0xC, 4),
    "s_maxlen": (0x10, 4), "s_first": (0x14, 4), "s_sequence": (0x18, 4), "s_start": (0x1C, 4),
    "s_errno": (0x20, 4), "s_feature_compat": (0x24, 4), "s_feature_incompat": (0x28, 4),
    "s_feature_ro_compat": (0x2C, 4), "s_uuid": (0x30, 16), "s_nr_users": (0x40, 4), "s_dynsuper": (0x44, 4),
    "s_max_transaction": (0x48, 4), "s_max_trans_data": (0x4C, 4), "s_checksum_type": (0x50, 1),
    "s_num_fc_blks": (0x54, 4), "s_head": (0x58, 4), "s_checksum": (0xFC, 4),
}
MMP_FIELDS: FieldTable = {
    "mmp_magic": (0x0, 4), "mmp_seq": (0x4, 4), "mmp_time": (0x8, 8), "mmp_nodename": (0x10, 64),
    "mmp_bdevname": (0x50, 32), "mmp_check_interval": (0x70, 2), "mmp_checksum": (0x3FC, 4),
}

FEATURES: dict[str, tuple[str, int]] = {
    "dir_prealloc": ("compat", 0x1), "imagic_inodes": ("compat", 0x2), "has_journal": ("compat", 0x4),
    "ext_attr": ("compat", 0x8), "resize_inode": ("compat", 0x10), "dir_index": ("compat", 0x20),
    "lazy_bg": ("compat", 0x40), "exclude_bitmap": ("compat", 0x100), "sparse_super2": ("compat", 0x200),
    "fast_commit": ("compat", 0x400), "stable_inodes": ("compat", 0x800), "orphan_file": ("compat", 0x1000),
    "compression": ("incompat", 0x1), "filetype": ("incompat", 0x2), "needs_recovery": ("incompat", 0x4),
    "journal_dev": ("incompat", 0x8), "meta_bg": ("incompat", 0x10), "extent": ("incompat", 0x40),
    "64bit": ("incompat", 0x80), "mmp": ("incompat", 0x100), "flex_bg": ("incompat", 0x200),
    "ea_inode": ("incompat", 0x400), "dirdata": ("incompat", 0x1000), "metadata_csum_seed": ("incompat", 0x2000),
    "large_dir": ("incompat", 0x4000), "inline_data": ("incompat", 0x8000), "encrypt": ("incompat", 0x10000),
    "casefold": ("incompat", 0x20000),
    "sparse_super": ("ro_compat", 0x1), "large_file": ("ro_compat", 0x2), "btree_dir": ("ro_compat", 0x4),
    "huge_file": ("ro_compat", 0x8), "uninit_bg": ("ro_compat", 0x10), "dir_nlink": ("ro_compat", 0x20),
    "extra_isize": ("ro_compat", 0x40), "snapshot": ("ro_compat", 0x80), "quota": ("ro_compat", 0x100),
    "bigalloc": ("ro_compat", 0x200), "metadata_csum": ("ro_compat", 0x400), "replica": ("ro_compat", 0x800),
    "read-only": ("ro_compat", 0x1000), "project": ("ro_compat", 0x2000), "shared_blocks": ("ro_compat", 0x4000),
    "verity": ("ro_compat", 0x8000), "orphan_present": ("ro_compat", 0x10000),
}
FEATURE_FIELDS = {"compat": "s_feature_compat", "incompat": "s_feature_incompat", "ro_compat": "s_feature_ro_compat"}
JBD2_INCOMPAT_64BIT = 0x2
JBD2_INCOMPAT_CSUM_V2 = 0x8
JBD2_INCOMPAT_CSUM_V3 = 0x10


def get(raw: bytes, table: FieldTable, name: str, big: bool = False) -> int:
    """The unsigned integer field `name` of the structure `raw`."""
    offset, size = table[name]
    return int.from_bytes(raw[offset:offset + size], "big" if big else "little")


def put(raw: bytearray, table: FieldTable, name: str, value: int, big: bool = False) -> None:
    """Store `value` (truncated to the field's width) in the field `name` of `raw`."""
    offset, size = table[name]
    raw[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "big" if big else "little")


def _crc_table(poly: int) -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc_table(0x82F63B78)
_CRC16_TABLE = _crc_table(0xA001)


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC32C (Castagnoli) as ext4 and jbd2 use it: seeded register, no final inversion."""
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC16 (ANSI, reflected) as ext4's uninit_bg group descriptor checksum uses it."""
    table = _CRC16_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _str2hashbuf(msg: bytes, num: int, signed: bool) -> list[int]:
    length = len(msg)
    pad = (length | (length << 8)) & 0xFFFFFFFF
    pad = (pad | (pad << 16)) & 0xFFFFFFFF
    val, out = pad, []
    for i, byte in enumerate(msg[:num * 4]):
        char = byte - 256 if signed and byte > 127 else byte
        val = (char + (val << 8)) & 0xFFFFFFFF
        if i % 4 == 3:
            out.append(val)
            val = pad
    if len(out) < num:
        out.append(val)
    out.extend([pad] * (num - len(out)))
    return out


def _rol(x: int, s: int) -> int:
    return ((x << s) | (x >> (32 - s))) & 0xFFFFFFFF


def _md4_f(x: int, y: int, z: int) -> int:
    return z ^ (x & (y ^ z))


def _md4_g(x: int, y: int, z: int) -> int:
    return (x & y) + ((x ^ y) & z)


def _md4_h(x: int, y: int, z: int) -> int:
    return x ^ y ^ z


_MD4_ROUNDS = (
    (_md4_f, 0, (0, 1, 2, 3, 4, 5, 6, 7), (3, 7, 11, 19)),
    (_md4_g, 0x5A827999, (1, 3, 5, 7, 0, 2, 4, 6), (3, 5, 9, 13)),
    (_md4_h, 0x6ED9EBA1, (3, 7, 2, 6, 1, 5, 0, 4), (3, 9, 11, 15)),
)


def _half_md4(buf: list[int], words: list[int]) -> None:
    a, b, c, d = buf
    for func, const, order, shifts in _MD4_ROUNDS:
        for step, index in enumerate(order):
            a = _rol((a + func(b, c, d) + words[index] + const) & 0xFFFFFFFF, shifts[step % 4])
            a, b, c, d = d, a, b, c
    buf[:] = [(x + y) & 0xFFFFFFFF for x, y in zip(buf, (a, b, c, d), strict=True)]


def _tea(buf: list[int], words: list[int]) -> None:
    total, b0, b1 = 0, buf[0], buf[1]
    a, b, c, d = words
    for _ in range(16):
        total = (total + 0x9E3779B9) & 0xFFFFFFFF
        b0 = (b0 + ((((b1 << 4) + a) ^ (b1 + total) ^ ((b1 >> 5) + b)) & 0xFFFFFFFF)) & 0xFFFFFFFF
        b1 = (b1 + ((((b0 << 4) + c) ^ (b0 + total) ^ ((b0 >> 5) + d)) & 0xFFFFFFFF)) & 0xFFFFFFFF
    buf[0] = (buf[0] + b0) & 0xFFFFFFFF
    buf[1] = (buf[1] + b1) & 0xFFFFFFFF


def _legacy_hash(name: bytes, signed: bool) -> int:
    hash0, hash1 = 0x12A3FE2D, 0x37ABE8F9
    for byte in name:
        char = byte - 256 if signed and byte > 127 else byte
        value = (hash1 + (hash0 ^ ((char * 7152373) & 0xFFFFFFFF))) & 0xFFFFFFFF
        if value & 0x80000000:
            value = (value - 0x7FFFFFFF) & 0xFFFFFFFF
        hash1, hash0 = hash0, value
    return (hash0 << 1) & 0xFFFFFFFF


def dx_hash(name: bytes, version: int, seed: tuple[int, ...] = (0, 0, 0, 0)) -> tuple[int, int]:
    """The htree (major, minor) hash of `name`: version 0/3 legacy, 1/4 half_md4, 2/5 tea (3-5 unsigned)."""
    signed = version < 3
    buf = list(seed) if any(seed) else [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    if version in (0, 3):
        major, minor = _legacy_hash(name, signed), 0
    elif version in (1, 4):
        for start in range(0, len(name), 32):
            _half_md4(buf, _str2hashbuf(name[start:], 8, signed))
        major, minor = buf[1], buf[2]
    elif version in (2, 5):
        for start in range(0, len(name), 16):
            _tea(buf, _str2hashbuf(name[start:], 4, signed))
        major, minor = buf[0], buf[1]
    else:
        raise ImageError(f"htree hash version {version} is not one the corpus generator builds: use 0-5")
    major &= ~1
    if major == 0x7FFFFFFF << 1:
        major = 0x7FFFFFFE << 1
    return major, minor


@dataclass(frozen=True)
class Superblock:
    """The primary superblock, as raw bytes with typed accessors."""

    raw: bytes

    def __getitem__(self, name: str) -> int:
        return get(self.raw, SB_FIELDS, name)

    def has(self, feature: str) -> bool:
        group, bit = FEATURES[feature]
        return bool(self[FEATURE_FIELDS[group]] & bit)

    @property
    def features(self) -> list[str]:
        return sorted(name for name in FEATURES if self.has(name))

    @property
    def block_size(self) -> int:
        return 1024 << self["s_log_block_size"]

    @property
    def cluster_size(self) -> int:
        return 1024 << self["s_log_cluster_size"]

    @property
    def blocks_count(self) -> int:
        high = self["s_blocks_count_hi"] if self.has("64bit") else 0
        return self["s_blocks_count_lo"] | (high << 32)

    @property
    def inode_size(self) -> int:
        return self["s_inode_size"] if self["s_rev_level"] >= 1 else GOOD_OLD_INODE_SIZE

    @property
    def desc_size(self) -> int:
        return self["s_desc_size"] if self.has("64bit") else 32

    @property
    def group_count(self) -> int:
        per = self["s_blocks_per_group"]
        return (self.blocks_count - self["s_first_data_block"] + per - 1) // per

    @property
    def uuid(self) -> bytes:
        return self.raw[0x68:0x78]

    @property
    def hash_seed(self) -> tuple[int, ...]:
        return struct.unpack("<4I", self.raw[0xEC:0xFC])

    @property
    def csum_seed(self) -> int:
        if self.has("metadata_csum_seed"):
            return self["s_checksum_seed"]
        return crc32c(self.uuid)


@dataclass(frozen=True)
class Group:
    """One group descriptor and where it lies in the image."""

    number: int
    offset: int
    raw: bytes

    def _wide(self, name: str) -> int:
        high = get(self.raw, GD_FIELDS, name + "_hi") if len(self.raw) >= 64 else 0
        return get(self.raw, GD_FIELDS, name + "_lo") | (high << 32)

    @property
    def block_bitmap(self) -> int:
        return self._wide("bg_block_bitmap")

    @property
    def inode_bitmap(self) -> int:
        return self._wide("bg_inode_bitmap")

    @property
    def inode_table(self) -> int:
        return self._wide("bg_inode_table")

    @property
    def flags(self) -> int:
        return get(self.raw, GD_FIELDS, "bg_flags")


@dataclass(frozen=True)
class Inode:
    """One inode record and where it lies in the image."""

    number: int
    offset: int
    raw: bytes

    def __getitem__(self, name: str) -> int:
        return get(self.raw, INODE_FIELDS, name)

    @property
    def mode(self) -> int:
        return self["i_mode"]

    @property
    def size(self) -> int:
        return self["i_size_lo"] | (self["i_size_high"] << 32)

    @property
    def flags(self) -> int:
        return self["i_flags"]

    @property
    def generation(self) -> int:
        return self["i_generation"]

    @property
    def file_acl(self) -> int:
        return self["i_file_acl_lo"] | (self["i_file_acl_high"] << 32)

    @property
    def extra_isize(self) -> int:
        return self["i_extra_isize"] if len(self.raw) > GOOD_OLD_INODE_SIZE else 0

    @property
    def i_block(self) -> bytes:
        return self.raw[0x28:0x64]

    def is_type(self, kind: int) -> bool:
        return self.mode & S_IFMT == kind

    @property
    def has_blocks(self) -> bool:
        """Whether i_block maps data blocks (not a fast symlink, a device number, or inline data)."""
        if self.flags & INLINE_DATA_FL or not any(self.is_type(k) for k in (S_IFREG, S_IFDIR, S_IFLNK)):
            return False
        return not (self.is_type(S_IFLNK) and not self.flags & EXTENTS_FL and self.size < 60)


@dataclass(frozen=True)
class ExtentNode:
    """One node of an extent tree: the root in i_block (block None) or a tree block."""

    offset: int
    block: int | None
    depth: int
    entries: int
    max: int
    items: tuple[tuple[int, int, int, int], ...]  # leaf: (logical, length, start, offset); index: (logical, 0, child, offset)


@dataclass(frozen=True)
class DirEntry:
    """One directory entry with its absolute offset; block is -1 for entries inside an inode."""

    offset: int
    inode: int
    rec_len: int
    name_len: int
    file_type: int
    name: bytes
    block: int


@dataclass(frozen=True)
class DxNode:
    """An htree index block (the root or an interior node)."""

    block: int
    logical: int
    count_offset: int
    limit: int
    count: int
    entries: tuple[tuple[int, int, int], ...]  # (hash, logical child, absolute offset of the entry)


@dataclass(frozen=True)
class DxTree:
    """The htree of a directory: the root's info fields and all index nodes (the root first)."""

    info_offset: int
    hash_version: int
    indirect_levels: int
    nodes: tuple[DxNode, ...]


@dataclass(frozen=True)
class XattrEntry:
    """One extended attribute entry; value_at is the absolute offset of its value (in-block values)."""

    offset: int
    name_index: int
    name: bytes
    value_offs: int
    value_inum: int
    value_size: int
    value_at: int


@dataclass(frozen=True)
class XattrRegion:
    """An xattr block (block set) or the in-inode xattr area (block None) and its entries."""

    offset: int
    block: int | None
    entries: tuple[XattrEntry, ...]
    end: int


@dataclass(frozen=True)
class Journal:
    """The internal journal: its superblock (big-endian) and the physical block of each journal block."""

    sb_offset: int
    raw: bytes
    blocks: tuple[int, ...]

    def __getitem__(self, name: str) -> int:
        return get(self.raw, JSB_FIELDS, name, big=True)

    @property
    def csum_v2v3(self) -> bool:
        return bool(self["s_feature_incompat"] & (JBD2_INCOMPAT_CSUM_V2 | JBD2_INCOMPAT_CSUM_V3))


class Layout:
    """The layout of one ext4 image made by us: offsets of its structures, and their checksums."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self.sb = Superblock(self.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE))
            if self.sb["s_magic"] != EXT4_MAGIC or self.sb.has("meta_bg"):
                raise ImageError(f"{self.path} is not an ext4 image the corpus generator made (magic "
                                 f"{self.sb['s_magic']:#x}): only read fresh, uncorrupted corpus base images")
            self.block_size = self.sb.block_size
            self.metadata_csum = self.sb.has("metadata_csum")
            self.csum_seed = self.sb.csum_seed
            self.groups = self._read_groups()
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> Layout:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        return data + bytes(size - len(data))

    def block(self, number: int) -> bytes:
        return self.read(number * self.block_size, self.block_size)

    def _read_groups(self) -> tuple[Group, ...]:
        size = self.sb.desc_size
        start = (self.sb["s_first_data_block"] + 1) * self.block_size
        table = self.read(start, size * self.sb.group_count)
        return tuple(Group(g, start + g * size, table[g * size:(g + 1) * size]) for g in range(self.sb.group_count))

    @property
    def gdt_offset(self) -> int:
        return self.groups[0].offset

    def bitmap_size(self, which: str) -> int:
        """Bytes of a group's block ("block") or inode ("inode") bitmap that count."""
        per = self.sb["s_clusters_per_group"] if which == "block" else self.sb["s_inodes_per_group"]
        return per // 8

    def inode_offset(self, number: int) -> int:
        per = self.sb["s_inodes_per_group"]
        group = self.groups[(number - 1) // per]
        return group.inode_table * self.block_size + ((number - 1) % per) * self.sb.inode_size

    def inode(self, number: int) -> Inode:
        offset = self.inode_offset(number)
        return Inode(number, offset, self.read(offset, self.sb.inode_size))

    def extent_nodes(self, inode: Inode) -> list[ExtentNode]:
        """Every node of the inode's extent tree, the root first (depth-first)."""
        nodes: list[ExtentNode] = []
        self._walk_extents(inode.i_block, inode.offset + 0x28, None, nodes)
        return nodes

    def _walk_extents(self, raw: bytes, offset: int, block: int | None, out: list[ExtentNode]) -> None:
        magic, entries, limit, depth = struct.unpack_from("<4H", raw)
        if magic != EXTENT_MAGIC or len(out) > 10000:
            return
        items = []
        for i in range(min(entries, limit)):
            at = 12 + 12 * i
            if depth:
                logical, leaf_lo, leaf_hi = struct.unpack_from("<IIH", raw, at)
                items.append((logical, 0, leaf_lo | (leaf_hi << 32), offset + at))
            else:
                logical, length, hi, lo = struct.unpack_from("<IHHI", raw, at)
                items.append((logical, length if length <= 32768 else length - 32768, lo | (hi << 32), offset + at))
        out.append(ExtentNode(offset, block, depth, entries, limit, tuple(items)))
        if depth:
            for _, _, child, _ in items:
                self._walk_extents(self.block(child), child * self.block_size, child, out)

    def file_blocks(self, inode: Inode) -> list[tuple[int, int]]:
        """(logical, physical) pairs of the inode's data blocks, in logical order."""
        if not inode.has_blocks:
            return []
        pairs: list[tuple[int, int]] = []
        if inode.flags & EXTENTS_FL:
            for node in self.extent_nodes(inode):
                if node.depth == 0:
                    pairs += [(lg + i, start + i) for lg, length, start, _ in node.items for i in range(length)]
        else:
            pairs = [(lg, phys) for lg, phys, level in self.block_map(inode) if level == 0]
        return sorted(pairs)

    def block_map(self, inode: Inode) -> list[tuple[int, int, int]]:
        """(logical, physical, level) of a block-mapped inode: level 0 data, 1-3 the indirect blocks."""
        per = self.block_size // 4
        pointers = struct.unpack("<15I", inode.i_block)
        out = [(i, p, 0) for i, p in enumerate(pointers[:12]) if p]
        first = 12
        for level, pointer in enumerate(pointers[12:], start=1):
            if pointer:
                self._indirect(pointer, level, first, out)
            first += per ** level
        return out

    def _indirect(self, block: int, level: int, first: int, out: list[tuple[int, int, int]]) -> None:
        out.append((first, block, level))
        per = self.block_size // 4
        span = per ** (level - 1)
        for i, pointer in enumerate(struct.unpack(f"<{per}I", self.block(block))):
            if pointer and level == 1:
                out.append((first + i, pointer, 0))
            elif pointer:
                self._indirect(pointer, level - 1, first + i * span, out)

    def dir_entries(self, inode: Inode) -> list[DirEntry]:
        """Every live entry (inode != 0) of a directory, block or inline."""
        if inode.flags & INLINE_DATA_FL:
            return self._inline_entries(inode)
        out: list[DirEntry] = []
        for _, physical in self.file_blocks(inode):
            out += _parse_dirents(self.block(physical), physical * self.block_size, 0, physical)
        return out

    def _inline_entries(self, inode: Inode) -> list[DirEntry]:
        out = _parse_dirents(inode.i_block[4:], inode.offset + 0x28 + 4, 0, -1)
        ibody = self.ibody_xattrs(inode)
        for entry in ibody.entries if ibody else ():
            if entry.name_index == 7 and entry.name == b"data" and entry.value_size:
                value = self.read(entry.value_at, entry.value_size)
                out += _parse_dirents(value, entry.value_at, 0, -1)
        return out

    def lookup(self, path: str) -> int:
        """The inode number of `path` (relative to the root), walking directory entries."""
        number = ROOT_INO
        for part in [p for p in path.split("/") if p]:
            found = [e.inode for e in self.dir_entries(self.inode(number)) if e.name == part.encode()]
            if not found:
                raise ImageError(f"{path!r} not found in {self.path} (no entry {part!r}): the base image is incomplete")
            number = found[0]
        return number

    def htree(self, inode: Inode) -> DxTree | None:
        """The htree of an indexed directory, or None for a linear one."""
        if not inode.flags & INDEX_FL or inode.flags & INLINE_DATA_FL:
            return None
        blocks = dict(self.file_blocks(inode))
        root = self.block(blocks[0])
        info = blocks[0] * self.block_size + 0x18
        version, info_len, levels = root[0x1C], root[0x1D], root[0x1E]
        nodes = [self._dx_node(root, blocks[0], 0, 0x18 + info_len)]
        frontier = list(nodes)
        for _ in range(levels):
            children = [self._dx_node(self.block(blocks[lg]), blocks[lg], lg, 8)
                        for node in frontier for _, lg, _ in node.entries]
            nodes += children
            frontier = children
        return DxTree(info, version, levels, tuple(nodes))

    def _dx_node(self, raw: bytes, physical: int, logical: int, count_at: int) -> DxNode:
        base = physical * self.block_size
        limit, count, first = struct.unpack_from("<HHI", raw, count_at)
        entries = [(0, first, base + count_at)]
        for i in range(1, count):
            hash_, child = struct.unpack_from("<II", raw, count_at + 8 * i)
            entries.append((hash_, child, base + count_at + 8 * i))
        return DxNode(physical, logical, base + count_at, limit, count, tuple(entries))

    def xattr_block(self, inode: Inode) -> XattrRegion | None:
        """The inode's external xattr block, or None."""
        block = inode.file_acl
        if not block:
            return None
        raw = self.block(block)
        if get(raw, XATTR_HEADER_FIELDS, "h_magic") != XATTR_MAGIC:
            return None
        base = block * self.block_size
        entries, end = _parse_xattrs(raw, 32, base, base)
        return XattrRegion(base, block, entries, end)

    def ibody_xattrs(self, inode: Inode) -> XattrRegion | None:
        """The xattrs stored inside the inode after i_extra_isize, or None."""
        start = GOOD_OLD_INODE_SIZE + inode.extra_isize
        if inode.extra_isize == 0 or start + 4 > len(inode.raw):
            return None
        if int.from_bytes(inode.raw[start:start + 4], "little") != XATTR_MAGIC:
            return None
        entries, end = _parse_xattrs(inode.raw, start + 4, inode.offset, inode.offset + start + 4)
        return XattrRegion(inode.offset + start, None, entries, end)

    def journal(self) -> Journal | None:
        """The internal journal (inode s_journal_inum), or None."""
        if not self.sb.has("has_journal") or not self.sb["s_journal_inum"]:
            return None
        blocks = tuple(p for _, p in self.file_blocks(self.inode(self.sb["s_journal_inum"])))
        offset = blocks[0] * self.block_size
        return Journal(offset, self.read(offset, 1024), blocks)

    def mmp_offset(self) -> int | None:
        return self.sb["s_mmp_block"] * self.block_size if self.sb.has("mmp") else None

    def orphan_head(self) -> int:
        return self.sb["s_last_orphan"]

    # Checksums: each fixer returns the structure with its checksum recomputed (unchanged without one).

    def inode_seed(self, number: int, generation: int) -> int:
        return crc32c(generation.to_bytes(4, "little"), crc32c(number.to_bytes(4, "little"), self.csum_seed))

    def fix_superblock(self, raw: bytes) -> bytes:
        if not self.metadata_csum:
            return raw
        return raw[:0x3FC] + crc32c(raw[:0x3FC]).to_bytes(4, "little")

    def fix_group_desc(self, number: int, raw: bytes) -> bytes:
        body = raw[:0x1E] + b"\0\0" + raw[0x20:]
        group = number.to_bytes(4, "little")
        if self.metadata_csum:
            csum = crc32c(body, crc32c(group, self.csum_seed)) & 0xFFFF
        elif self.sb.has("uninit_bg"):
            csum = crc16(raw[0x20:] if self.sb.has("64bit") else b"",
                         crc16(raw[:0x1E], crc16(group, crc16(self.sb.uuid))))
        else:
            return raw
        return raw[:0x1E] + csum.to_bytes(2, "little") + raw[0x20:]

    def fix_bitmap(self, which: str, desc: bytes, bitmap: bytes) -> bytes:
        """The group descriptor `desc` with the checksum of its block or inode bitmap recomputed."""
        if not self.metadata_csum:
            return desc
        csum = crc32c(bitmap[:self.bitmap_size(which)], self.csum_seed)
        raw = bytearray(desc)
        put(raw, GD_FIELDS, f"bg_{which}_bitmap_csum_lo", csum & 0xFFFF)
        if len(raw) >= 64:
            put(raw, GD_FIELDS, f"bg_{which}_bitmap_csum_hi", csum >> 16)
        return bytes(raw)

    def fix_inode(self, number: int, raw: bytes) -> bytes:
        if not self.metadata_csum:
            return raw
        data = bytearray(raw)
        put(data, INODE_FIELDS, "i_checksum_lo", 0)
        extra = get(raw, INODE_FIELDS, "i_extra_isize") if len(raw) > GOOD_OLD_INODE_SIZE else 0
        has_hi = len(raw) > GOOD_OLD_INODE_SIZE and extra >= 4
        if has_hi:
            put(data, INODE_FIELDS, "i_checksum_hi", 0)
        csum = crc32c(bytes(data), self.inode_seed(number, get(raw, INODE_FIELDS, "i_generation")))
        put(data, INODE_FIELDS, "i_checksum_lo", csum & 0xFFFF)
        if has_hi:
            put(data, INODE_FIELDS, "i_checksum_hi", csum >> 16)
        return bytes(data)

    def fix_extent_block(self, inode: Inode, raw: bytes) -> bytes:
        tail = 12 + 12 * get(raw, EXTENT_HEADER_FIELDS, "eh_max")
        if not self.metadata_csum or tail + 4 > len(raw):
            return raw
        csum = crc32c(raw[:tail], self.inode_seed(inode.number, inode.generation))
        return raw[:tail] + csum.to_bytes(4, "little") + raw[tail + 4:]

    def fix_dir_leaf(self, inode: Inode, raw: bytes) -> bytes:
        size = len(raw)
        tail = raw[size - 12:]
        if not self.metadata_csum or tail[:8] != b"\0\0\0\0\x0c\0\0\xde":
            return raw
        csum = crc32c(raw[:size - 12], self.inode_seed(inode.number, inode.generation))
        return raw[:size - 4] + csum.to_bytes(4, "little")

    def fix_dx_block(self, inode: Inode, raw: bytes, count_at: int) -> bytes:
        """An htree index block with its dx_tail checksum recomputed; count_at is relative to the block."""
        limit, count = struct.unpack_from("<HH", raw, count_at)
        tail = count_at + 8 * limit
        if not self.metadata_csum or tail + 8 > len(raw):
            return raw
        used = min(count_at + 8 * count, len(raw))
        seed = self.inode_seed(inode.number, inode.generation)
        csum = crc32c(bytes(4), crc32c(raw[tail:tail + 4], crc32c(raw[:used], seed)))
        return raw[:tail + 4] + csum.to_bytes(4, "little") + raw[tail + 8:]

    def fix_xattr_block(self, block: int, raw: bytes) -> bytes:
        if not self.metadata_csum:
            return raw
        body = raw[:0x10] + bytes(4) + raw[0x14:]
        csum = crc32c(body, crc32c(block.to_bytes(8, "little"), self.csum_seed))
        return raw[:0x10] + csum.to_bytes(4, "little") + raw[0x14:]

    def fix_mmp(self, raw: bytes) -> bytes:
        if not self.metadata_csum:
            return raw
        return raw[:0x3FC] + crc32c(raw[:0x3FC], self.csum_seed).to_bytes(4, "little") + raw[0x400:]

    def fix_journal_sb(self, raw: bytes) -> bytes:
        incompat = get(raw, JSB_FIELDS, "s_feature_incompat", big=True)
        if not incompat & (JBD2_INCOMPAT_CSUM_V2 | JBD2_INCOMPAT_CSUM_V3):
            return raw
        csum = crc32c(raw[:0xFC] + bytes(4) + raw[0x100:1024])
        return raw[:0xFC] + csum.to_bytes(4, "big") + raw[0x100:]


def _parse_dirents(raw: bytes, base: int, start: int, block: int) -> list[DirEntry]:
    out, at = [], start
    while at + 8 <= len(raw):
        inode, rec_len, name_len, file_type = struct.unpack_from("<IHBB", raw, at)
        if rec_len < 8 or at + rec_len > len(raw):
            break
        if inode:
            out.append(DirEntry(base + at, inode, rec_len, name_len, file_type, raw[at + 8:at + 8 + name_len], block))
        at += rec_len
    return out


def _parse_xattrs(raw: bytes, first: int, base: int, value_base: int) -> tuple[tuple[XattrEntry, ...], int]:
    """Entries from `first` up to the 4-byte zero terminator, with absolute offsets (`raw` lies at `base`;
    value offsets count from `value_base`). Returns the entries and the terminator's absolute offset."""
    out, at = [], first
    while at + 16 <= len(raw) and raw[at:at + 4] != bytes(4):
        name_len, index, value_offs, inum, size = struct.unpack_from("<BBHII", raw, at)
        value_at = 0 if inum else value_base + value_offs
        out.append(XattrEntry(base + at, index, raw[at + 16:at + 16 + name_len], value_offs, inum, size, value_at))
        at += (16 + name_len + 3) & ~3
    return tuple(out), base + at
