"""The mutation context and what mutations are made of: hostile values, fields set, checksums fixed or left stale."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pytest_fuselab import ext4
from ..manifest import Entry
from ..profiles import Profile
from ..recording import RecordingImage

Fixer = Callable[[bytes], bytes]


@dataclass
class Ctx:
    """What a mutator works on: the image, its base's layout, the image's random numbers, its profile and
    the inode numbers of the base's roles."""

    img: RecordingImage
    layout: ext4.Layout
    rng: random.Random
    profile: Profile
    facts: dict[str, int]

    @property
    def bs(self) -> int:
        return self.layout.block_size


def checksum_mode(ctx: Ctx, covered: bool) -> str:
    """Whether this mutation recomputes the checksum that covers it ("none" when nothing covers it)."""
    if not covered:
        return "none"
    return "recomputed" if ctx.rng.random() < 0.6 else "stale"


def pick(rng: random.Random, values: Sequence[int], old: int, width: int) -> int:
    """One of `values` (cut to `width` bytes) that differs from `old`; `old` with its low bit flipped if none does."""
    top = (1 << (8 * width)) - 1
    choices = [v & top for v in values if v & top != old]
    return rng.choice(choices) if choices else old ^ 1


def hostile(rng: random.Random, old: int, width: int, extra: Sequence[int] = ()) -> int:
    """A value for an integer field that is not `old`: edges, neighbours, a flipped bit, or `extra`."""
    top = (1 << (8 * width)) - 1
    pool = [0, 1, old + 1, old - 1, old * 2, old ^ (1 << rng.randrange(8 * width)), top, top - 1,
            1 << (8 * width - 1), rng.randrange(top + 1), *extra, *extra]
    return pick(rng, pool, old, width)


def current(ctx: Ctx, at: int, width: int, big: bool = False) -> int:
    """The integer `width` bytes at `at` hold now."""
    return int.from_bytes(ctx.img.read(at, width), "big" if big else "little")


def write_struct(ctx: Ctx, at: int, size: int, edit: Callable[[bytearray], None], fix: Fixer | None,
                 mode: str | None = None) -> str:
    """Edit the structure at `at`, recompute its checksum or leave it stale; returns the checksum mode."""
    raw = bytearray(ctx.img.read(at, size))
    edit(raw)
    used = mode if fix is not None and mode else checksum_mode(ctx, fix is not None)
    ctx.img.put(at, fix(bytes(raw)) if used == "recomputed" and fix is not None else bytes(raw))
    return used


def set_field(ctx: Ctx, structure: str, at: int, size: int, field_at: int, width: int, value: int | bytes,
              fix: Fixer | None, name: str, big: bool = False, mode: str | None = None) -> Entry:
    """Set one field (at absolute `field_at`) of the structure at `at`; returns the mutation's record."""
    rel = field_at - at
    order: Literal["big", "little"] = "big" if big else "little"
    old_bytes = ctx.img.read(field_at, width)
    if isinstance(value, bytes):
        new_bytes = value.ljust(width, b"\0")[:width]
    else:
        new_bytes = (value & ((1 << (8 * width)) - 1)).to_bytes(width, order)

    def edit(raw: bytearray) -> None:
        raw[rel:rel + width] = new_bytes

    used = write_struct(ctx, at, size, edit, fix, mode)
    if isinstance(value, bytes):
        old: int | str = old_bytes.hex()
        new: int | str = new_bytes.hex()
    else:
        old, new = int.from_bytes(old_bytes, order), int.from_bytes(new_bytes, order)
    return {"structure": structure, "field": name, "offset": field_at, "old": old, "new": new, "checksum": used}


def sb_fix(ctx: Ctx) -> Fixer | None:
    """The superblock's checksum fixer, or None when it has no checksum (likewise inode_fix, gd_fix)."""
    return ctx.layout.fix_superblock if ctx.layout.metadata_csum else None


def inode_fix(ctx: Ctx, number: int) -> Fixer | None:
    layout = ctx.layout
    return (lambda raw: layout.fix_inode(number, raw)) if layout.metadata_csum else None


def gd_fix(ctx: Ctx, group: int) -> Fixer | None:
    layout = ctx.layout
    if layout.metadata_csum or layout.sb.has("uninit_bg"):
        return lambda raw: layout.fix_group_desc(group, raw)
    return None


def sb_set(ctx: Ctx, name: str, value: int | bytes, mode: str | None = None) -> Entry:
    """Set superblock field `name` (likewise inode_set for a field of inode `number`)."""
    off, width = ext4.SB_FIELDS[name]
    at = ext4.SUPERBLOCK_OFFSET
    return set_field(ctx, "superblock", at, ext4.SUPERBLOCK_SIZE, at + off, width, value, sb_fix(ctx), name, mode=mode)


def inode_set(ctx: Ctx, number: int, name: str, value: int | bytes, role: str = "", mode: str | None = None) -> Entry:
    off, width = ext4.INODE_FIELDS[name]
    at = ctx.layout.inode_offset(number)
    label = f"inode {number} ({role})" if role else f"inode {number}"
    return set_field(ctx, label, at, ctx.layout.sb.inode_size, at + off, width, value, inode_fix(ctx, number), name,
                     mode=mode)


def inode_get(ctx: Ctx, number: int, name: str) -> int:
    off, width = ext4.INODE_FIELDS[name]
    return current(ctx, ctx.layout.inode_offset(number) + off, width)


def pick_role(ctx: Ctx, roles: Sequence[str],
              test: Callable[[ext4.Inode], bool] = lambda inode: True) -> tuple[str, int]:
    """A (role, inode number) of the base, among `roles` that it has and whose inode passes `test`."""
    present = [(r, ctx.facts[r]) for r in roles if r in ctx.facts and test(ctx.layout.inode(ctx.facts[r]))]
    return ctx.rng.choice(present)


def first_block(ctx: Ctx, number: int) -> int:
    """The physical block of inode `number`'s first data block."""
    return ctx.layout.file_blocks(ctx.layout.inode(number))[0][1]
