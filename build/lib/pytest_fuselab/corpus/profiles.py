"""The kinds of valid base image the corpus starts from, and the seeded values every image derives from."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from pytest_fuselab.errors import SettingError


@dataclass(frozen=True)
class Profile:
    """One kind of valid base image: mke2fs options, what is added after population, and its traits."""

    name: str
    block_size: int
    size_mib: int
    fs_type: str
    traits: frozenset[str]
    features: str = ""
    extended: tuple[str, ...] = ()
    inodes: int = 2048
    inode_size: int = 256
    cluster_size: int = 0
    tune2fs: tuple[str, ...] = ()
    many: int = 200


def _traits(*names: str) -> frozenset[str]:
    return frozenset(names)


_EXT4 = ("journal", "extent", "csum")
PROFILES: tuple[Profile, ...] = (
    Profile("ext4-4k", 4096, 32, "ext4", _traits(*_EXT4)),
    Profile("ext4-1k", 1024, 16, "ext4", _traits(*_EXT4)),
    Profile("htree-deep", 1024, 32, "ext4", _traits(*_EXT4, "deep_htree"), features="large_dir",
            inodes=4096, many=1000),
    Profile("ext4-32bit-uninit_bg", 1024, 16, "ext4", _traits("journal", "extent", "gdt_csum"),
            features="^64bit,^metadata_csum,uninit_bg"),
    Profile("ext2-blockmap", 1024, 8, "ext2", _traits("blockmap"), inode_size=128, inodes=1024),
    Profile("inline_data", 4096, 16, "ext4", _traits(*_EXT4, "inline"), features="inline_data"),
    Profile("casefold", 4096, 16, "ext4", _traits(*_EXT4, "casefold"), features="casefold",
            extended=("encoding=utf8",)),
    Profile("quota", 1024, 16, "ext4", _traits(*_EXT4, "quota"), tune2fs=("-O", "quota", "-Q", "usrquota,grpquota")),
    Profile("bigalloc", 4096, 64, "ext4", _traits(*_EXT4, "bigalloc"), features="bigalloc", cluster_size=65536),
    Profile("mmp", 4096, 16, "ext4", _traits(*_EXT4, "mmp"), tune2fs=("-O", "mmp", "-E", "mmp_update_interval=5")),
    Profile("ea_inode", 1024, 16, "ext4", _traits(*_EXT4, "ea_inode"), features="ea_inode"),
)


def profile_named(name: str) -> Profile:
    """The profile called `name`; SettingError naming the known ones otherwise."""
    for profile in PROFILES:
        if profile.name == name:
            return profile
    raise SettingError(f"unknown corpus profile {name!r}: use one of {', '.join(p.name for p in PROFILES)}")


def derive(*parts: object) -> int:
    """A 64-bit number derived from `parts` (the corpus seed and more), the same on every host."""
    text = "/".join(str(p) for p in ("fuselab-corpus", *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def seeded_uuid(*parts: object) -> str:
    """A UUID derived from `parts`, so that mke2fs writes the same one on every run."""
    digest = hashlib.sha256("/".join(str(p) for p in ("fuselab-uuid", *parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))
