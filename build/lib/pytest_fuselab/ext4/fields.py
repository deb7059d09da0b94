"""ext4 on-disk constants and field tables (name: offset, size), and reading and writing one field."""

from __future__ import annotations

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

