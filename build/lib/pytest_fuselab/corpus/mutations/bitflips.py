"""Random bit flips across the metadata of an image."""

from __future__ import annotations

from pytest_fuselab import ext4
from ..manifest import Entry
from .primitives import Ctx, first_block


def _bitflip_regions(ctx: Ctx) -> list[tuple[str, int, int]]:
    layout, bs = ctx.layout, ctx.bs
    regions = [("superblock", ext4.SUPERBLOCK_OFFSET, ext4.SUPERBLOCK_SIZE),
               ("group descriptors", layout.gdt_offset, len(layout.groups) * layout.sb.desc_size),
               ("inode table", layout.groups[0].inode_table * bs, layout.sb.inode_size * 16),
               ("root directory", first_block(ctx, 2) * bs, bs),
               ("htree root", first_block(ctx, ctx.facts["many"]) * bs, bs)]
    block = layout.xattr_block(layout.inode(ctx.facts["medium"]))
    if block is not None:
        regions.append(("xattr block", block.offset, bs))
    journal = layout.journal()
    if journal is not None:
        regions.append(("journal superblock", journal.sb_offset, 1024))
    sparse = layout.inode(ctx.facts["sparse"])
    if sparse.flags & ext4.EXTENTS_FL:
        regions += [("extent block", n.block * bs, bs) for n in layout.extent_nodes(sparse) if n.block is not None]
    return regions


def m_bitflip(ctx: Ctx) -> Entry:
    rng = ctx.rng
    regions = _bitflip_regions(ctx)
    flips: list[tuple[str, int, int]] = []
    for _ in range(rng.randint(1, 12)):
        name, at, size = rng.choice(regions)
        byte, bit = at + rng.randrange(size), rng.randrange(8)
        ctx.img.put(byte, bytes([ctx.img.read(byte, 1)[0] ^ (1 << bit)]))
        flips.append((name, byte, bit))
    return {"structure": ", ".join(sorted({f[0] for f in flips})), "field": f"{len(flips)} bit flips",
            "offset": flips[0][1], "old": None, "new": None, "checksum": "stale" if _has_checksums(ctx) else "none",
            "detail": {"flips": flips}}


def _has_checksums(ctx: Ctx) -> bool:
    return ctx.layout.metadata_csum or ctx.layout.sb.has("uninit_bg")
