"""Turning a linear directory of a fresh base image into a valid hash tree (debugfs only makes linear ones)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_fuselab import ext4
from pytest_fuselab.errors import ImageError


def index_directory(image: Path, number: int) -> None:
    """Rewrite a linear directory, in its own blocks, as a valid hash tree (debugfs only makes linear ones)."""
    with ext4.Layout(image) as layout:
        inode = layout.inode(number)
        blocks = [physical for _, physical in layout.file_blocks(inode)]
        entries = layout.dir_entries(inode)
        parent = next(e.inode for e in entries if e.name == b"..")
        version = layout.sb["s_def_hash_version"]
        hashed = sorted((ext4.dx_hash(e.name, version, layout.sb.hash_seed)[0], e.name, e.inode, e.file_type)
                        for e in entries if e.name not in (b".", b".."))
        tree = _htree_blocks(layout, inode, parent, version, hashed, len(blocks))
        raw = bytearray(inode.raw)
        ext4.put(raw, ext4.INODE_FIELDS, "i_flags", inode.flags | ext4.INDEX_FL)
        inode_raw = layout.fix_inode(number, bytes(raw))
    with open(image, "r+b") as out:
        for logical, data in enumerate(tree):
            os.pwrite(out.fileno(), data, blocks[logical] * layout.block_size)
        os.pwrite(out.fileno(), inode_raw, inode.offset)


def _split(items: Sequence[Any], parts: int, key: Callable[[Any], int]) -> list[list[Any]]:
    """`items` in `parts` consecutive, nearly equal, non-empty runs that never split equal keys."""
    out: list[list[Any]] = []
    at = 0
    for part in range(parts):
        left = parts - part
        end = at + max(1, -(-(len(items) - at) // left))
        while end < len(items) and end > at and key(items[end]) == key(items[end - 1]):
            end += 1
        out.append(list(items[at:end]))
        at = end
    if at < len(items) or any(not run for run in out):
        raise ImageError("htree layout failed: too few directory entries for the blocks; a corpus generator bug")
    return out


def _htree_blocks(layout: ext4.Layout, inode: ext4.Inode, parent: int, version: int,
                  hashed: list[tuple[int, bytes, int, int]], count: int) -> list[bytes]:
    size, csum = layout.block_size, layout.metadata_csum
    root_limit = (size - 0x20 - (8 if csum else 0)) // 8
    node_limit = (size - 8 - (8 if csum else 0)) // 8
    nodes = 0 if count - 1 <= root_limit else -(-(count - 1) // (node_limit + 1))
    leaves = _split(hashed, count - 1 - nodes, key=lambda item: item[0])
    leaf_refs = [(run[0][0], 1 + i) for i, run in enumerate(leaves)]
    out = [b""] + [_leaf_block(layout, inode, run) for run in leaves]
    if nodes:
        groups = _split(leaf_refs, nodes, key=lambda ref: ref[0])
        top = []
        for group in groups:
            logical = len(out)
            out.append(_dx_block(layout, inode, _dx_node_head(size), 8, group, node_limit))
            top.append((group[0][0], logical))
    else:
        top = leaf_refs
    head = _dx_root_head(size, inode.number, parent, version, 1 if nodes else 0)
    out[0] = _dx_block(layout, inode, head, 0x20, top, root_limit)
    return out


def _leaf_block(layout: ext4.Layout, inode: ext4.Inode, run: list[tuple[int, bytes, int, int]]) -> bytes:
    size = layout.block_size
    end = size - (12 if layout.metadata_csum else 0)
    out, at = bytearray(size), 0
    for i, (_, name, number, file_type) in enumerate(run):
        rec_len = end - at if i == len(run) - 1 else (8 + len(name) + 3) & ~3
        if at + rec_len > end or rec_len < 8 + len(name):
            raise ImageError(f"htree leaf overflow in inode {inode.number}: a corpus generator bug")
        struct.pack_into("<IHBB", out, at, number, rec_len, len(name), file_type)
        out[at + 8:at + 8 + len(name)] = name
        at += rec_len
    if layout.metadata_csum:
        struct.pack_into("<IHBB", out, end, 0, 12, 0, 0xDE)
    return layout.fix_dir_leaf(inode, bytes(out))


def _dx_root_head(size: int, number: int, parent: int, version: int, levels: int) -> bytes:
    head = bytearray(0x20)
    struct.pack_into("<IHBB4s", head, 0, number, 12, 1, 2, b".")
    struct.pack_into("<IHBB4s", head, 12, parent, size - 12, 2, 2, b"..")
    struct.pack_into("<IBBBB", head, 0x18, 0, version, 8, levels, 0)
    return bytes(head)


def _dx_node_head(size: int) -> bytes:
    return struct.pack("<IHBB", 0, size, 0, 0)


def _dx_block(layout: ext4.Layout, inode: ext4.Inode, head: bytes, count_at: int,
              refs: list[tuple[int, int]], limit: int) -> bytes:
    if len(refs) > limit:
        raise ImageError(f"htree index of inode {inode.number} has {len(refs)} > {limit} entries: a generator bug")
    out = bytearray(layout.block_size)
    out[:len(head)] = head
    struct.pack_into("<HHI", out, count_at, limit, len(refs), refs[0][1])
    for i, (hash_, logical) in enumerate(refs[1:], start=1):
        struct.pack_into("<II", out, count_at + 8 * i, hash_, logical)
    return layout.fix_dx_block(inode, bytes(out), count_at)
