"""Mutations of the superblock, its feature flags, the group descriptors and the bitmaps."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pytest_fuselab import ext4
from ..manifest import Entry
from .primitives import Ctx, checksum_mode, current, gd_fix, hostile, sb_set, set_field

_SB_VALUES: dict[str, tuple[int, ...]] = {
    "s_inodes_count": (), "s_blocks_count_lo": (), "s_r_blocks_count_lo": (), "s_free_blocks_count_lo": (),
    "s_free_inodes_count": (), "s_first_data_block": (0, 1, 2), "s_log_block_size": (0, 1, 2, 3, 6, 7, 31),
    "s_log_cluster_size": (0, 2, 4, 6, 31), "s_blocks_per_group": (8, 1024, 65536), "s_clusters_per_group": (8, 65536),
    "s_inodes_per_group": (8, 4095, 65536), "s_rev_level": (0, 2), "s_state": (0, 2, 4), "s_errors": (0, 3),
    "s_first_ino": (0, 1, 2, 5, 8), "s_inode_size": (0, 64, 127, 129, 512, 1024, 2048),
    "s_desc_size": (0, 16, 33, 63, 128, 1024), "s_reserved_gdt_blocks": (), "s_journal_inum": (0, 2, 11),
    "s_journal_dev": (0x0801,), "s_def_hash_version": (3, 6), "s_log_groups_per_flex": (0, 31, 64),
    "s_min_extra_isize": (3, 200), "s_want_extra_isize": (3, 200), "s_checksum_type": (0, 2),
    "s_overhead_clusters": (), "s_first_meta_bg": (), "s_raid_stride": (), "s_raid_stripe_width": (),
    "s_lpf_ino": (2, 8), "s_blocks_count_hi": (1,), "s_flags": (), "s_first_error_ino": (2,), "s_mount_opts": (),
}
_MOUNT_OPTS = (b"errors=panic", b"journal_path=/dev/vda", b"A" * 64, b"data=journal,dax,nodelalloc", b"usrjquota=\xff")


def m_superblock(ctx: Ctx) -> Entry:
    name = ctx.rng.choice(list(_SB_VALUES))
    if name == "s_mount_opts":
        return sb_set(ctx, name, ctx.rng.choice(_MOUNT_OPTS))
    off, width = ext4.SB_FIELDS[name]
    old = current(ctx, ext4.SUPERBLOCK_OFFSET + off, width)
    return sb_set(ctx, name, hostile(ctx.rng, old, width, _SB_VALUES[name]))


def m_features(ctx: Ctx) -> Entry:
    rng = ctx.rng
    group = rng.choice(("compat", "incompat", "ro_compat"))
    known = [(name, bit) for name, (where, bit) in ext4.FEATURES.items() if where == group]
    if rng.random() < 0.8:
        name, bit = rng.choice(known)
    else:
        bit = 1 << rng.randrange(20, 32)
        name = f"unknown {group} bit {bit:#x}"
    field = ext4.FEATURE_FIELDS[group]
    old = current(ctx, ext4.SUPERBLOCK_OFFSET + ext4.SB_FIELDS[field][0], 4)
    record = sb_set(ctx, field, old ^ bit)
    record["detail"] = {"feature": name, "action": "clear" if old & bit else "set"}
    return record


def m_group_desc(ctx: Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    group = layout.groups[0 if rng.random() < 0.6 else rng.randrange(len(layout.groups))]
    names = [n for n, (off, width) in ext4.GD_FIELDS.items()
             if off + width <= len(group.raw) and "csum" not in n and n != "bg_checksum"]
    name = rng.choice(names)
    off, width = ext4.GD_FIELDS[name]
    sb = layout.sb
    blocks = (0, 1, sb["s_first_data_block"], layout.gdt_offset // layout.block_size, layout.groups[-1].inode_table,
              sb.blocks_count - 1, sb.blocks_count + 10, group.block_bitmap, group.inode_table, group.inode_bitmap)
    extra: Sequence[int] = ()
    if name.endswith("bitmap_lo") or name == "bg_inode_table_lo":
        extra = blocks
    elif name == "bg_flags":
        extra = (1, 2, 4, 3, 7)
    elif name.startswith("bg_itable_unused"):
        extra = (sb["s_inodes_per_group"], sb["s_inodes_per_group"] + 1)
    value = hostile(rng, current(ctx, group.offset + off, width), width, extra)
    return set_field(ctx, f"group descriptor {group.number}", group.offset, len(group.raw), group.offset + off, width,
                     value, gd_fix(ctx, group.number), name)


def _edit_bitmap(raw: bytearray, action: str, rng: random.Random) -> None:
    bits = len(raw) * 8
    if action == "set_all":
        raw[:] = b"\xff" * len(raw)
    elif action == "clear_all":
        raw[:] = bytes(len(raw))
    elif action == "clear_used":
        used = [i for i in range(bits) if raw[i // 8] >> (i % 8) & 1]
        for i in rng.sample(used, min(len(used), rng.randint(1, 64))):
            raw[i // 8] &= ~(1 << (i % 8)) & 0xFF
    else:
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(bits)
            raw[i // 8] ^= 1 << (i % 8)


def m_bitmap(ctx: Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    which = rng.choice(("block", "inode"))
    groups = [g for g in layout.groups if not g.flags & (2 if which == "block" else 1)]
    group = groups[0] if rng.random() < 0.6 else rng.choice(groups)
    block = group.block_bitmap if which == "block" else group.inode_bitmap
    at, size = block * layout.block_size, layout.bitmap_size(which)
    raw = bytearray(ctx.img.read(at, size))
    before = sum(bin(b).count("1") for b in raw)
    action = rng.choice(("clear_used", "set_all", "clear_all", "flip_bits"))
    _edit_bitmap(raw, action, rng)
    mode = checksum_mode(ctx, layout.metadata_csum)
    ctx.img.put(at, bytes(raw))
    if mode == "recomputed":
        desc = layout.fix_bitmap(which, ctx.img.read(group.offset, len(group.raw)), bytes(raw))
        ctx.img.put(group.offset, layout.fix_group_desc(group.number, desc))
    return {"structure": f"{which} bitmap of group {group.number}", "field": action, "offset": at, "old": before,
            "new": sum(bin(b).count("1") for b in raw), "checksum": mode}
