"""Mutations of directories: entries, hash tree index blocks and case-folding."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_fuselab import ext4
from pytest_fuselab.errors import ImageError
from ..manifest import Entry
from .primitives import Ctx, Fixer, current, inode_get, inode_set, pick, pick_role, sb_set, set_field


def _dir_fix(ctx: Ctx, inode: ext4.Inode, entry: ext4.DirEntry) -> Fixer | None:
    layout = ctx.layout
    if not layout.metadata_csum:
        return None
    tree = layout.htree(inode)
    if tree and entry.block == tree.nodes[0].block:
        return lambda raw: layout.fix_dx_block(inode, raw, 0x20)
    return lambda raw: layout.fix_dir_leaf(inode, raw)


def _dirent_value(ctx: Ctx, number: int, entry: ext4.DirEntry, name: str) -> int:
    sb = ctx.layout.sb
    values = {
        "rec_len": (0, 4, 7, max(8, entry.name_len + 4), entry.rec_len + 4, ctx.bs, ctx.bs + 12, 0xFFFF,
                    entry.rec_len - 1),
        "name_len": (0, 255, entry.rec_len - 7, entry.name_len + 1),
        "inode": (0, 1, 7, 8, number, 2, sb["s_inodes_count"] + 1, 0xFFFFFFFF, ctx.facts["small"], ctx.facts["dir"]),
        "file_type": (0, 1, 2, 7, 8, 0xFF),
    }[name]
    return pick(ctx.rng, values, getattr(entry, name), ext4.DIRENT_FIELDS[name][1])


def m_dirent(ctx: Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    role, number = pick_role(ctx, ("root", "root", "dir", "sub", "deep", "lost+found", "many", "cf"),
                             lambda inode: not inode.flags & ext4.INLINE_DATA_FL)
    inode = layout.inode(number)
    entry = rng.choice([e for e in layout.dir_entries(inode) if e.block >= 0])
    at, fix = entry.block * ctx.bs, _dir_fix(ctx, inode, entry)
    label = f"directory block {entry.block} of inode {number} ({role}), entry {entry.name.decode(errors='replace')!r}"
    name = rng.choice(("rec_len", "rec_len", "name_len", "inode", "inode", "file_type", "name"))
    if name == "name":
        new = rng.choice((b"/", b"\0", b".", b"..", b"\xff")) + entry.name[1:]
        return set_field(ctx, label, at, ctx.bs, entry.offset + 8, max(entry.name_len, 1), new, fix, "name")
    off, width = ext4.DIRENT_FIELDS[name]
    value = _dirent_value(ctx, number, entry, name)
    return set_field(ctx, label, at, ctx.bs, entry.offset + off, width, value, fix, name)


def m_htree(ctx: Ctx) -> Entry:
    layout, rng, bs = ctx.layout, ctx.rng, ctx.bs
    inode = layout.inode(ctx.facts["many"])
    tree = layout.htree(inode)
    if tree is None:
        raise ImageError(f"inode {inode.number} of {ctx.profile.name} should be an htree: a corpus generator bug")
    op = rng.choice(("info", "countlimit", "entry", "entry", "dot"))
    node = tree.nodes[0] if op in ("info", "dot") else rng.choice(tree.nodes)
    at, size = node.block * bs, bs
    fix = (lambda raw: layout.fix_dx_block(inode, raw, node.count_offset - at)) if layout.metadata_csum else None
    blocks = len(layout.file_blocks(inode))
    values: Sequence[int]
    if op == "info":
        name = rng.choice(list(ext4.DX_INFO_FIELDS))
        values = {"hash_version": (0, 2, 3, 5, 6, 0x7F, 0xFF), "info_length": (0, 4, 7, 16, 0xFF),
                  "indirect_levels": (tree.indirect_levels + 1, 2, 3, 4, 0xFF), "unused_flags": (1, 0x80, 0xFF),
                  "reserved_zero": (1, 0xFFFFFFFF)}[name]
        field_at, width = tree.info_offset + ext4.DX_INFO_FIELDS[name][0], ext4.DX_INFO_FIELDS[name][1]
    elif op == "countlimit":
        name = rng.choice(("limit", "count"))
        values = ((0, 1, node.limit + 1, 0xFFFF, node.count - 1) if name == "limit"
                  else (0, node.limit + 1, 0xFFFF, node.count + 1))
        field_at, width = node.count_offset + ext4.DX_COUNT_FIELDS[name][0], 2
    elif op == "dot":
        name = rng.choice(("'.' rec_len", "'..' rec_len"))
        values, width = (0, 12, 16, bs, 0xFFFF), 2
        field_at = at + (4 if name.startswith("'.'") else 16)
    else:
        index = rng.randrange(len(node.entries))
        hash_, child, entry_at = node.entries[index]
        name = "hash" if index and rng.random() < 0.4 else "block"
        others = [c for _, c, _ in node.entries if c != child]
        values = ((0, 0xFFFFFFFF, max(hash_ - 2, 0), hash_ | 1) if name == "hash"
                  else (0, node.logical, blocks + 10, *(others[:1]), 0xFFFFFFFF))
        field_at, width = entry_at + (0 if name == "hash" else 4), 4
        name = f"entry[{index}].{name}"
    value = pick(rng, values, current(ctx, field_at, width), width)
    return set_field(ctx, f"htree {'root' if node.logical == 0 else 'node'} block {node.block} of inode {inode.number}",
                     at, size, field_at, width, value, fix, name)


def m_casefold(ctx: Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    op = rng.choice(("s_encoding", "s_encoding_flags", "clear_dir_flag", "flag_on_root", "flag_on_file", "bad_name"))
    if op in ("s_encoding", "s_encoding_flags"):
        values = (0, 2, 0xFFFF) if op == "s_encoding" else (1, 2, 0xFFFF)
        return sb_set(ctx, op, pick(rng, values, layout.sb[op], 2))
    if op != "bad_name":
        role = {"clear_dir_flag": "cf", "flag_on_root": "root", "flag_on_file": "small"}[op]
        number = ctx.facts[role]
        flags = inode_get(ctx, number, "i_flags")
        value = flags & ~ext4.CASEFOLD_FL if op == "clear_dir_flag" else flags | ext4.CASEFOLD_FL
        return inode_set(ctx, number, "i_flags", value, role)
    inode = layout.inode(ctx.facts["cf"])
    entry = next(e for e in layout.dir_entries(inode) if e.name == b"MixedCase.TXT")
    name = rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80")) + entry.name[3:]
    return set_field(ctx, f"directory block {entry.block} of inode {inode.number} (cf)", entry.block * ctx.bs, ctx.bs,
                     entry.offset + 8, entry.name_len, name, _dir_fix(ctx, inode, entry), "name (invalid UTF-8)")
