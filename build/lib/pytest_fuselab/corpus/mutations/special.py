"""Mutations of the special inodes and blocks: quota files, the orphan list and the MMP block."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pytest_fuselab import ext4
from ..manifest import Entry
from .primitives import Ctx, current, hostile, inode_get, inode_set, pick, sb_set, set_field

_QUOTA_HEADER = {"dqh_magic": 0, "dqh_version": 4, "dqi_bgrace": 8, "dqi_blocks": 20, "dqi_free_blk": 24,
                 "dqi_free_entry": 28}


def m_quota(ctx: Ctx) -> Entry:
    layout, rng, bs = ctx.layout, ctx.rng, ctx.bs
    field = rng.choice(("s_usr_quota_inum", "s_grp_quota_inum"))
    number = layout.sb[field]
    op = rng.choice(("inum", "inode", "header", "header", "tree"))
    if op == "inum":
        values = (0, 2, 5, 8, 11, ctx.facts["small"], 0xFFFFFFFF)
        return sb_set(ctx, field, pick(rng, values, number, 4))
    if op == "inode":
        name = rng.choice(("i_size_lo", "i_flags", "i_links_count", "i_mode"))
        old = inode_get(ctx, number, name)
        value = {"i_flags": old ^ ext4.EXTENTS_FL, "i_mode": 0x41ED, "i_links_count": 0}.get(
            name, pick(rng, (0, 1, 0xFFFFFFFF), old, 4))
        return inode_set(ctx, number, name, value, field[2:5] + " quota")
    blocks = layout.file_blocks(layout.inode(number))
    if op == "tree" and len(blocks) > 1:
        block = blocks[1][1]
        refs = struct.unpack(f"<{bs // 4}I", layout.block(block))
        slot = next((i for i, ref in enumerate(refs) if ref), 0)
        value = pick(rng, (0, 1, 0xFFFFFFFF, len(blocks) + 5), refs[slot], 4)
        return set_field(ctx, f"quota tree block {block}", block * bs, bs, block * bs + 4 * slot, 4, value, None,
                         f"ref[{slot}]")
    block = blocks[0][1]
    name = rng.choice(list(_QUOTA_HEADER))
    at = block * bs + _QUOTA_HEADER[name]
    value = hostile(rng, current(ctx, at, 4), 4)
    return set_field(ctx, f"quota file header block {block}", block * bs, bs, at, 4, value, None, name)


def m_orphan(ctx: Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    count = layout.sb["s_inodes_count"]
    targets = [(r, ctx.facts[r]) for r in ("small", "medium", "dir", "root", "lost+found", "unused", "large", "sparse")]
    targets += [("journal", 8), ("resize", 7), ("bad blocks", 1), ("beyond s_inodes_count", count + 1),
                ("max", 0xFFFFFFFF)]
    role, number = rng.choice(targets)
    record = sb_set(ctx, "s_last_orphan", number)
    chain = rng.choice(("none", "self_loop", "bogus_next", "root_next", "unlinked")) if number <= count else "none"
    if chain == "unlinked":
        inode_set(ctx, number, "i_links_count", 0, role)
    elif chain != "none":
        inode_set(ctx, number, "i_dtime", {"self_loop": number, "bogus_next": 0xFFFFFFFF, "root_next": 2}[chain], role)
    record["detail"] = {"target": role, "chain": chain}
    return record


def m_mmp(ctx: Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    at = layout.mmp_offset()
    assert at is not None
    values: Sequence[int]
    name = rng.choice(("mmp_magic", "mmp_seq", "mmp_seq", "mmp_check_interval", "mmp_nodename", "s_mmp_block",
                       "s_mmp_update_interval"))
    if name.startswith("s_"):
        values = ((0, 1, layout.sb.blocks_count + 1, layout.groups[0].inode_table, 0xFFFFFFFFFFFFFFFF)
                  if name == "s_mmp_block" else (0, 1, 300, 0xFFFF))
        return sb_set(ctx, name, pick(rng, values, layout.sb[name], ext4.SB_FIELDS[name][1]))
    fix = layout.fix_mmp if layout.metadata_csum else None
    off, width = ext4.MMP_FIELDS[name]
    if name == "mmp_nodename":
        return set_field(ctx, "MMP block", at, 1024, at + off, width, b"\xff" * width, fix, name)
    values = {"mmp_magic": (0, ext4.MMP_MAGIC + 1), "mmp_seq": (0xE24D4D50, 0xE24D4D4F, 0xE24D4D51, 1, 0x12345678),
              "mmp_check_interval": (0, 1, 300, 0xFFFF)}[name]
    value = pick(rng, values, current(ctx, at + off, width), width)
    return set_field(ctx, "MMP block", at, 1024, at + off, width, value, fix, name)
