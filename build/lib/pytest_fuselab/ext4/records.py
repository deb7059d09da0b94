"""ext4 structures as raw bytes with typed accessors, each with the absolute offset it lies at."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .fields import (EXTENTS_FL, FEATURE_FIELDS, FEATURES, GD_FIELDS, GOOD_OLD_INODE_SIZE, INLINE_DATA_FL, INODE_FIELDS,
                     JBD2_INCOMPAT_CSUM_V2, JBD2_INCOMPAT_CSUM_V3, JSB_FIELDS, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG,
                     SB_FIELDS, get)
from .hashes import crc32c


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
    # leaf: (logical, length, start, offset); index: (logical, 0, child, offset)
    items: tuple[tuple[int, int, int, int], ...]


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


def parse_dirents(raw: bytes, base: int, start: int, block: int) -> list[DirEntry]:
    out, at = [], start
    while at + 8 <= len(raw):
        inode, rec_len, name_len, file_type = struct.unpack_from("<IHBB", raw, at)
        if rec_len < 8 or at + rec_len > len(raw):
            break
        if inode:
            out.append(DirEntry(base + at, inode, rec_len, name_len, file_type, raw[at + 8:at + 8 + name_len], block))
        at += rec_len
    return out


def parse_xattrs(raw: bytes, first: int, base: int, value_base: int) -> tuple[tuple[XattrEntry, ...], int]:
    """Entries from `first` up to the 4-byte zero terminator, with absolute offsets (`raw` lies at `base`;
    value offsets count from `value_base`). Returns the entries and the terminator's absolute offset."""
    out, at = [], first
    while at + 16 <= len(raw) and raw[at:at + 4] != bytes(4):
        name_len, index, value_offs, inum, size = struct.unpack_from("<BBHII", raw, at)
        value_at = 0 if inum else value_base + value_offs
        out.append(XattrEntry(base + at, index, raw[at + 16:at + 16 + name_len], value_offs, inum, size, value_at))
        at += (16 + name_len + 3) & ~3
    return tuple(out), base + at
