"""Recomputing the checksums of ext4 structures, as mke2fs and the kernel compute them."""

from __future__ import annotations

import struct

from .fields import (EXTENT_HEADER_FIELDS, GD_FIELDS, GOOD_OLD_INODE_SIZE, INODE_FIELDS, JBD2_INCOMPAT_CSUM_V2,
                     JBD2_INCOMPAT_CSUM_V3, JSB_FIELDS, get, put)
from .hashes import crc16, crc32c
from .records import Inode, Superblock


class Checksums:
    """The checksum fixers of a Layout: each returns the structure with its checksum recomputed (unchanged
    without one)."""

    sb: Superblock
    metadata_csum: bool
    csum_seed: int

    def bitmap_size(self, which: str) -> int:
        """Bytes of a group's block ("block") or inode ("inode") bitmap that count."""
        per = self.sb["s_clusters_per_group"] if which == "block" else self.sb["s_inodes_per_group"]
        return per // 8

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
