"""The kinds of corruption, each a mutator and the base profiles it applies to."""

from __future__ import annotations

from collections.abc import Callable

from ..manifest import Entry
from ..profiles import Profile
from .bitflips import m_bitflip
from .directories import m_casefold, m_dirent, m_htree
from .extents import m_extent
from .inodes import m_i_block, m_inode, m_symlink
from .journal import m_journal_sb, m_journal_txn
from .primitives import Ctx
from .special import m_mmp, m_orphan, m_quota
from .superblock import m_bitmap, m_features, m_group_desc, m_superblock
from .xattrs import m_inline_data, m_xattr


def _needs(trait: str) -> Callable[[Profile], bool]:
    return lambda profile: trait in profile.traits


def _any(profile: Profile) -> bool:
    return True


# kind: (which profiles it applies to, the mutator)
MUTATORS: dict[str, tuple[Callable[[Profile], bool], Callable[[Ctx], Entry]]] = {
    "superblock": (_any, m_superblock), "features": (_any, m_features), "group_desc": (_any, m_group_desc),
    "bitmap": (_any, m_bitmap), "inode": (_any, m_inode), "i_block": (_needs("blockmap"), m_i_block),
    "extent": (_needs("extent"), m_extent), "dirent": (_any, m_dirent), "htree": (_any, m_htree),
    "xattr": (_any, m_xattr), "symlink": (_any, m_symlink), "inline_data": (_needs("inline"), m_inline_data),
    "casefold": (_needs("casefold"), m_casefold), "quota": (_needs("quota"), m_quota),
    "journal_sb": (_needs("journal"), m_journal_sb), "journal_txn": (_needs("journal"), m_journal_txn),
    "orphan": (_any, m_orphan), "mmp": (_needs("mmp"), m_mmp), "bitflip": (_any, m_bitflip),
}
KINDS: tuple[str, ...] = tuple(MUTATORS)


def applies(kind: str, profile: Profile) -> bool:
    """Whether mutation `kind` can be applied to images of `profile`."""
    return MUTATORS[kind][0](profile)


def mutate(kind: str, ctx: Ctx) -> Entry:
    """Apply mutation `kind` to the image in `ctx`; returns what it did, as the manifest records it."""
    return MUTATORS[kind][1](ctx)
