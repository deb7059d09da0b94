"""Reading and checksumming the on-disk layout of ext4 images the corpus generator just made (trusted, never
a hostile one): field tables, hashes, structures, and a Layout over one image."""

from __future__ import annotations

from .fields import (CASEFOLD_FL, DIRENT_FIELDS, DX_COUNT_FIELDS, DX_INFO_FIELDS, EA_INODE_FL, EXT4_MAGIC, EXTENTS_FL,
                     EXTENT_FIELDS, EXTENT_HEADER_FIELDS, EXTENT_MAGIC, FEATURE_FIELDS, FEATURES, GD_FIELDS,
                     GOOD_OLD_INODE_SIZE, INDEX_FIELDS, INDEX_FL, INLINE_DATA_FL, INODE_FIELDS, JBD2_INCOMPAT_64BIT,
                     JBD2_INCOMPAT_CSUM_V2, JBD2_INCOMPAT_CSUM_V3, JBD2_MAGIC, JOURNAL_INO, JSB_FIELDS, MMP_FIELDS,
                     MMP_MAGIC, MMP_SEQ_CLEAN, ROOT_INO, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, SB_FIELDS,
                     SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, XATTR_ENTRY_FIELDS, XATTR_HEADER_FIELDS, XATTR_MAGIC,
                     FieldTable, get, put)
from .hashes import crc16, crc32c, dx_hash
from .layout import Layout
from .records import DirEntry, DxNode, DxTree, ExtentNode, Group, Inode, Journal, Superblock, XattrEntry, XattrRegion

__all__ = [
    "CASEFOLD_FL", "DIRENT_FIELDS", "DX_COUNT_FIELDS", "DX_INFO_FIELDS", "EA_INODE_FL", "EXT4_MAGIC", "EXTENTS_FL",
    "EXTENT_FIELDS", "EXTENT_HEADER_FIELDS", "EXTENT_MAGIC", "FEATURE_FIELDS", "FEATURES", "GD_FIELDS",
    "GOOD_OLD_INODE_SIZE", "INDEX_FIELDS", "INDEX_FL", "INLINE_DATA_FL", "INODE_FIELDS", "JBD2_INCOMPAT_64BIT",
    "JBD2_INCOMPAT_CSUM_V2", "JBD2_INCOMPAT_CSUM_V3", "JBD2_MAGIC", "JOURNAL_INO", "JSB_FIELDS", "MMP_FIELDS",
    "MMP_MAGIC", "MMP_SEQ_CLEAN", "ROOT_INO", "S_IFDIR", "S_IFLNK", "S_IFMT", "S_IFREG", "SB_FIELDS",
    "SUPERBLOCK_OFFSET", "SUPERBLOCK_SIZE", "XATTR_ENTRY_FIELDS", "XATTR_HEADER_FIELDS", "XATTR_MAGIC",
    "FieldTable", "get", "put",
    "crc16", "crc32c", "dx_hash",
    "Layout",
    "DirEntry", "DxNode", "DxTree", "ExtentNode", "Group", "Inode", "Journal", "Superblock", "XattrEntry",
    "XattrRegion",
]
