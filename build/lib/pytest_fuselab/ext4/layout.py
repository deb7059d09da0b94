"""The layout of an ext4 image the corpus generator just made: where each structure lies."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from types import TracebackType

from pytest_fuselab.errors import ImageError
from .checksums import Checksums
from .fields import (EXT4_MAGIC, EXTENT_MAGIC, EXTENTS_FL, GOOD_OLD_INODE_SIZE, INDEX_FL, INLINE_DATA_FL, ROOT_INO,
                     SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, XATTR_HEADER_FIELDS, XATTR_MAGIC, get)
from .records import (DirEntry, DxNode, DxTree, ExtentNode, Group, Inode, Journal, Superblock, XattrRegion,
                      parse_dirents, parse_xattrs)


class Layout(Checksums):
    """The layout of one ext4 image made by us: offsets of its structures, and their checksums."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self.sb = Superblock(self.read(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE))
            if self.sb["s_magic"] != EXT4_MAGIC or self.sb.has("meta_bg"):
                raise ImageError(f"{self.path} is not an ext4 image the corpus generator made (magic "
                                 f"{self.sb['s_magic']:#x}): only read fresh, uncorrupted corpus base images")
            self.block_size = self.sb.block_size
            self.metadata_csum = self.sb.has("metadata_csum")
            self.csum_seed = self.sb.csum_seed
            self.groups = self._read_groups()
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> Layout:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        return data + bytes(size - len(data))

    def block(self, number: int) -> bytes:
        return self.read(number * self.block_size, self.block_size)

    def _read_groups(self) -> tuple[Group, ...]:
        size = self.sb.desc_size
        start = (self.sb["s_first_data_block"] + 1) * self.block_size
        table = self.read(start, size * self.sb.group_count)
        return tuple(Group(g, start + g * size, table[g * size:(g + 1) * size]) for g in range(self.sb.group_count))

    @property
    def gdt_offset(self) -> int:
        return self.groups[0].offset

    def inode_offset(self, number: int) -> int:
        per = self.sb["s_inodes_per_group"]
        group = self.groups[(number - 1) // per]
        return group.inode_table * self.block_size + ((number - 1) % per) * self.sb.inode_size

    def inode(self, number: int) -> Inode:
        offset = self.inode_offset(number)
        return Inode(number, offset, self.read(offset, self.sb.inode_size))

    def extent_nodes(self, inode: Inode) -> list[ExtentNode]:
        """Every node of the inode's extent tree, the root first (depth-first)."""
        nodes: list[ExtentNode] = []
        self._walk_extents(inode.i_block, inode.offset + 0x28, None, nodes)
        return nodes

    def _walk_extents(self, raw: bytes, offset: int, block: int | None, out: list[ExtentNode]) -> None:
        magic, entries, limit, depth = struct.unpack_from("<4H", raw)
        if magic != EXTENT_MAGIC or len(out) > 10000:
            return
        items = []
        for i in range(min(entries, limit)):
            at = 12 + 12 * i
            if depth:
                logical, leaf_lo, leaf_hi = struct.unpack_from("<IIH", raw, at)
                items.append((logical, 0, leaf_lo | (leaf_hi << 32), offset + at))
            else:
                logical, length, hi, lo = struct.unpack_from("<IHHI", raw, at)
                items.append((logical, length if length <= 32768 else length - 32768, lo | (hi << 32), offset + at))
        out.append(ExtentNode(offset, block, depth, entries, limit, tuple(items)))
        if depth:
            for _, _, child, _ in items:
                self._walk_extents(self.block(child), child * self.block_size, child, out)

    def file_blocks(self, inode: Inode) -> list[tuple[int, int]]:
        """(logical, physical) pairs of the inode's data blocks, in logical order."""
        if not inode.has_blocks:
            return []
        pairs: list[tuple[int, int]] = []
        if inode.flags & EXTENTS_FL:
            for node in self.extent_nodes(inode):
                if node.depth == 0:
                    pairs += [(lg + i, start + i) for lg, length, start, _ in node.items for i in range(length)]
        else:
            pairs = [(lg, phys) for lg, phys, level in self.block_map(inode) if level == 0]
        return sorted(pairs)

    def block_map(self, inode: Inode) -> list[tuple[int, int, int]]:
        """(logical, physical, level) of a block-mapped inode: level 0 data, 1-3 the indirect blocks."""
        per = self.block_size // 4
        pointers = struct.unpack("<15I", inode.i_block)
        out = [(i, p, 0) for i, p in enumerate(pointers[:12]) if p]
        first = 12
        for level, pointer in enumerate(pointers[12:], start=1):
            if pointer:
                self._indirect(pointer, level, first, out)
            first += per ** level
        return out

    def _indirect(self, block: int, level: int, first: int, out: list[tuple[int, int, int]]) -> None:
        out.append((first, block, level))
        per = self.block_size // 4
        span = per ** (level - 1)
        for i, pointer in enumerate(struct.unpack(f"<{per}I", self.block(block))):
            if pointer and level == 1:
                out.append((first + i, pointer, 0))
            elif pointer:
                self._indirect(pointer, level - 1, first + i * span, out)

    def dir_entries(self, inode: Inode) -> list[DirEntry]:
        """Every live entry (inode != 0) of a directory, block or inline."""
        if inode.flags & INLINE_DATA_FL:
            return self._inline_entries(inode)
        out: list[DirEntry] = []
        for _, physical in self.file_blocks(inode):
            out += parse_dirents(self.block(physical), physical * self.block_size, 0, physical)
        return out

    def _inline_entries(self, inode: Inode) -> list[DirEntry]:
        out = parse_dirents(inode.i_block[4:], inode.offset + 0x28 + 4, 0, -1)
        ibody = self.ibody_xattrs(inode)
        for entry in ibody.entries if ibody else ():
            if entry.name_index == 7 and entry.name == b"data" and entry.value_size:
                value = self.read(entry.value_at, entry.value_size)
                out += parse_dirents(value, entry.value_at, 0, -1)
        return out

    def lookup(self, path: str) -> int:
        """The inode number of `path` (relative to the root), walking directory entries."""
        number = ROOT_INO
        for part in [p for p in path.split("/") if p]:
            found = [e.inode for e in self.dir_entries(self.inode(number)) if e.name == part.encode()]
            if not found:
                raise ImageError(f"{path!r} not found in {self.path} (no entry {part!r}): the base image is incomplete")
            number = found[0]
        return number

    def htree(self, inode: Inode) -> DxTree | None:
        """The htree of an indexed directory, or None for a linear one."""
        if not inode.flags & INDEX_FL or inode.flags & INLINE_DATA_FL:
            return None
        blocks = dict(self.file_blocks(inode))
        root = self.block(blocks[0])
        info = blocks[0] * self.block_size + 0x18
        version, info_len, levels = root[0x1C], root[0x1D], root[0x1E]
        nodes = [self._dx_node(root, blocks[0], 0, 0x18 + info_len)]
        frontier = list(nodes)
        for _ in range(levels):
            children = [self._dx_node(self.block(blocks[lg]), blocks[lg], lg, 8)
                        for node in frontier for _, lg, _ in node.entries]
            nodes += children
            frontier = children
        return DxTree(info, version, levels, tuple(nodes))

    def _dx_node(self, raw: bytes, physical: int, logical: int, count_at: int) -> DxNode:
        base = physical * self.block_size
        limit, count, first = struct.unpack_from("<HHI", raw, count_at)
        entries = [(0, first, base + count_at)]
        for i in range(1, count):
            hash_, child = struct.unpack_from("<II", raw, count_at + 8 * i)
            entries.append((hash_, child, base + count_at + 8 * i))
        return DxNode(physical, logical, base + count_at, limit, count, tuple(entries))

    def xattr_block(self, inode: Inode) -> XattrRegion | None:
        """The inode's external xattr block, or None."""
        block = inode.file_acl
        if not block:
            return None
        raw = self.block(block)
        if get(raw, XATTR_HEADER_FIELDS, "h_magic") != XATTR_MAGIC:
            return None
        base = block * self.block_size
        entries, end = parse_xattrs(raw, 32, base, base)
        return XattrRegion(base, block, entries, end)

    def ibody_xattrs(self, inode: Inode) -> XattrRegion | None:
        """The xattrs stored inside the inode after i_extra_isize, or None."""
        start = GOOD_OLD_INODE_SIZE + inode.extra_isize
        if inode.extra_isize == 0 or start + 4 > len(inode.raw):
            return None
        if int.from_bytes(inode.raw[start:start + 4], "little") != XATTR_MAGIC:
            return None
        entries, end = parse_xattrs(inode.raw, start + 4, inode.offset, inode.offset + start + 4)
        return XattrRegion(inode.offset + start, None, entries, end)

    def journal(self) -> Journal | None:
        """The internal journal (inode s_journal_inum), or None."""
        if not self.sb.has("has_journal") or not self.sb["s_journal_inum"]:
            return None
        blocks = tuple(p for _, p in self.file_blocks(self.inode(self.sb["s_journal_inum"])))
        offset = blocks[0] * self.block_size
        return Journal(offset, self.read(offset, 1024), blocks)

    def mmp_offset(self) -> int | None:
        return self.sb["s_mmp_block"] * self.block_size if self.sb.has("mmp") else None

    def orphan_head(self) -> int:
        return self.sb["s_last_orphan"]
