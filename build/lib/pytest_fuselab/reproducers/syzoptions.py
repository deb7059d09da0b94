"""Mount options in syzkaller's notation, for the options this reader knows (ext2/3/4 and the common ones)."""

from __future__ import annotations

from .executor import format_int
from .syzlang import Data, Group, Int, Other, Ptr, Union, Value, int_value, show


_EXT4_FLAGS = frozenset("""
    bsddf minixdf grpid bsdgroups nogrpid sysvgroups nouid32 debug oldalloc orlov user_xattr nouser_xattr acl
    noacl norecovery noload nobh bh journal_checksum nojournal_checksum journal_async_commit abort grpquota
    noquota quota usrquota prjquota barrier nobarrier i_version dax delalloc lazytime nolazytime nodelalloc
    mblk_io_submit nomblk_io_submit block_validity noblock_validity auto_da_alloc noauto_da_alloc
    dioread_nolock nodioread_nolock dioread_lock discard nodiscard init_itable noinit_itable
    test_dummy_encryption nombcache inlinecrypt""".split())
_EXT4_RENAMED = {
    "errors_continue": "errors=continue", "errors_remount": "errors=remount-ro", "data_journal": "data=journal",
    "data_ordered": "data=ordered", "data_writeback": "data=writeback", "data_err_abort": "data_err=abort",
    "data_err_ignore": "data_err=ignore", "usrjquota": "usrjquota=", "grpjquota": "grpjquota=",
    "jqfmt_vfsold": "jqfmt=vfsold", "jqfmt_vfsv0": "jqfmt=vfsv0", "jqfmt_vfsv1": "jqfmt=vfsv1",
    "dax_always": "dax=always", "dax_inode": "dax=inode", "dax_never": "dax=never",
    "test_dummy_encryption_v1": "test_dummy_encryption=v1",
}
# Options whose value syzkaller formats as 0x%016x; a bare @name means the value 0.
_EXT4_VALUES = {
    "mb_optimize_scan": "mb_optimize_scan", "resgid": "resgid", "resuid": "resuid", "sb": "sb",
    "commit": "commit", "min_batch_time": "min_batch_time", "max_batch_time": "max_batch_time",
    "journal_dev": "journal_dev", "barrier_val": "barrier", "stripe": "stripe",
    "debug_want_extra_isize": "debug_want_extra_isize", "inode_readahead_blks": "inode_readahead_blks",
    "journal_ioprio": "journal_ioprio", "auto_da_alloc_val": "auto_da_alloc", "init_itable_val": "init_itable",
    "max_dir_size_kb": "max_dir_size_kb",
}
_COMMON_FLAGS = {
    "seclabel": "seclabel", "measure": "measure", "dont_measure": "dont_measure", "appraise": "appraise",
    "dont_appraise": "dont_appraise", "audit": "audit", "hash": "hash", "dont_hash": "dont_hash",
    "permit_directio": "permit_directio", "appraise_type": "appraise_type=imasig",
}
# Value formats of the options every filesystem shares, by the option's own name.
_COMMON_FORMATS = {"fsmagic": "hex", "uid": "dec", "euid": "dec", "fowner": "dec", "uid>": "dec",
                   "euid>": "dec", "fowner>": "dec", "uid<": "dec", "euid<": "dec", "fowner<": "dec", "pcr": "dec"}
_EXT_CALLS = ("ext4", "ext3", "ext2")


def syz_options(value: Value | None, call_fs: str, notes: list[str]) -> bytes:
    """The option bytes a program passes: an fs_options struct, an ANY blob or a plain string."""
    if isinstance(value, Ptr):
        if value.any and isinstance(value.target, Group):
            return _any_blob(value.target, notes)
        return syz_options(value.target, call_fs, notes)
    if isinstance(value, Data):
        return value.cstring()
    if isinstance(value, Group) and not value.array:
        out = bytearray()
        for part in value.items[:2]:
            elems = part.items if isinstance(part, Group) else ()
            for elem in elems:
                text = _option_elem(elem, call_fs, notes)
                if text is not None:
                    out += text
        return bytes(out)
    if value is not None and not isinstance(value, (Int, Other)):
        notes.append(f"mount options in an unknown notation left out: {show(value)}")
    return b""


def _any_blob(group: Group, notes: list[str]) -> bytes:
    out = bytearray()
    for item in group.items:
        if isinstance(item, Union) and item.name == "ANYBLOB" and isinstance(item.value, Data):
            out += item.value.cstring()
        else:
            notes.append(f"mount option bytes that depend on run-time values left out: {show(item)}")
    return bytes(out)


def _option_elem(elem: Value, call_fs: str, notes: list[str]) -> bytes | None:
    """One fs_opt_elem, {@option[, comma]}, as the bytes syzkaller writes for it (option and comma)."""
    union = elem.items[0] if isinstance(elem, Group) and elem.items else elem
    comma = elem.items[1] if isinstance(elem, Group) and len(elem.items) > 1 else None
    if not isinstance(union, Union):
        notes.append(f"mount option in an unknown notation left out: {show(elem)}")
        return None
    text = _option_text(union, call_fs, notes)
    if text is None:
        notes.append(f"mount option not understood, left out: {show(elem)}")
        return None
    return text + (bytes([comma.value & 0xFF]) if isinstance(comma, Int) else b",")


def _option_text(union: Union, call_fs: str, notes: list[str]) -> bytes | None:
    name, value = union.name, union.value
    ext = call_fs in _EXT_CALLS
    if isinstance(value, Union):
        return _option_text(value, call_fs, notes)
    if isinstance(value, Data):
        return value.cstring()
    if isinstance(value, Group) and not value.array:
        return _option_struct(value, ext)
    if value is not None:
        return None
    if name in _COMMON_FLAGS:
        return _COMMON_FLAGS[name].encode()
    if ext and (name in _EXT4_FLAGS or name in _EXT4_RENAMED):
        return _EXT4_RENAMED.get(name, name).encode()
    if ext and name in _EXT4_VALUES:
        return f"{_EXT4_VALUES[name]}={format_int(0, 'hex')}".encode()
    return None


def _option_struct(value: Group, ext: bool) -> bytes | None:
    """{'name', 0x3d, value}: fs_opt (name, '=', value) or fs_opt_nodelim (name, value)."""
    items = list(value.items)
    if not items or not isinstance(items[0], Data):
        return None
    name = items[0].data
    out = items[0].cstring()
    rest = items[1:]
    if rest and isinstance(rest[0], Int) and rest[0].value == ord("=") and (len(rest) > 1 or ext):
        out += b"="
        rest = rest[1:]
    style = _COMMON_FORMATS.get(name.decode("latin-1"), "hex" if ext else "")
    for part in rest or [Int(0)]:
        if isinstance(part, Data):
            out += part.cstring()
        elif isinstance(part, Group) and all(isinstance(x, Int) for x in part.items):
            out += bytes(int_value(x) & 0xFF for x in part.items)
        elif isinstance(part, Int) and style:
            out += format_int(part.value, style).encode()
        else:
            return None
    return out
