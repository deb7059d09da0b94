"""Mutations of extended attributes (in the inode, in a block, in an EA inode) and of inline data."""

from __future__ import annotations

from pytest_fuselab import ext4
from pytest_fuselab.errors import ImageError
from ..manifest import Entry
from .primitives import Ctx, Fixer, current, hostile, inode_fix, inode_get, inode_set, pick, pick_role, set_field

_XATTR_VALUES: dict[str, tuple[int, ...]] = {
    "h_magic": (0, ext4.XATTR_MAGIC + 1, 0xEA010000), "h_refcount": (0, 2, 1024, 0xFFFFFFFF),
    "h_blocks": (0, 2, 0xFFFF), "h_hash": (0xDEADBEEF,), "e_name_len": (0, 255), "e_name_index": (0, 7, 9, 0xFF),
    "e_value_inum": (1, 2, 11, 0xFFFFFFFF),
    "e_hash": (0xDEADBEEF,),
}


def _xattr_entry_values(ctx: Ctx, region: ext4.XattrRegion, entry: ext4.XattrEntry, name: str) -> tuple[int, ...]:
    bs = ctx.bs
    if name == "e_value_offs":
        others = [e.value_offs for e in region.entries if e.value_offs != entry.value_offs]
        return (0, 2, 8, bs - 2, bs + 8, 0xFFFF, *others[:1])
    if name == "e_value_size":
        return (0, bs, 2 * bs, 0xFFFF, 0xFFFFFFFF, 65537, entry.value_size + 1)
    if name == "e_name_len":
        return (0, 255, len(entry.name) + 40)
    return _XATTR_VALUES[name]


def _xattr_region(ctx: Ctx, region: ext4.XattrRegion, at: int, size: int, fix: Fixer | None, label: str) -> Entry:
    rng = ctx.rng
    ops = ["entry", "entry", "header" if region.block is not None else "magic"]
    if region.end + 4 <= at + size:
        ops.append("terminator")
    op = rng.choice(ops)
    if op == "terminator":
        junk = rng.choice((b"\xff" * 4, b"\x10\x01\x00\x00"))
        return set_field(ctx, label, at, size, region.end, 4, junk, fix, "terminator")
    if op == "magic":
        return set_field(ctx, label, at, size, region.offset, 4, rng.choice((0, ext4.XATTR_MAGIC ^ 1)), fix, "h_magic")
    if op == "header":
        name = rng.choice(("h_magic", "h_refcount", "h_blocks", "h_hash"))
        off, width = ext4.XATTR_HEADER_FIELDS[name]
        field_at, values = region.offset + off, _XATTR_VALUES[name]
    else:
        entry = rng.choice(region.entries)
        name = rng.choice(list(ext4.XATTR_ENTRY_FIELDS))
        off, width = ext4.XATTR_ENTRY_FIELDS[name]
        field_at, values = entry.offset + off, _xattr_entry_values(ctx, region, entry, name)
        name = f"{name} of {entry.name.decode(errors='replace')!r}"
    value = pick(rng, values, current(ctx, field_at, width), width)
    return set_field(ctx, label, at, size, field_at, width, value, fix, name)


def m_xattr(ctx: Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    options = ["block", "block"]
    if layout.ibody_xattrs(layout.inode(ctx.facts["small"])):
        options.append("ibody")
    if "ea" in ctx.facts:
        options += ["ea_inode", "ea_inode"]
    target = rng.choice(options)
    if target == "ea_inode":
        name = rng.choice(("i_flags", "i_size_lo", "i_links_count", "i_atime", "i_ctime"))
        old = inode_get(ctx, ctx.facts["ea"], name)
        value = old & ~ext4.EA_INODE_FL if name == "i_flags" else hostile(rng, old, ext4.INODE_FIELDS[name][1])
        return inode_set(ctx, ctx.facts["ea"], name, value, "EA inode of dir/sub/large.bin")
    if target == "ibody":
        inode = layout.inode(ctx.facts["small"])
        region = layout.ibody_xattrs(inode)
        assert region is not None
        return _xattr_region(ctx, region, inode.offset, layout.sb.inode_size, inode_fix(ctx, inode.number),
                             f"in-inode xattrs of inode {inode.number}")
    inode = layout.inode(ctx.facts["medium"])
    block = layout.xattr_block(inode)
    if block is None or block.block is None:
        raise ImageError(f"dir/medium.bin of {ctx.profile.name} should have an xattr block: a corpus generator bug")
    number = block.block
    fix = (lambda raw: layout.fix_xattr_block(number, raw)) if layout.metadata_csum else None
    return _xattr_region(ctx, block, block.offset, ctx.bs, fix, f"xattr block {number}")


def m_inline_data(ctx: Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    role, number = pick_role(ctx, ("small", "tiny", "dir", "slow", "sub"),
                             lambda i: bool(i.flags & ext4.INLINE_DATA_FL))
    inode = layout.inode(number)
    region = layout.ibody_xattrs(inode)
    data = [e for e in (region.entries if region else ()) if e.name_index == 7 and e.name == b"data"]
    ops = ["size", "clear_flag", "set_flag"] + (["system_data"] if data else [])
    ops += ["dir_parent", "dir_rec_len"] if inode.is_type(ext4.S_IFDIR) else []
    op = rng.choice(ops)
    if op == "size":
        return inode_set(ctx, number, "i_size_lo", pick(rng, (0, 61, 200, 0xFFFF, 0xFFFFFFFF), inode.size, 4), role)
    if op == "clear_flag":
        return inode_set(ctx, number, "i_flags", inode.flags & ~ext4.INLINE_DATA_FL, role)
    if op == "set_flag":
        medium = ctx.facts["medium"]
        return inode_set(ctx, medium, "i_flags", inode_get(ctx, medium, "i_flags") | ext4.INLINE_DATA_FL, "medium")
    fix, isize = inode_fix(ctx, number), layout.sb.inode_size
    if op == "system_data":
        name = rng.choice(("e_value_size", "e_value_offs"))
        off, width = ext4.XATTR_ENTRY_FIELDS[name]
        values = (0xFFFF, 200, 0xFFFFFFFF, 4096) if name == "e_value_size" else (0, 2, 0xFFFF)
        value = pick(rng, values, current(ctx, data[0].offset + off, width), width)
        return set_field(ctx, f"inode {number} ({role})", inode.offset, isize, data[0].offset + off, width, value, fix,
                         f"system.data {name}")
    if op == "dir_parent":
        value = pick(rng, (0, 0xFFFFFFFF, number, 8), current(ctx, inode.offset + 0x28, 4), 4)
        return set_field(ctx, f"inode {number} ({role})", inode.offset, isize, inode.offset + 0x28, 4, value, fix,
                         "inline dir parent")
    value = pick(rng, (0, 4, 57, 0xFFFF), current(ctx, inode.offset + 0x28 + 8, 2), 2)
    return set_field(ctx, f"inode {number} ({role})", inode.offset, isize, inode.offset + 0x28 + 8, 2, value, fix,
                     "inline dir first rec_len")
