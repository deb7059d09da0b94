"""Mutations of the journal: its superblock, and whole transactions written for the kernel to replay."""

from __future__ import annotations

import random
import struct

from pytest_fuselab import ext4
from ..manifest import Entry
from ..tools import FAKE_TIME
from .primitives import Ctx, current, first_block, pick, sb_set, set_field, write_struct

_JSB_VALUES: dict[str, tuple[int, ...]] = {
    "h_magic": (0, ext4.JBD2_MAGIC + 1), "h_blocktype": (1, 2, 3, 5, 0xFF), "s_blocksize": (0, 512, 65536, 0xFFFFFFFF),
    "s_maxlen": (0, 1, 10, 0xFFFFFFFF), "s_first": (0, 0xFFFFFFFF), "s_sequence": (0, 0xFFFFFFFF),
    "s_start": (1, 0xFFFFFFFF), "s_errno": (0xFFFFFFFB, 1), "s_feature_compat": (1, 0xFFFFFFFF),
    "s_feature_incompat": (0x2, 0x8, 0x10, 0x18, 0x20, 0x80000000), "s_feature_ro_compat": (1, 0xFFFFFFFF),
    "s_nr_users": (0, 48, 0xFFFFFFFF), "s_max_transaction": (0, 1), "s_num_fc_blks": (0xFFFFFFFF, 1),
    "s_checksum_type": (1, 2, 4, 0xFF),
}


def _set_recover(ctx: Ctx) -> Entry:
    old = current(ctx, ext4.SUPERBLOCK_OFFSET + ext4.SB_FIELDS["s_feature_incompat"][0], 4)
    return sb_set(ctx, "s_feature_incompat", old | ext4.FEATURES["needs_recovery"][1])


def m_journal_sb(ctx: Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    journal = layout.journal()
    assert journal is not None
    name = rng.choice(list(_JSB_VALUES))
    off, width = ext4.JSB_FIELDS[name]
    maxlen = journal["s_maxlen"]
    extra = {"s_maxlen": (maxlen * 2, len(journal.blocks) + 1), "s_first": (maxlen, maxlen + 1),
             "s_start": (maxlen - 1, maxlen)}.get(name, ())
    value = pick(rng, (*_JSB_VALUES[name], *extra), current(ctx, journal.sb_offset + off, width, big=True), width)
    csum = journal.csum_v2v3 or (name == "s_feature_incompat" and value & 0x18)
    fix = layout.fix_journal_sb if csum else None
    record = set_field(ctx, "journal superblock", journal.sb_offset, 1024, journal.sb_offset + off, width, value, fix,
                       name, big=True)
    if rng.random() < 0.5:
        record["detail"] = {"needs_recovery": _set_recover(ctx)["checksum"]}
    return record


_TXN_VARIANTS = ("clean", "clean", "no_last_tag", "commit_seq", "revoke_target", "revoke_overflow", "escape",
                 "bad_blocktype", "wrap", "start_beyond", "sequence_wrap")


def _txn_payload(ctx: Ctx, journal: ext4.Journal) -> tuple[int, str, bytes]:
    """A file system block for the transaction to overwrite at replay, and what to write there."""
    layout, rng, bs = ctx.layout, ctx.rng, ctx.bs
    kind = rng.choice(("root_dir", "inode_table", "superblock", "group_descriptors", "block_bitmap",
                       "journal_itself", "beyond_end", "random_block"))
    sb = layout.sb
    if kind in ("journal_itself", "beyond_end", "random_block"):
        block = {"journal_itself": journal.blocks[journal["s_first"] + 1],
                 "beyond_end": sb.blocks_count + rng.randrange(1, 4096),
                 "random_block": rng.randrange(sb["s_first_data_block"] + 1, sb.blocks_count)}[kind]
        return block, kind, bytes([0x5A]) + rng.randbytes(bs - 1)
    offsets = {"root_dir": first_block(ctx, 2) * bs, "inode_table": layout.inode_offset(2),
               "superblock": ext4.SUPERBLOCK_OFFSET, "group_descriptors": layout.gdt_offset,
               "block_bitmap": layout.groups[0].block_bitmap * bs}
    block = offsets[kind] // bs
    rel = offsets[kind] - block * bs
    data = bytearray(ctx.img.read(block * bs, bs))
    if kind == "root_dir":
        struct.pack_into("<H", data, rel + 4, rng.choice((0, 4, 0xFFFF)))
    elif kind == "inode_table":
        struct.pack_into("<H", data, rel, 0x81A4)
        data[rel:rel + sb.inode_size] = layout.fix_inode(2, bytes(data[rel:rel + sb.inode_size]))
    elif kind == "superblock":
        name = rng.choice(("s_inodes_count", "s_log_block_size", "s_first_data_block", "s_feature_incompat"))
        struct.pack_into("<I", data, rel + ext4.SB_FIELDS[name][0], rng.choice((0, 7, 0xFFFFFFFF)))
        data[rel:rel + 1024] = layout.fix_superblock(bytes(data[rel:rel + 1024]))
    elif kind == "group_descriptors":
        struct.pack_into("<I", data, rel + 8, 0)
    else:
        data[:] = bytes(bs)
    return block, kind, bytes(data)


def _descriptor(bs: int, seq: int, target: int, flags: int, wide: bool, uid: bytes, last: bool,
                rng: random.Random) -> bytes:
    out = bytearray(bs)
    struct.pack_into(">III", out, 0, ext4.JBD2_MAGIC, 1, seq)
    struct.pack_into(">IHH", out, 12, target & 0xFFFFFFFF, 0, flags | (8 if last else 0))
    at = 20
    if wide:
        struct.pack_into(">I", out, at, target >> 32)
        at += 4
    out[at:at + 16] = uid
    if not last:
        out[at + 16:] = rng.randbytes(bs - at - 16)
    return bytes(out)


def _revoke(bs: int, seq: int, target: int, wide: bool, count: int | None) -> bytes:
    record = target.to_bytes(8 if wide else 4, "big")
    used = 16 + len(record) if count is None else count
    return (struct.pack(">IIII", ext4.JBD2_MAGIC, 5, seq, used) + record).ljust(bs, b"\0")


def _commit(bs: int, seq: int) -> bytes:
    return struct.pack(">III4x32xQI", ext4.JBD2_MAGIC, 2, seq, FAKE_TIME, 0).ljust(bs, b"\0")


def _txn_blocks(ctx: Ctx, journal: ext4.Journal, variant: str, seq: int, target: int, payload: bytes) -> list[bytes]:
    bs = ctx.bs
    wide = bool(journal["s_feature_incompat"] & ext4.JBD2_INCOMPAT_64BIT)
    desc = _descriptor(bs, seq, target, 1 if variant == "escape" else 0, wide, journal.raw[0x30:0x40],
                       variant != "no_last_tag", ctx.rng)
    if variant == "bad_blocktype":
        desc = desc[:4] + struct.pack(">I", 9) + desc[8:]
    if variant == "escape":
        payload = bytes(4) + payload[4:]
    blocks = [desc, payload]
    if variant in ("revoke_target", "revoke_overflow"):
        blocks.append(_revoke(bs, seq, target, wide, bs * 4 if variant == "revoke_overflow" else None))
    return blocks + [_commit(bs, (seq + 1) & 0xFFFFFFFF if variant == "commit_seq" else seq)]


def m_journal_txn(ctx: Ctx) -> Entry:
    """Write one transaction into the empty journal and mark the file system as needing recovery."""
    layout, rng, bs = ctx.layout, ctx.rng, ctx.bs
    journal = layout.journal()
    assert journal is not None
    target, payload_kind, payload = _txn_payload(ctx, journal)
    variant = rng.choice(_TXN_VARIANTS)
    seq = 0xFFFFFFFF if variant == "sequence_wrap" else journal["s_sequence"]
    first, maxlen = journal["s_first"], journal["s_maxlen"]
    position = start = maxlen - 2 if variant == "wrap" else first
    used = []
    for data in _txn_blocks(ctx, journal, variant, seq, target, payload):
        ctx.img.put(journal.blocks[position] * bs, data)
        used.append(position)
        position = first if position + 1 >= maxlen else position + 1
    new_start = maxlen + 3 if variant == "start_beyond" else start

    def edit(raw: bytearray) -> None:
        ext4.put(raw, ext4.JSB_FIELDS, "s_start", new_start, big=True)
        ext4.put(raw, ext4.JSB_FIELDS, "s_sequence", seq, big=True)

    write_struct(ctx, journal.sb_offset, 1024, edit, layout.fix_journal_sb if journal.csum_v2v3 else None)
    recover = _set_recover(ctx)
    return {"structure": "journal", "field": "transaction", "offset": journal.blocks[start] * bs,
            "old": journal["s_start"], "new": new_start, "checksum": recover["checksum"],
            "detail": {"variant": variant, "payload": payload_kind, "target_block": target, "journal_blocks": used,
                       "sequence": seq}}
