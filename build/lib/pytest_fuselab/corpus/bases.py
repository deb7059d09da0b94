"""Valid base images: made by mke2fs, filled by debugfs with one of everything, then pinned and indexed."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from pytest_fuselab import ext4
from pytest_fuselab import proc
from pytest_fuselab.errors import ImageError
from pytest_fuselab.sparse import file_sha256
from .htree import index_directory
from .profiles import Profile, derive
from .tools import FAKE_TIME, MKE2FS_CONF, TOOLS, find_tool, mke2fs_args, run_debugfs, tool_env


@dataclass
class Base:
    """A base image built for one profile, open for reading, with the inode numbers of its roles."""

    profile: Profile
    path: Path
    sha256: str
    layout: ext4.Layout
    facts: dict[str, int]


_ROLES = {"lost+found": "lost+found", "dir": "dir", "sub": "dir/sub", "deep": "dir/sub/deep", "small": "small.txt",
          "tiny": "dir/tiny.txt", "medium": "dir/medium.bin", "sparse": "dir/sparse.bin", "large": "dir/sub/large.bin",
          "empty": "empty", "fast": "fastlink", "slow": "dir/slowlink", "null": "dir/null", "fifo": "dir/fifo",
          "many": "many"}


def _source_files(profile: Profile, rng: random.Random, src: Path) -> None:
    src.mkdir(exist_ok=True)
    text = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz \n") for _ in range(100))
    files = {"small": text, "tiny": text[:40], "medium": rng.randbytes(24 * 1024), "large": rng.randbytes(300 * 1024),
             "empty": b"", "eabig": bytes(rng.choice(b"0123456789abcdef") for _ in range(3000))}
    for name, data in files.items():
        (src / name).write_bytes(data)
    with open(src / "sparse", "wb") as out:
        for chunk in range(8):
            out.seek(chunk * 16384)
            out.write(rng.randbytes(4096))
    for path in src.iterdir():
        os.chmod(path, 0o644)


def _many_names(profile: Profile, rng: random.Random) -> list[str]:
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
    width = 96 if "deep_htree" in profile.traits else 8  # long names: few per leaf, so many leaves, two levels
    return [f"entry-{i:05d}-{rng.choice(words)}-{rng.randbytes(width // 2).hex()}" for i in range(profile.many)]


def _many_commands(profile: Profile, rng: random.Random) -> list[str]:
    names = _many_names(profile, rng)
    usable = profile.block_size - 12
    linear = sum((8 + len(n) + 3) & ~3 for n in names) // usable + 1
    wanted = int(sum((8 + len(n) + 3) & ~3 for n in names) / (0.7 * usable)) + 3
    return ["mkdir many", *(f"write src/empty many/{n}" for n in names)] + ["expand_dir many"] * max(wanted - linear, 1)


def _population(profile: Profile, rng: random.Random) -> list[str]:
    """debugfs commands, in a fixed order, that fill a fresh image with one of everything."""
    slow = "dir/sub/" + "/".join(f"{rng.randbytes(6).hex()}" for _ in range(12))
    values = [rng.randbytes(100).hex() for _ in range(4)]
    commands = [
        "mkdir dir", "mkdir dir/sub", "mkdir dir/sub/deep", "write src/small small.txt", "write src/tiny dir/tiny.txt",
        "write src/medium dir/medium.bin", "write src/sparse dir/sparse.bin", "write src/large dir/sub/large.bin",
        "write src/empty empty", "symlink fastlink dir/sub/large.bin", f"symlink dir/slowlink {slow}",
        "cd dir", "mknod null c 1 3", "mknod fifo p", "cd /",
        "sif dir/null mode 020666", "sif dir/fifo mode 010644", "ln small.txt dir/hardlink",
        "sif small.txt links_count 2",
        "sif dir/medium.bin uid 1000", "sif dir/medium.bin gid 1000", "sif dir/tiny.txt mode 0104755",
        "ea_set small.txt user.comment fuselab-corpus",
        *(f"ea_set dir/medium.bin user.k{i} {value}" for i, value in enumerate(values)),
    ]
    if "ea_inode" in profile.traits:
        commands.append("ea_set -f src/eabig dir/sub/large.bin user.big")
    if "casefold" in profile.traits:
        commands += ["mkdir cf", f"sif cf flags {ext4.CASEFOLD_FL | ext4.EXTENTS_FL:#x}",
                     "write src/tiny cf/MixedCase.TXT", "write src/tiny cf/lower.txt"]
    return commands + _many_commands(profile, rng)


def build_base(profile: Profile, seed: int, work: Path) -> Path:
    """Make the valid, populated base image of `profile` for corpus `seed` in `work` (created if needed)."""
    tools = {name: find_tool(name) for name in TOOLS}
    work.mkdir(parents=True, exist_ok=True)
    (work / "mke2fs.conf").write_text(MKE2FS_CONF)
    env = tool_env(work)
    rng = random.Random(derive("base", seed, profile.name))
    _source_files(profile, rng, work / "src")
    proc.run([tools["mke2fs"], *mke2fs_args(profile, seed)[1:]], ImageError, cwd=work, env=env)
    run_debugfs(tools["debugfs"], env, work, _population(profile, rng))
    image = work / "base.raw"
    with ext4.Layout(image) as layout:
        many = layout.lookup("many")
    index_directory(image, many)
    if profile.tune2fs:
        proc.run([tools["tune2fs"], *profile.tune2fs, "base.raw"], ImageError, cwd=work, env=env)
    if "mmp" in profile.traits:
        _normalise_mmp(image)
    return image


def _normalise_mmp(image: Path) -> None:
    """tune2fs writes the host name, the device path and the wall clock into the MMP block: pin them."""
    with ext4.Layout(image) as layout:
        offset = layout.mmp_offset()
        if offset is None:
            raise ImageError(f"{image} should have an MMP block after `tune2fs -O mmp`: check e2fsprogs")
        raw = bytearray(layout.read(offset, layout.block_size))
        ext4.put(raw, ext4.MMP_FIELDS, "mmp_seq", ext4.MMP_SEQ_CLEAN)
        ext4.put(raw, ext4.MMP_FIELDS, "mmp_time", FAKE_TIME)
        raw[0x10:0x70] = b"fuselab".ljust(64, b"\0") + b"base.raw".ljust(32, b"\0")
        data = layout.fix_mmp(bytes(raw))
    with open(image, "r+b") as out:
        os.pwrite(out.fileno(), data, offset)


def _facts(layout: ext4.Layout, profile: Profile) -> dict[str, int]:
    facts = {role: layout.lookup(path) for role, path in _ROLES.items()}
    facts["root"] = ext4.ROOT_INO
    facts["unused"] = layout.sb["s_inodes_count"]
    if "casefold" in profile.traits:
        facts["cf"] = layout.lookup("cf")
    large = layout.inode(facts["large"])
    for region in (layout.ibody_xattrs(large), layout.xattr_block(large)):
        for entry in region.entries if region else ():
            if entry.value_inum:
                facts["ea"] = entry.value_inum
    return facts


class BaseCache:
    """Base images of one corpus seed, built on first use in a private work directory."""

    def __init__(self, seed: int, work: Path) -> None:
        self.seed, self.work = seed, work
        self._bases: dict[str, Base] = {}

    def get(self, profile: Profile) -> Base:
        if profile.name not in self._bases:
            work = self.work / profile.name
            work.mkdir()
            path = build_base(profile, self.seed, work)
            layout = ext4.Layout(path)
            self._bases[profile.name] = Base(profile, path, file_sha256(path), layout, _facts(layout, profile))
        return self._bases[profile.name]

    def close(self) -> None:
        for base in self._bases.values():
            base.layout.close()
