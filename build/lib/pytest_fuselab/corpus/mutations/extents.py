"""Mutations of extent trees: headers, entries, overlaps, cross links and index loops."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pytest_fuselab import ext4
from ..manifest import Entry
from .primitives import (Ctx, Fixer, checksum_mode, current, first_block, inode_fix, pick, pick_role, set_field,
                         write_struct)


def _node_struct(ctx: Ctx, inode: ext4.Inode, node: ext4.ExtentNode) -> tuple[str, int, int, Fixer | None]:
    layout = ctx.layout
    if node.block is None:
        return f"extent root in inode {inode.number}", inode.offset, layout.sb.inode_size, inode_fix(ctx, inode.number)
    fix = (lambda raw: layout.fix_extent_block(inode, raw)) if layout.metadata_csum else None
    return f"extent block {node.block} of inode {inode.number}", node.block * ctx.bs, ctx.bs, fix


def _extent_header(ctx: Ctx, inode: ext4.Inode, node: ext4.ExtentNode) -> Entry:
    name = ctx.rng.choice(("eh_magic", "eh_entries", "eh_max", "eh_depth"))
    values = {"eh_magic": (0, 0xF30B), "eh_entries": (0, node.max + 1, 0xFFFF),
              "eh_max": (0, max(node.entries - 1, 0), node.max + 10, 0xFFFF),
              "eh_depth": (node.depth + 1, 0, 5, 6, 0xFFFF)}[name]
    off, width = ext4.EXTENT_HEADER_FIELDS[name]
    label, at, size, fix = _node_struct(ctx, inode, node)
    value = pick(ctx.rng, values, current(ctx, node.offset + off, width), width)
    return set_field(ctx, label, at, size, node.offset + off, width, value, fix, name)


def _extent_entry(ctx: Ctx, inode: ext4.Inode, node: ext4.ExtentNode, op: str) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    item = rng.choice(node.items) if op != "overlap" else node.items[1]
    other = ctx.facts["root"] if inode.number != ctx.facts["root"] else ctx.facts["dir"]
    metadata = (0, 1, layout.groups[0].inode_table, layout.groups[0].block_bitmap, first_block(ctx, other))
    values: Sequence[int]
    if node.depth:
        name, values = "ei_leaf_lo", (*metadata, layout.sb.blocks_count + 3, 0xFFFFFFFF)
    elif op == "overlap":
        first = node.items[0][0]
        name, values = "ee_block", (first, first + 1, 0xFFFFFFFF)
    elif op == "cross_link":
        name, values = "ee_start_lo", metadata
    else:
        name = rng.choice(("ee_len", "ee_start_lo", "ee_start_hi", "ee_block"))
        values = {"ee_len": (0, 32768, 32769, 0xFFFF, item[1] * 1000), "ee_start_hi": (1, 0xFFFF),
                  "ee_start_lo": (*metadata, layout.sb.blocks_count + 3, 0xFFFFFFFF),
                  "ee_block": (0xFFFFFFFF, 0x7FFFFFFF, item[0] + 1)}[name]
    table = ext4.INDEX_FIELDS if node.depth else ext4.EXTENT_FIELDS
    off, width = table[name]
    label, at, size, fix = _node_struct(ctx, inode, node)
    value = pick(rng, values, current(ctx, item[3] + off, width), width)
    record = set_field(ctx, label, at, size, item[3] + off, width, value, fix, name)
    record["detail"] = {"operation": op}
    return record


def _extent_loop(ctx: Ctx, inode: ext4.Inode, root: ext4.ExtentNode) -> Entry:
    """Deepen the root by one and turn its first child into an index node that points at itself."""
    layout = ctx.layout
    child = root.items[0][2]
    fix = (lambda raw: layout.fix_extent_block(inode, raw)) if layout.metadata_csum else None
    mode = checksum_mode(ctx, fix is not None)
    record = set_field(ctx, f"extent root in inode {inode.number}", inode.offset, layout.sb.inode_size,
                       root.offset + 6, 2, root.depth + 1, inode_fix(ctx, inode.number), "eh_depth", mode=mode)

    def edit(raw: bytearray) -> None:
        limit = struct.unpack_from("<H", raw, 4)[0]
        struct.pack_into("<HHHH", raw, 0, ext4.EXTENT_MAGIC, 1, limit, root.depth)
        struct.pack_into("<IIHH", raw, 12, root.items[0][0], child & 0xFFFFFFFF, child >> 32, 0)

    write_struct(ctx, child * ctx.bs, ctx.bs, edit, fix, mode)
    record.update(field="index loop", detail={"operation": "loop", "block": child})
    return record


def m_extent(ctx: Ctx) -> Entry:
    rng = ctx.rng
    _, number = pick_role(ctx, ("sparse", "sparse", "medium", "root", "many", "large", "dir", "sub"),
                          lambda inode: bool(inode.flags & ext4.EXTENTS_FL))
    inode = ctx.layout.inode(number)
    nodes = ctx.layout.extent_nodes(inode)
    leaves = [n for n in nodes if n.depth == 0 and n.items]
    ops = ["header", "header", "entry", "cross_link"] + (["overlap"] if any(len(n.items) > 1 for n in leaves) else [])
    ops += ["index", "loop"] if nodes[0].depth else []
    op = rng.choice(ops)
    if op == "header":
        return _extent_header(ctx, inode, rng.choice(nodes))
    if op == "loop":
        return _extent_loop(ctx, inode, nodes[0])
    if op == "index":
        return _extent_entry(ctx, inode, rng.choice([n for n in nodes if n.depth]), op)
    pool = [n for n in leaves if len(n.items) > 1] if op == "overlap" else leaves
    return _extent_entry(ctx, inode, rng.choice(pool), op)
