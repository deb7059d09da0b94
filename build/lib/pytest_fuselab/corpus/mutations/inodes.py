"""Mutations of inodes: their fields, block maps and symlink targets."""

from __future__ import annotations

import struct

from pytest_fuselab import ext4
from ..manifest import Entry
from ..tools import FAKE_TIME
from .primitives import Ctx, first_block, hostile, inode_fix, inode_get, inode_set, pick, pick_role, set_field

_INODE_ROLES = ("root", "lost+found", "dir", "sub", "small", "medium", "sparse", "large", "empty", "null", "fifo",
                "many", "unused")
_SPECIAL_INODES = {"bad blocks": 1, "resize": 7, "journal": 8}
_FLAG_BITS = (ext4.EXTENTS_FL, ext4.INDEX_FL, ext4.INLINE_DATA_FL, ext4.EA_INODE_FL, 0x40000, 0x10, 0x20, 0x800,
              0x100000, ext4.CASEFOLD_FL, 0x2000000, 0x80000000, 0x4000, 0x20000, 0x20000000)
_MODES = (0x81A4, 0x41ED, 0xA1FF, 0xC1A4, 0x11A4, 0x21A4, 0x61A4, 0, 0xF1FF, 0x89ED)


def _inode_value(ctx: Ctx, name: str, old: int, width: int) -> int:
    layout, rng = ctx.layout, ctx.rng
    if name == "i_mode":
        return pick(rng, _MODES, old, width)
    if name == "i_flags":
        return old ^ rng.choice(_FLAG_BITS)
    extra = {
        "i_links_count": (0, 1, 2, 0xFFFF), "i_size_lo": (layout.block_size - 1, 60, 61, 0xFFFFFFFF),
        "i_size_high": (1, 0x7FFFFFFF, 0xFFFFFFFF), "i_extra_isize": (1, 3, 4, 28, 0x80, 0xFFFF),
        "i_dtime": (FAKE_TIME, 1), "i_file_acl_lo": (1, layout.groups[0].inode_table, layout.sb.blocks_count + 1),
    }.get(name, ())
    return hostile(rng, old, width, extra)


def m_inode(ctx: Ctx) -> Entry:
    rng, layout = ctx.rng, ctx.layout
    if rng.random() < 0.2:
        specials = [(n, i) for n, i in _SPECIAL_INODES.items() if layout.inode(i).mode or i == 1]
        role, number = rng.choice(specials)
    else:
        role, number = pick_role(ctx, _INODE_ROLES)
    names = ["i_mode", "i_size_lo", "i_size_high", "i_links_count", "i_flags", "i_file_acl_lo", "i_blocks_lo",
             "i_dtime", "i_generation"] + (["i_extra_isize"] if layout.sb.inode_size > 128 else [])
    name = rng.choice(names)
    old = inode_get(ctx, number, name)
    return inode_set(ctx, number, name, _inode_value(ctx, name, old, ext4.INODE_FIELDS[name][1]), role)


def m_i_block(ctx: Ctx) -> Entry:
    layout, rng, bs = ctx.layout, ctx.rng, ctx.bs
    role, number = pick_role(ctx, ("large", "large", "medium", "dir", "root", "small"),
                             lambda inode: not inode.flags & (ext4.EXTENTS_FL | ext4.INLINE_DATA_FL))
    inode = layout.inode(number)
    pointers = struct.unpack("<15I", inode.i_block)
    targets = (0, 1, layout.groups[0].inode_table, layout.sb.blocks_count + 7, 0xFFFFFFFF, first_block(ctx, 2))
    ops = ["direct", "tind_garbage"] + (["ind_self", "dind_to_ind", "indirect_slot"] if pointers[12] else [])
    op = rng.choice(ops)
    label, isize, fix = f"inode {number} ({role})", layout.sb.inode_size, inode_fix(ctx, number)
    if op in ("direct", "tind_garbage", "dind_to_ind"):
        slot = rng.randrange(12) if op == "direct" else (14 if op == "tind_garbage" else 13)
        value = {"direct": rng.choice(targets), "dind_to_ind": pointers[12],
                 "tind_garbage": rng.randrange(layout.sb["s_first_data_block"] + 1, layout.sb.blocks_count)}[op]
        record = set_field(ctx, label, inode.offset, isize, inode.offset + 0x28 + 4 * slot, 4, value, fix,
                           f"i_block[{slot}]")
    else:
        ind = pointers[12]
        slot = 0 if op == "ind_self" else rng.randrange(bs // 4)
        value = ind if op == "ind_self" else rng.choice(targets)
        record = set_field(ctx, f"indirect block {ind} of inode {number}", ind * bs, bs, ind * bs + 4 * slot, 4, value,
                           None, f"slot[{slot}]")
    record["detail"] = {"operation": op}
    return record


def m_symlink(ctx: Ctx) -> Entry:
    layout, rng, bs = ctx.layout, ctx.rng, ctx.bs
    role, number = rng.choice([("fast", ctx.facts["fast"]), ("slow", ctx.facts["slow"])])
    inode = layout.inode(number)
    has_block = bool(layout.file_blocks(inode))
    op = rng.choice(("size", "size", "flags", "target", "blocks"))
    if op == "size":
        values = (0, 59, 60, 61, 200, 4096, 0xFFFFFFFF) if role == "fast" else (0, 59, 60, bs, bs + 1, 0xFFFFFFFF)
        return inode_set(ctx, number, "i_size_lo", pick(rng, values, inode.size & 0xFFFFFFFF, 4), role)
    if op == "flags":
        bit = rng.choice((ext4.EXTENTS_FL, ext4.INLINE_DATA_FL, ext4.EA_INODE_FL))
        return inode_set(ctx, number, "i_flags", inode.flags ^ bit, role)
    if op == "blocks":
        return inode_set(ctx, number, "i_blocks_lo", 0 if inode["i_blocks_lo"] else 8, role)
    text = (b"../" * ((inode.size + 40) // 3 + 1))
    if has_block:
        block = layout.file_blocks(inode)[0][1]
        size = min(len(text), bs)
        return set_field(ctx, f"symlink block {block} of inode {number} ({role})", block * bs, bs, block * bs, size,
                         text[:size], None, "target")
    return inode_set(ctx, number, "i_block", text[:60], role)
