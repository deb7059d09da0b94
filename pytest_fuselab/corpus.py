"""Deterministic hostile ext4 images: valid bases from mke2fs and debugfs, then seeded, recorded corruptions."""

# Safety rule: the host runs mke2fs, debugfs and tune2fs only on base images it has just made, before any
# corruption. Corrupted images are only written to here: never mounted, fscked, loop-attached or given to
# debugfs. They are parsed inside guests only.

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import ext4
from . import proc
from .errors import HostError, ImageError, SettingError

FAKE_TIME = 1700000000
MANIFEST = "manifest.jsonl"
SBIN_DIRS = ("/usr/sbin", "/sbin")
TOOLS = ("mke2fs", "debugfs", "tune2fs")
Progress = Callable[[int, int, str], None]
Entry = dict[str, Any]

_MKE2FS_CONF = """[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 5.0
\tlazy_itable_init = true
\tlazy_journal_init = true

[fs_types]
\text2 = {
\t}
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tfuselab = {
\t}
"""


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
    for profile in PROFILES:
        if profile.name == name:
            return profile
    raise SettingError(f"unknown corpus profile {name!r}: use one of {', '.join(p.name for p in PROFILES)}")


def _derive(*parts: object) -> int:
    text = "/".join(str(p) for p in ("fuselab-corpus", *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _uuid(*parts: object) -> str:
    digest = hashlib.sha256("/".join(str(p) for p in ("fuselab-uuid", *parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


# ---------------------------------------------------------------- host tools


def find_tool(name: str) -> str:
    """The path of an e2fsprogs command, looked up in PATH and then in SBIN_DIRS."""
    found = shutil.which(name) or (shutil.which(name, path=os.pathsep.join(SBIN_DIRS)) if SBIN_DIRS else None)
    if not found:
        raise HostError(f"{name} was not found in PATH or {', '.join(SBIN_DIRS)}: install e2fsprogs "
                        "(`apt-get install e2fsprogs`, or `fuselab setup`) to generate a corpus")
    return found


def e2fsprogs_version(mke2fs: str) -> str:
    out = subprocess.run([mke2fs, "-V"], capture_output=True, text=True, env={"LC_ALL": "C"})
    match = re.search(r"mke2fs (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def _tool_env(work: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC",
            "MKE2FS_CONFIG": str(work / "mke2fs.conf"), "E2FSPROGS_FAKE_TIME": str(FAKE_TIME),
            "DEBUGFS_PAGER": "__none__", "PAGER": "__none__"}


def mke2fs_args(profile: Profile, seed: int) -> list[str]:
    """The mke2fs command line (image and size last) that makes the base of `profile` for corpus `seed`."""
    extended = ["root_owner=0:0", f"hash_seed={_uuid(seed, profile.name, 'hash')}", "nodiscard", *profile.extended]
    args = ["mke2fs", "-q", "-F", "-t", profile.fs_type, "-T", "fuselab", "-b", str(profile.block_size),
            "-I", str(profile.inode_size), "-N", str(profile.inodes), "-U", _uuid(seed, profile.name, "fs"),
            "-E", ",".join(extended), "-L", "fuselab"]
    if profile.features:
        args += ["-O", profile.features]
    if profile.cluster_size:
        args += ["-C", str(profile.cluster_size)]
    return [*args, "base.raw", f"{profile.size_mib}M"]


# ---------------------------------------------------------------- base images


@dataclass
class _Base:
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
        "sif dir/null mode 020666", "sif dir/fifo mode 010644", "ln small.txt dir/hardlink", "sif small.txt links_count 2",
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


def _debugfs(debugfs: str, env: dict[str, str], work: Path, commands: list[str]) -> None:
    (work / "commands.txt").write_text("\n".join(commands) + "\n")
    argv = [debugfs, "-w", "-f", "commands.txt", "base.raw"]
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    errors = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if done.returncode != 0 or errors:
        raise ImageError(f"populating a base image failed (status {done.returncode}): {' '.join(argv)} in {work}\n"
                         + "\n".join(errors[-10:]) + "\ncheck that e2fsprogs is 1.47 or newer (`mke2fs -V`)")


def build_base(profile: Profile, seed: int, work: Path) -> Path:
    """Make the valid, populated base image of `profile` for corpus `seed` in `work` (created if needed)."""
    tools = {name: find_tool(name) for name in TOOLS}
    work.mkdir(parents=True, exist_ok=True)
    (work / "mke2fs.conf").write_text(_MKE2FS_CONF)
    env = _tool_env(work)
    rng = random.Random(_derive("base", seed, profile.name))
    _source_files(profile, rng, work / "src")
    proc.run([tools["mke2fs"], *mke2fs_args(profile, seed)[1:]], ImageError, cwd=work, env=env)
    _debugfs(tools["debugfs"], env, work, _population(profile, rng))
    image = work / "base.raw"
    with ext4.Layout(image) as layout:
        many = layout.lookup("many")
    _index_directory(image, many)
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


class _BaseCache:
    """Base images of one corpus seed, built on first use in a private work directory."""

    def __init__(self, seed: int, work: Path) -> None:
        self.seed, self.work = seed, work
        self._bases: dict[str, _Base] = {}

    def get(self, profile: Profile) -> _Base:
        if profile.name not in self._bases:
            work = self.work / profile.name
            work.mkdir()
            path = build_base(profile, self.seed, work)
            layout = ext4.Layout(path)
            self._bases[profile.name] = _Base(profile, path, file_sha256(path), layout, _facts(layout, profile))
        return self._bases[profile.name]

    def close(self) -> None:
        for base in self._bases.values():
            base.layout.close()


# ---------------------------------------------------------------- htree construction


def _index_directory(image: Path, number: int) -> None:
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


# ---------------------------------------------------------------- writing and replaying bytes


class _Image:
    """An image file being corrupted: every write is recorded as (offset, old bytes, new bytes)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self._fd).st_size
        self.writes: list[dict[str, Any]] = []

    def close(self) -> None:
        os.close(self._fd)

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        return data + bytes(size - len(data))

    def put(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ImageError(f"refusing to write {len(data)} bytes at offset {offset}, outside the {self.size}-byte "
                             "image: a corpus generator bug (please report it with the seed)")
        old = self.read(offset, len(data))
        for start, end in _diff_runs(old, data):
            os.pwrite(self._fd, data[start:end], offset + start)
            self.writes.append({"offset": offset + start, "old": old[start:end].hex(), "new": data[start:end].hex()})

    def replay(self, write: dict[str, Any], where: str) -> None:
        new, old = bytes.fromhex(write["new"]), bytes.fromhex(write["old"])
        if write["offset"] + len(new) > self.size or self.read(write["offset"], len(old)) != old:
            raise ImageError(f"{where}: bytes at offset {write['offset']} differ from the manifest's 'old' value; "
                             "the base image was not rebuilt identically (compare `mke2fs -V` with the manifest)")
        os.pwrite(self._fd, new, write["offset"])


def _diff_runs(old: bytes, new: bytes, gap: int = 8) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        if a == b:
            continue
        if runs and i - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


def _data_runs(fd: int, size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of a file that hold data; the rest are holes that read as zeros."""
    runs, position = [], 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        runs.append((start, end))
        position = end
    return runs


def _sparse_copy(source: Path, target: Path) -> None:
    size = source.stat().st_size
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.truncate(size)
        for start, end in _data_runs(src.fileno(), size):
            for at in range(start, end, _CHUNK):
                os.pwrite(dst.fileno(), os.pread(src.fileno(), min(_CHUNK, end - at), at), at)


def file_sha256(path: Path) -> str:
    """sha256 of a (sparse) file, hashing holes from memory instead of reading them."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle:
        position = 0
        for start, end in [*_data_runs(handle.fileno(), size), (size, size)]:
            for at in range(position, start, _CHUNK):
                digest.update(_ZEROS[:min(_CHUNK, start - at)])
            for at in range(start, end, _CHUNK):
                digest.update(os.pread(handle.fileno(), min(_CHUNK, end - at), at))
            position = end
    return digest.hexdigest()


# ---------------------------------------------------------------- mutation primitives

Fixer = Callable[[bytes], bytes]


@dataclass
class _Ctx:
    img: _Image
    layout: ext4.Layout
    rng: random.Random
    profile: Profile
    facts: dict[str, int]

    @property
    def bs(self) -> int:
        return self.layout.block_size


def _mode(ctx: _Ctx, covered: bool) -> str:
    """Whether this mutation recomputes the checksum that covers it ("none" when nothing covers it)."""
    if not covered:
        return "none"
    return "recomputed" if ctx.rng.random() < 0.6 else "stale"


def _pick(rng: random.Random, values: Sequence[int], old: int, width: int) -> int:
    top = (1 << (8 * width)) - 1
    choices = [v & top for v in values if v & top != old]
    return rng.choice(choices) if choices else old ^ 1


def _hostile(rng: random.Random, old: int, width: int, extra: Sequence[int] = ()) -> int:
    """A value for an integer field that is not `old`: edges, neighbours, a flipped bit, or `extra`."""
    top = (1 << (8 * width)) - 1
    pool = [0, 1, old + 1, old - 1, old * 2, old ^ (1 << rng.randrange(8 * width)), top, top - 1,
            1 << (8 * width - 1), rng.randrange(top + 1), *extra, *extra]
    return _pick(rng, pool, old, width)


def _cur(ctx: _Ctx, at: int, width: int, big: bool = False) -> int:
    return int.from_bytes(ctx.img.read(at, width), "big" if big else "little")


def _write_struct(ctx: _Ctx, at: int, size: int, edit: Callable[[bytearray], None], fix: Fixer | None,
                  mode: str | None = None) -> str:
    """Edit the structure at `at`, recompute its checksum or leave it stale; returns the checksum mode."""
    raw = bytearray(ctx.img.read(at, size))
    edit(raw)
    used = mode if fix is not None and mode else _mode(ctx, fix is not None)
    ctx.img.put(at, fix(bytes(raw)) if used == "recomputed" and fix is not None else bytes(raw))
    return used


def _set(ctx: _Ctx, structure: str, at: int, size: int, field_at: int, width: int, value: int | bytes,
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

    used = _write_struct(ctx, at, size, edit, fix, mode)
    if isinstance(value, bytes):
        old: int | str = old_bytes.hex()
        new: int | str = new_bytes.hex()
    else:
        old, new = int.from_bytes(old_bytes, order), int.from_bytes(new_bytes, order)
    return {"structure": structure, "field": name, "offset": field_at, "old": old, "new": new, "checksum": used}


def _sb_fix(ctx: _Ctx) -> Fixer | None:
    return ctx.layout.fix_superblock if ctx.layout.metadata_csum else None


def _inode_fix(ctx: _Ctx, number: int) -> Fixer | None:
    layout = ctx.layout
    return (lambda raw: layout.fix_inode(number, raw)) if layout.metadata_csum else None


def _gd_fix(ctx: _Ctx, group: int) -> Fixer | None:
    layout = ctx.layout
    if layout.metadata_csum or layout.sb.has("uninit_bg"):
        return lambda raw: layout.fix_group_desc(group, raw)
    return None


def _sb_set(ctx: _Ctx, name: str, value: int | bytes, mode: str | None = None) -> Entry:
    off, width = ext4.SB_FIELDS[name]
    at = ext4.SUPERBLOCK_OFFSET
    return _set(ctx, "superblock", at, ext4.SUPERBLOCK_SIZE, at + off, width, value, _sb_fix(ctx), name, mode=mode)


def _inode_set(ctx: _Ctx, number: int, name: str, value: int | bytes, role: str = "", mode: str | None = None) -> Entry:
    off, width = ext4.INODE_FIELDS[name]
    at = ctx.layout.inode_offset(number)
    label = f"inode {number} ({role})" if role else f"inode {number}"
    return _set(ctx, label, at, ctx.layout.sb.inode_size, at + off, width, value, _inode_fix(ctx, number), name,
                mode=mode)


def _inode_get(ctx: _Ctx, number: int, name: str) -> int:
    off, width = ext4.INODE_FIELDS[name]
    return _cur(ctx, ctx.layout.inode_offset(number) + off, width)


def _role(ctx: _Ctx, roles: Sequence[str], test: Callable[[ext4.Inode], bool] = lambda inode: True) -> tuple[str, int]:
    present = [(r, ctx.facts[r]) for r in roles if r in ctx.facts and test(ctx.layout.inode(ctx.facts[r]))]
    return ctx.rng.choice(present)


def _first_block(ctx: _Ctx, number: int) -> int:
    return ctx.layout.file_blocks(ctx.layout.inode(number))[0][1]


# ---------------------------------------------------------------- superblock, features, groups, bitmaps

_SB_VALUES: dict[str, tuple[int, ...]] = {
    "s_inodes_count": (), "s_blocks_count_lo": (), "s_r_blocks_count_lo": (), "s_free_blocks_count_lo": (),
    "s_free_inodes_count": (), "s_first_data_block": (0, 1, 2), "s_log_block_size": (0, 1, 2, 3, 6, 7, 31),
    "s_log_cluster_size": (0, 2, 4, 6, 31), "s_blocks_per_group": (8, 1024, 65536), "s_clusters_per_group": (8, 65536),
    "s_inodes_per_group": (8, 4095, 65536), "s_rev_level": (0, 2), "s_state": (0, 2, 4), "s_errors": (0, 3),
    "s_first_ino": (0, 1, 2, 5, 8), "s_inode_size": (0, 64, 127, 129, 512, 1024, 2048),
    "s_desc_size": (0, 16, 33, 63, 128, 1024), "s_reserved_gdt_blocks": (), "s_journal_inum": (0, 2, 11),
    "s_journal_dev": (0x0801,), "s_def_hash_version": (3, 6), "s_log_groups_per_flex": (0, 31, 64),
    "s_min_extra_isize": (3, 200), "s_want_extra_isize": (3, 200), "s_checksum_type": (0, 2),
    "s_overhead_clusters": (), "s_first_meta_bg": (), "s_raid_stride": (), "s_raid_stripe_width": (),
    "s_lpf_ino": (2, 8), "s_blocks_count_hi": (1,), "s_flags": (), "s_first_error_ino": (2,), "s_mount_opts": (),
}
_MOUNT_OPTS = (b"errors=panic", b"journal_path=/dev/vda", b"A" * 64, b"data=journal,dax,nodelalloc", b"usrjquota=\xff")


def _m_superblock(ctx: _Ctx) -> Entry:
    name = ctx.rng.choice(list(_SB_VALUES))
    if name == "s_mount_opts":
        return _sb_set(ctx, name, ctx.rng.choice(_MOUNT_OPTS))
    off, width = ext4.SB_FIELDS[name]
    old = _cur(ctx, ext4.SUPERBLOCK_OFFSET + off, width)
    return _sb_set(ctx, name, _hostile(ctx.rng, old, width, _SB_VALUES[name]))


def _m_features(ctx: _Ctx) -> Entry:
    rng = ctx.rng
    group = rng.choice(("compat", "incompat", "ro_compat"))
    known = [(name, bit) for name, (where, bit) in ext4.FEATURES.items() if where == group]
    if rng.random() < 0.8:
        name, bit = rng.choice(known)
    else:
        bit = 1 << rng.randrange(20, 32)
        name = f"unknown {group} bit {bit:#x}"
    field = ext4.FEATURE_FIELDS[group]
    old = _cur(ctx, ext4.SUPERBLOCK_OFFSET + ext4.SB_FIELDS[field][0], 4)
    record = _sb_set(ctx, field, old ^ bit)
    record["detail"] = {"feature": name, "action": "clear" if old & bit else "set"}
    return record


def _m_group_desc(ctx: _Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    group = layout.groups[0 if rng.random() < 0.6 else rng.randrange(len(layout.groups))]
    names = [n for n, (off, width) in ext4.GD_FIELDS.items()
             if off + width <= len(group.raw) and "csum" not in n and n != "bg_checksum"]
    name = rng.choice(names)
    off, width = ext4.GD_FIELDS[name]
    sb = layout.sb
    blocks = (0, 1, sb["s_first_data_block"], layout.gdt_offset // layout.block_size, layout.groups[-1].inode_table,
              sb.blocks_count - 1, sb.blocks_count + 10, group.block_bitmap, group.inode_table, group.inode_bitmap)
    extra: Sequence[int] = ()
    if name.endswith("bitmap_lo") or name == "bg_inode_table_lo":
        extra = blocks
    elif name == "bg_flags":
        extra = (1, 2, 4, 3, 7)
    elif name.startswith("bg_itable_unused"):
        extra = (sb["s_inodes_per_group"], sb["s_inodes_per_group"] + 1)
    value = _hostile(rng, _cur(ctx, group.offset + off, width), width, extra)
    return _set(ctx, f"group descriptor {group.number}", group.offset, len(group.raw), group.offset + off, width,
                value, _gd_fix(ctx, group.number), name)


def _edit_bitmap(raw: bytearray, action: str, rng: random.Random) -> None:
    bits = len(raw) * 8
    if action == "set_all":
        raw[:] = b"\xff" * len(raw)
    elif action == "clear_all":
        raw[:] = bytes(len(raw))
    elif action == "clear_used":
        used = [i for i in range(bits) if raw[i // 8] >> (i % 8) & 1]
        for i in rng.sample(used, min(len(used), rng.randint(1, 64))):
            raw[i // 8] &= ~(1 << (i % 8)) & 0xFF
    else:
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(bits)
            raw[i // 8] ^= 1 << (i % 8)


def _m_bitmap(ctx: _Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    which = rng.choice(("block", "inode"))
    groups = [g for g in layout.groups if not g.flags & (2 if which == "block" else 1)]
    group = groups[0] if rng.random() < 0.6 else rng.choice(groups)
    block = group.block_bitmap if which == "block" else group.inode_bitmap
    at, size = block * layout.block_size, layout.bitmap_size(which)
    raw = bytearray(ctx.img.read(at, size))
    before = sum(bin(b).count("1") for b in raw)
    action = rng.choice(("clear_used", "set_all", "clear_all", "flip_bits"))
    _edit_bitmap(raw, action, rng)
    mode = _mode(ctx, layout.metadata_csum)
    ctx.img.put(at, bytes(raw))
    if mode == "recomputed":
        desc = layout.fix_bitmap(which, ctx.img.read(group.offset, len(group.raw)), bytes(raw))
        ctx.img.put(group.offset, layout.fix_group_desc(group.number, desc))
    return {"structure": f"{which} bitmap of group {group.number}", "field": action, "offset": at, "old": before,
            "new": sum(bin(b).count("1") for b in raw), "checksum": mode}


# ---------------------------------------------------------------- inodes, block maps, extents

_INODE_ROLES = ("root", "lost+found", "dir", "sub", "small", "medium", "sparse", "large", "empty", "null", "fifo",
                "many", "unused")
_SPECIAL_INODES = {"bad blocks": 1, "resize": 7, "journal": 8}
_FLAG_BITS = (ext4.EXTENTS_FL, ext4.INDEX_FL, ext4.INLINE_DATA_FL, ext4.EA_INODE_FL, 0x40000, 0x10, 0x20, 0x800,
              0x100000, ext4.CASEFOLD_FL, 0x2000000, 0x80000000, 0x4000, 0x20000, 0x20000000)
_MODES = (0x81A4, 0x41ED, 0xA1FF, 0xC1A4, 0x11A4, 0x21A4, 0x61A4, 0, 0xF1FF, 0x89ED)


def _inode_value(ctx: _Ctx, name: str, old: int, width: int) -> int:
    layout, rng = ctx.layout, ctx.rng
    if name == "i_mode":
        return _pick(rng, _MODES, old, width)
    if name == "i_flags":
        return old ^ rng.choice(_FLAG_BITS)
    extra = {
        "i_links_count": (0, 1, 2, 0xFFFF), "i_size_lo": (layout.block_size - 1, 60, 61, 0xFFFFFFFF),
        "i_size_high": (1, 0x7FFFFFFF, 0xFFFFFFFF), "i_extra_isize": (1, 3, 4, 28, 0x80, 0xFFFF),
        "i_dtime": (FAKE_TIME, 1), "i_file_acl_lo": (1, layout.groups[0].inode_table, layout.sb.blocks_count + 1),
    }.get(name, ())
    return _hostile(rng, old, width, extra)


def _m_inode(ctx: _Ctx) -> Entry:
    rng, layout = ctx.rng, ctx.layout
    if rng.random() < 0.2:
        specials = [(n, i) for n, i in _SPECIAL_INODES.items() if layout.inode(i).mode or i == 1]
        role, number = rng.choice(specials)
    else:
        role, number = _role(ctx, _INODE_ROLES)
    names = ["i_mode", "i_size_lo", "i_size_high", "i_links_count", "i_flags", "i_file_acl_lo", "i_blocks_lo",
             "i_dtime", "i_generation"] + (["i_extra_isize"] if layout.sb.inode_size > 128 else [])
    name = rng.choice(names)
    old = _inode_get(ctx, number, name)
    return _inode_set(ctx, number, name, _inode_value(ctx, name, old, ext4.INODE_FIELDS[name][1]), role)


def _m_i_block(ctx: _Ctx) -> Entry:
    layout, rng, bs = ctx.layout, ctx.rng, ctx.bs
    role, number = _role(ctx, ("large", "large", "medium", "dir", "root", "small"),
                         lambda inode: not inode.flags & (ext4.EXTENTS_FL | ext4.INLINE_DATA_FL))
    inode = layout.inode(number)
    pointers = struct.unpack("<15I", inode.i_block)
    targets = (0, 1, layout.groups[0].inode_table, layout.sb.blocks_count + 7, 0xFFFFFFFF, _first_block(ctx, 2))
    ops = ["direct", "tind_garbage"] + (["ind_self", "dind_to_ind", "indirect_slot"] if pointers[12] else [])
    op = rng.choice(ops)
    label, isize, fix = f"inode {number} ({role})", layout.sb.inode_size, _inode_fix(ctx, number)
    if op in ("direct", "tind_garbage", "dind_to_ind"):
        slot = rng.randrange(12) if op == "direct" else (14 if op == "tind_garbage" else 13)
        value = {"direct": rng.choice(targets), "dind_to_ind": pointers[12],
                 "tind_garbage": rng.randrange(layout.sb["s_first_data_block"] + 1, layout.sb.blocks_count)}[op]
        record = _set(ctx, label, inode.offset, isize, inode.offset + 0x28 + 4 * slot, 4, value, fix, f"i_block[{slot}]")
    else:
        ind = pointers[12]
        slot = 0 if op == "ind_self" else rng.randrange(bs // 4)
        value = ind if op == "ind_self" else rng.choice(targets)
        record = _set(ctx, f"indirect block {ind} of inode {number}", ind * bs, bs, ind * bs + 4 * slot, 4, value,
                      None, f"slot[{slot}]")
    record["detail"] = {"operation": op}
    return record


def _node_struct(ctx: _Ctx, inode: ext4.Inode, node: ext4.ExtentNode) -> tuple[str, int, int, Fixer | None]:
    layout = ctx.layout
    if node.block is None:
        return f"extent root in inode {inode.number}", inode.offset, layout.sb.inode_size, _inode_fix(ctx, inode.number)
    fix = (lambda raw: layout.fix_extent_block(inode, raw)) if layout.metadata_csum else None
    return f"extent block {node.block} of inode {inode.number}", node.block * ctx.bs, ctx.bs, fix


def _extent_header(ctx: _Ctx, inode: ext4.Inode, node: ext4.ExtentNode) -> Entry:
    name = ctx.rng.choice(("eh_magic", "eh_entries", "eh_max", "eh_depth"))
    values = {"eh_magic": (0, 0xF30B), "eh_entries": (0, node.max + 1, 0xFFFF),
              "eh_max": (0, max(node.entries - 1, 0), node.max + 10, 0xFFFF),
              "eh_depth": (node.depth + 1, 0, 5, 6, 0xFFFF)}[name]
    off, width = ext4.EXTENT_HEADER_FIELDS[name]
    label, at, size, fix = _node_struct(ctx, inode, node)
    value = _pick(ctx.rng, values, _cur(ctx, node.offset + off, width), width)
    return _set(ctx, label, at, size, node.offset + off, width, value, fix, name)


def _extent_entry(ctx: _Ctx, inode: ext4.Inode, node: ext4.ExtentNode, op: str) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    item = rng.choice(node.items) if op != "overlap" else node.items[1]
    other = ctx.facts["root"] if inode.number != ctx.facts["root"] else ctx.facts["dir"]
    metadata = (0, 1, layout.groups[0].inode_table, layout.groups[0].block_bitmap, _first_block(ctx, other))
    values: Sequence[int]
    if node.depth:
        name, values = "ei_leaf_lo", (*metadata, layout.sb.blocks_count + 3, 0xFFFFFFFF)
    elif op == "overlap":
        first = node.items[0][0]
        name, values = "ee_block", (first, first + 1, 0xFFFFFFFF)
    elif op == "cross_link":
        name, values = "ee_start_lo", metadata
    else:
        name = rng.choice(("ee_len", "ee_start_lo", "ee_start_hi", "ee_block"))
        values = {"ee_len": (0, 32768, 32769, 0xFFFF, item[1] * 1000), "ee_start_hi": (1, 0xFFFF),
                  "ee_start_lo": (*metadata, layout.sb.blocks_count + 3, 0xFFFFFFFF),
                  "ee_block": (0xFFFFFFFF, 0x7FFFFFFF, item[0] + 1)}[name]
    table = ext4.INDEX_FIELDS if node.depth else ext4.EXTENT_FIELDS
    off, width = table[name]
    label, at, size, fix = _node_struct(ctx, inode, node)
    value = _pick(rng, values, _cur(ctx, item[3] + off, width), width)
    record = _set(ctx, label, at, size, item[3] + off, width, value, fix, name)
    record["detail"] = {"operation": op}
    return record


def _extent_loop(ctx: _Ctx, inode: ext4.Inode, root: ext4.ExtentNode) -> Entry:
    """Deepen the root by one and turn its first child into an index node that points at itself."""
    layout = ctx.layout
    child = root.items[0][2]
    fix = (lambda raw: layout.fix_extent_block(inode, raw)) if layout.metadata_csum else None
    mode = _mode(ctx, fix is not None)
    record = _set(ctx, f"extent root in inode {inode.number}", inode.offset, layout.sb.inode_size, root.offset + 6, 2,
                  root.depth + 1, _inode_fix(ctx, inode.number), "eh_depth", mode=mode)

    def edit(raw: bytearray) -> None:
        limit = struct.unpack_from("<H", raw, 4)[0]
        struct.pack_into("<HHHH", raw, 0, ext4.EXTENT_MAGIC, 1, limit, root.depth)
        struct.pack_into("<IIHH", raw, 12, root.items[0][0], child & 0xFFFFFFFF, child >> 32, 0)

    _write_struct(ctx, child * ctx.bs, ctx.bs, edit, fix, mode)
    record.update(field="index loop", detail={"operation": "loop", "block": child})
    return record


def _m_extent(ctx: _Ctx) -> Entry:
    rng = ctx.rng
    _, number = _role(ctx, ("sparse", "sparse", "medium", "root", "many", "large", "dir", "sub"),
                      lambda inode: bool(inode.flags & ext4.EXTENTS_FL))
    inode = ctx.layout.inode(number)
    nodes = ctx.layout.extent_nodes(inode)
    leaves = [n for n in nodes if n.depth == 0 and n.items]
    ops = ["header", "header", "entry", "cross_link"] + (["overlap"] if any(len(n.items) > 1 for n in leaves) else [])
    ops += ["index", "loop"] if nodes[0].depth else []
    op = rng.choice(ops)
    if op == "header":
        return _extent_header(ctx, inode, rng.choice(nodes))
    if op == "loop":
        return _extent_loop(ctx, inode, nodes[0])
    if op == "index":
        return _extent_entry(ctx, inode, rng.choice([n for n in nodes if n.depth]), op)
    pool = [n for n in leaves if len(n.items) > 1] if op == "overlap" else leaves
    return _extent_entry(ctx, inode, rng.choice(pool), op)


# ---------------------------------------------------------------- directories and htrees


def _dir_fix(ctx: _Ctx, inode: ext4.Inode, entry: ext4.DirEntry) -> Fixer | None:
    layout = ctx.layout
    if not layout.metadata_csum:
        return None
    tree = layout.htree(inode)
    if tree and entry.block == tree.nodes[0].block:
        return lambda raw: layout.fix_dx_block(inode, raw, 0x20)
    return lambda raw: layout.fix_dir_leaf(inode, raw)


def _dirent_value(ctx: _Ctx, number: int, entry: ext4.DirEntry, name: str) -> int:
    sb = ctx.layout.sb
    values = {
        "rec_len": (0, 4, 7, max(8, entry.name_len + 4), entry.rec_len + 4, ctx.bs, ctx.bs + 12, 0xFFFF,
                    entry.rec_len - 1),
        "name_len": (0, 255, entry.rec_len - 7, entry.name_len + 1),
        "inode": (0, 1, 7, 8, number, 2, sb["s_inodes_count"] + 1, 0xFFFFFFFF, ctx.facts["small"], ctx.facts["dir"]),
        "file_type": (0, 1, 2, 7, 8, 0xFF),
    }[name]
    return _pick(ctx.rng, values, getattr(entry, name), ext4.DIRENT_FIELDS[name][1])


def _m_dirent(ctx: _Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    role, number = _role(ctx, ("root", "root", "dir", "sub", "deep", "lost+found", "many", "cf"),
                         lambda inode: not inode.flags & ext4.INLINE_DATA_FL)
    inode = layout.inode(number)
    entry = rng.choice([e for e in layout.dir_entries(inode) if e.block >= 0])
    at, fix = entry.block * ctx.bs, _dir_fix(ctx, inode, entry)
    label = f"directory block {entry.block} of inode {number} ({role}), entry {entry.name.decode(errors='replace')!r}"
    name = rng.choice(("rec_len", "rec_len", "name_len", "inode", "inode", "file_type", "name"))
    if name == "name":
        new = rng.choice((b"/", b"\0", b".", b"..", b"\xff")) + entry.name[1:]
        return _set(ctx, label, at, ctx.bs, entry.offset + 8, max(entry.name_len, 1), new, fix, "name")
    off, width = ext4.DIRENT_FIELDS[name]
    return _set(ctx, label, at, ctx.bs, entry.offset + off, width, _dirent_value(ctx, number, entry, name), fix, name)


def _m_htree(ctx: _Ctx) -> Entry:
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
        values = (0, 1, node.limit + 1, 0xFFFF, node.count - 1) if name == "limit" else (0, node.limit + 1, 0xFFFF, node.count + 1)
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
    value = _pick(rng, values, _cur(ctx, field_at, width), width)
    return _set(ctx, f"htree {'root' if node.logical == 0 else 'node'} block {node.block} of inode {inode.number}",
                at, size, field_at, width, value, fix, name)


# ---------------------------------------------------------------- xattrs, symlinks, inline data, casefold, quota

_XATTR_VALUES: dict[str, tuple[int, ...]] = {
    "h_magic": (0, ext4.XATTR_MAGIC + 1, 0xEA010000), "h_refcount": (0, 2, 1024, 0xFFFFFFFF), "h_blocks": (0, 2, 0xFFFF),
    "h_hash": (0xDEADBEEF,), "e_name_len": (0, 255), "e_name_index": (0, 7, 9, 0xFF), "e_value_inum": (1, 2, 11, 0xFFFFFFFF),
    "e_hash": (0xDEADBEEF,),
}


def _xattr_entry_values(ctx: _Ctx, region: ext4.XattrRegion, entry: ext4.XattrEntry, name: str) -> tuple[int, ...]:
    bs = ctx.bs
    if name == "e_value_offs":
        others = [e.value_offs for e in region.entries if e.value_offs != entry.value_offs]
        return (0, 2, 8, bs - 2, bs + 8, 0xFFFF, *others[:1])
    if name == "e_value_size":
        return (0, bs, 2 * bs, 0xFFFF, 0xFFFFFFFF, 65537, entry.value_size + 1)
    if name == "e_name_len":
        return (0, 255, len(entry.name) + 40)
    return _XATTR_VALUES[name]


def _xattr_region(ctx: _Ctx, region: ext4.XattrRegion, at: int, size: int, fix: Fixer | None, label: str) -> Entry:
    rng = ctx.rng
    ops = ["entry", "entry", "header" if region.block is not None else "magic"]
    if region.end + 4 <= at + size:
        ops.append("terminator")
    op = rng.choice(ops)
    if op == "terminator":
        return _set(ctx, label, at, size, region.end, 4, rng.choice((b"\xff" * 4, b"\x10\x01\x00\x00")), fix, "terminator")
    if op == "magic":
        return _set(ctx, label, at, size, region.offset, 4, rng.choice((0, ext4.XATTR_MAGIC ^ 1)), fix, "h_magic")
    if op == "header":
        name = rng.choice(("h_magic", "h_refcount", "h_blocks", "h_hash"))
        off, width = ext4.XATTR_HEADER_FIELDS[name]
        field_at, values = region.offset + off, _XATTR_VALUES[name]
    else:
        entry = rng.choice(region.entries)
        name = rng.choice(list(ext4.XATTR_ENTRY_FIELDS))
        off, width = ext4.XATTR_ENTRY_FIELDS[name]
        field_at, values = entry.offset + off, _xattr_entry_values(ctx, region, entry, name)
        name = f"{name} of {entry.name.decode(errors='replace')!r}"
    value = _pick(rng, values, _cur(ctx, field_at, width), width)
    return _set(ctx, label, at, size, field_at, width, value, fix, name)


def _m_xattr(ctx: _Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    options = ["block", "block"]
    if layout.ibody_xattrs(layout.inode(ctx.facts["small"])):
        options.append("ibody")
    if "ea" in ctx.facts:
        options += ["ea_inode", "ea_inode"]
    target = rng.choice(options)
    if target == "ea_inode":
        name = rng.choice(("i_flags", "i_size_lo", "i_links_count", "i_atime", "i_ctime"))
        old = _inode_get(ctx, ctx.facts["ea"], name)
        value = old & ~ext4.EA_INODE_FL if name == "i_flags" else _hostile(rng, old, ext4.INODE_FIELDS[name][1])
        return _inode_set(ctx, ctx.facts["ea"], name, value, "EA inode of dir/sub/large.bin")
    if target == "ibody":
        inode = layout.inode(ctx.facts["small"])
        region = layout.ibody_xattrs(inode)
        assert region is not None
        return _xattr_region(ctx, region, inode.offset, layout.sb.inode_size, _inode_fix(ctx, inode.number),
                             f"in-inode xattrs of inode {inode.number}")
    inode = layout.inode(ctx.facts["medium"])
    block = layout.xattr_block(inode)
    if block is None or block.block is None:
        raise ImageError(f"dir/medium.bin of {ctx.profile.name} should have an xattr block: a corpus generator bug")
    number = block.block
    fix = (lambda raw: layout.fix_xattr_block(number, raw)) if layout.metadata_csum else None
    return _xattr_region(ctx, block, block.offset, ctx.bs, fix, f"xattr block {number}")


def _m_symlink(ctx: _Ctx) -> Entry:
    layout, rng, bs = ctx.layout, ctx.rng, ctx.bs
    role, number = rng.choice([("fast", ctx.facts["fast"]), ("slow", ctx.facts["slow"])])
    inode = layout.inode(number)
    has_block = bool(layout.file_blocks(inode))
    op = rng.choice(("size", "size", "flags", "target", "blocks"))
    if op == "size":
        values = (0, 59, 60, 61, 200, 4096, 0xFFFFFFFF) if role == "fast" else (0, 59, 60, bs, bs + 1, 0xFFFFFFFF)
        return _inode_set(ctx, number, "i_size_lo", _pick(rng, values, inode.size & 0xFFFFFFFF, 4), role)
    if op == "flags":
        bit = rng.choice((ext4.EXTENTS_FL, ext4.INLINE_DATA_FL, ext4.EA_INODE_FL))
        return _inode_set(ctx, number, "i_flags", inode.flags ^ bit, role)
    if op == "blocks":
        return _inode_set(ctx, number, "i_blocks_lo", 0 if inode["i_blocks_lo"] else 8, role)
    text = (b"../" * ((inode.size + 40) // 3 + 1))
    if has_block:
        block = layout.file_blocks(inode)[0][1]
        size = min(len(text), bs)
        return _set(ctx, f"symlink block {block} of inode {number} ({role})", block * bs, bs, block * bs, size,
                    text[:size], None, "target")
    return _inode_set(ctx, number, "i_block", text[:60], role)


def _m_inline_data(ctx: _Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    role, number = _role(ctx, ("small", "tiny", "dir", "slow", "sub"), lambda i: bool(i.flags & ext4.INLINE_DATA_FL))
    inode = layout.inode(number)
    region = layout.ibody_xattrs(inode)
    data = [e for e in (region.entries if region else ()) if e.name_index == 7 and e.name == b"data"]
    ops = ["size", "clear_flag", "set_flag"] + (["system_data"] if data else [])
    ops += ["dir_parent", "dir_rec_len"] if inode.is_type(ext4.S_IFDIR) else []
    op = rng.choice(ops)
    if op == "size":
        return _inode_set(ctx, number, "i_size_lo", _pick(rng, (0, 61, 200, 0xFFFF, 0xFFFFFFFF), inode.size, 4), role)
    if op == "clear_flag":
        return _inode_set(ctx, number, "i_flags", inode.flags & ~ext4.INLINE_DATA_FL, role)
    if op == "set_flag":
        medium = ctx.facts["medium"]
        return _inode_set(ctx, medium, "i_flags", _inode_get(ctx, medium, "i_flags") | ext4.INLINE_DATA_FL, "medium")
    fix, isize = _inode_fix(ctx, number), layout.sb.inode_size
    if op == "system_data":
        name = rng.choice(("e_value_size", "e_value_offs"))
        off, width = ext4.XATTR_ENTRY_FIELDS[name]
        values = (0xFFFF, 200, 0xFFFFFFFF, 4096) if name == "e_value_size" else (0, 2, 0xFFFF)
        value = _pick(rng, values, _cur(ctx, data[0].offset + off, width), width)
        return _set(ctx, f"inode {number} ({role})", inode.offset, isize, data[0].offset + off, width, value, fix,
                    f"system.data {name}")
    if op == "dir_parent":
        value = _pick(rng, (0, 0xFFFFFFFF, number, 8), _cur(ctx, inode.offset + 0x28, 4), 4)
        return _set(ctx, f"inode {number} ({role})", inode.offset, isize, inode.offset + 0x28, 4, value, fix,
                    "inline dir parent")
    value = _pick(rng, (0, 4, 57, 0xFFFF), _cur(ctx, inode.offset + 0x28 + 8, 2), 2)
    return _set(ctx, f"inode {number} ({role})", inode.offset, isize, inode.offset + 0x28 + 8, 2, value, fix,
                "inline dir first rec_len")


def _m_casefold(ctx: _Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    op = rng.choice(("s_encoding", "s_encoding_flags", "clear_dir_flag", "flag_on_root", "flag_on_file", "bad_name"))
    if op in ("s_encoding", "s_encoding_flags"):
        values = (0, 2, 0xFFFF) if op == "s_encoding" else (1, 2, 0xFFFF)
        return _sb_set(ctx, op, _pick(rng, values, layout.sb[op], 2))
    if op != "bad_name":
        role = {"clear_dir_flag": "cf", "flag_on_root": "root", "flag_on_file": "small"}[op]
        number = ctx.facts[role]
        flags = _inode_get(ctx, number, "i_flags")
        value = flags & ~ext4.CASEFOLD_FL if op == "clear_dir_flag" else flags | ext4.CASEFOLD_FL
        return _inode_set(ctx, number, "i_flags", value, role)
    inode = layout.inode(ctx.facts["cf"])
    entry = next(e for e in layout.dir_entries(inode) if e.name == b"MixedCase.TXT")
    name = rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80")) + entry.name[3:]
    return _set(ctx, f"directory block {entry.block} of inode {inode.number} (cf)", entry.block * ctx.bs, ctx.bs,
                entry.offset + 8, entry.name_len, name, _dir_fix(ctx, inode, entry), "name (invalid UTF-8)")


_QUOTA_HEADER = {"dqh_magic": 0, "dqh_version": 4, "dqi_bgrace": 8, "dqi_blocks": 20, "dqi_free_blk": 24,
                 "dqi_free_entry": 28}


def _m_quota(ctx: _Ctx) -> Entry:
    layout, rng, bs = ctx.layout, ctx.rng, ctx.bs
    field = rng.choice(("s_usr_quota_inum", "s_grp_quota_inum"))
    number = layout.sb[field]
    op = rng.choice(("inum", "inode", "header", "header", "tree"))
    if op == "inum":
        values = (0, 2, 5, 8, 11, ctx.facts["small"], 0xFFFFFFFF)
        return _sb_set(ctx, field, _pick(rng, values, number, 4))
    if op == "inode":
        name = rng.choice(("i_size_lo", "i_flags", "i_links_count", "i_mode"))
        old = _inode_get(ctx, number, name)
        value = {"i_flags": old ^ ext4.EXTENTS_FL, "i_mode": 0x41ED, "i_links_count": 0}.get(
            name, _pick(rng, (0, 1, 0xFFFFFFFF), old, 4))
        return _inode_set(ctx, number, name, value, field[2:5] + " quota")
    blocks = layout.file_blocks(layout.inode(number))
    if op == "tree" and len(blocks) > 1:
        block = blocks[1][1]
        refs = struct.unpack(f"<{bs // 4}I", layout.block(block))
        slot = next((i for i, ref in enumerate(refs) if ref), 0)
        value = _pick(rng, (0, 1, 0xFFFFFFFF, len(blocks) + 5), refs[slot], 4)
        return _set(ctx, f"quota tree block {block}", block * bs, bs, block * bs + 4 * slot, 4, value, None,
                    f"ref[{slot}]")
    block = blocks[0][1]
    name = rng.choice(list(_QUOTA_HEADER))
    at = block * bs + _QUOTA_HEADER[name]
    return _set(ctx, f"quota file header block {block}", block * bs, bs, at, 4, _hostile(rng, _cur(ctx, at, 4), 4),
                None, name)


# ---------------------------------------------------------------- journal, orphans, MMP, bit flips

_JSB_VALUES: dict[str, tuple[int, ...]] = {
    "h_magic": (0, ext4.JBD2_MAGIC + 1), "h_blocktype": (1, 2, 3, 5, 0xFF), "s_blocksize": (0, 512, 65536, 0xFFFFFFFF),
    "s_maxlen": (0, 1, 10, 0xFFFFFFFF), "s_first": (0, 0xFFFFFFFF), "s_sequence": (0, 0xFFFFFFFF),
    "s_start": (1, 0xFFFFFFFF), "s_errno": (0xFFFFFFFB, 1), "s_feature_compat": (1, 0xFFFFFFFF),
    "s_feature_incompat": (0x2, 0x8, 0x10, 0x18, 0x20, 0x80000000), "s_feature_ro_compat": (1, 0xFFFFFFFF),
    "s_nr_users": (0, 48, 0xFFFFFFFF), "s_max_transaction": (0, 1), "s_num_fc_blks": (0xFFFFFFFF, 1),
    "s_checksum_type": (1, 2, 4, 0xFF),
}


def _set_recover(ctx: _Ctx) -> Entry:
    old = _cur(ctx, ext4.SUPERBLOCK_OFFSET + ext4.SB_FIELDS["s_feature_incompat"][0], 4)
    return _sb_set(ctx, "s_feature_incompat", old | ext4.FEATURES["needs_recovery"][1])


def _m_journal_sb(ctx: _Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    journal = layout.journal()
    assert journal is not None
    name = rng.choice(list(_JSB_VALUES))
    off, width = ext4.JSB_FIELDS[name]
    maxlen = journal["s_maxlen"]
    extra = {"s_maxlen": (maxlen * 2, len(journal.blocks) + 1), "s_first": (maxlen, maxlen + 1),
             "s_start": (maxlen - 1, maxlen)}.get(name, ())
    value = _pick(rng, (*_JSB_VALUES[name], *extra), _cur(ctx, journal.sb_offset + off, width, big=True), width)
    csum = journal.csum_v2v3 or (name == "s_feature_incompat" and value & 0x18)
    fix = layout.fix_journal_sb if csum else None
    record = _set(ctx, "journal superblock", journal.sb_offset, 1024, journal.sb_offset + off, width, value, fix,
                  name, big=True)
    if rng.random() < 0.5:
        record["detail"] = {"needs_recovery": _set_recover(ctx)["checksum"]}
    return record


_TXN_VARIANTS = ("clean", "clean", "no_last_tag", "commit_seq", "revoke_target", "revoke_overflow", "escape",
                 "bad_blocktype", "wrap", "start_beyond", "sequence_wrap")


def _txn_payload(ctx: _Ctx, journal: ext4.Journal) -> tuple[int, str, bytes]:
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
    offsets = {"root_dir": _first_block(ctx, 2) * bs, "inode_table": layout.inode_offset(2),
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


def _txn_blocks(ctx: _Ctx, journal: ext4.Journal, variant: str, seq: int, target: int, payload: bytes) -> list[bytes]:
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


def _m_journal_txn(ctx: _Ctx) -> Entry:
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

    _write_struct(ctx, journal.sb_offset, 1024, edit, layout.fix_journal_sb if journal.csum_v2v3 else None)
    recover = _set_recover(ctx)
    return {"structure": "journal", "field": "transaction", "offset": journal.blocks[start] * bs,
            "old": journal["s_start"], "new": new_start, "checksum": recover["checksum"],
            "detail": {"variant": variant, "payload": payload_kind, "target_block": target, "journal_blocks": used,
                       "sequence": seq}}


def _m_orphan(ctx: _Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    count = layout.sb["s_inodes_count"]
    targets = [(r, ctx.facts[r]) for r in ("small", "medium", "dir", "root", "lost+found", "unused", "large", "sparse")]
    targets += [("journal", 8), ("resize", 7), ("bad blocks", 1), ("beyond s_inodes_count", count + 1),
                ("max", 0xFFFFFFFF)]
    role, number = rng.choice(targets)
    record = _sb_set(ctx, "s_last_orphan", number)
    chain = rng.choice(("none", "self_loop", "bogus_next", "root_next", "unlinked")) if number <= count else "none"
    if chain == "unlinked":
        _inode_set(ctx, number, "i_links_count", 0, role)
    elif chain != "none":
        _inode_set(ctx, number, "i_dtime", {"self_loop": number, "bogus_next": 0xFFFFFFFF, "root_next": 2}[chain], role)
    record["detail"] = {"target": role, "chain": chain}
    return record


def _m_mmp(ctx: _Ctx) -> Entry:
    layout, rng = ctx.layout, ctx.rng
    at = layout.mmp_offset()
    assert at is not None
    values: Sequence[int]
    name = rng.choice(("mmp_magic", "mmp_seq", "mmp_seq", "mmp_check_interval", "mmp_nodename", "s_mmp_block",
                       "s_mmp_update_interval"))
    if name.startswith("s_"):
        values = ((0, 1, layout.sb.blocks_count + 1, layout.groups[0].inode_table, 0xFFFFFFFFFFFFFFFF)
                  if name == "s_mmp_block" else (0, 1, 300, 0xFFFF))
        return _sb_set(ctx, name, _pick(rng, values, layout.sb[name], ext4.SB_FIELDS[name][1]))
    fix = layout.fix_mmp if layout.metadata_csum else None
    off, width = ext4.MMP_FIELDS[name]
    if name == "mmp_nodename":
        return _set(ctx, "MMP block", at, 1024, at + off, width, b"\xff" * width, fix, name)
    values = {"mmp_magic": (0, ext4.MMP_MAGIC + 1), "mmp_seq": (0xE24D4D50, 0xE24D4D4F, 0xE24D4D51, 1, 0x12345678),
              "mmp_check_interval": (0, 1, 300, 0xFFFF)}[name]
    return _set(ctx, "MMP block", at, 1024, at + off, width, _pick(rng, values, _cur(ctx, at + off, width), width),
                fix, name)


def _bitflip_regions(ctx: _Ctx) -> list[tuple[str, int, int]]:
    layout, bs = ctx.layout, ctx.bs
    regions = [("superblock", ext4.SUPERBLOCK_OFFSET, ext4.SUPERBLOCK_SIZE),
               ("group descriptors", layout.gdt_offset, len(layout.groups) * layout.sb.desc_size),
               ("inode table", layout.groups[0].inode_table * bs, layout.sb.inode_size * 16),
               ("root directory", _first_block(ctx, 2) * bs, bs),
               ("htree root", _first_block(ctx, ctx.facts["many"]) * bs, bs)]
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


def _m_bitflip(ctx: _Ctx) -> Entry:
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


def _has_checksums(ctx: _Ctx) -> bool:
    return ctx.layout.metadata_csum or ctx.layout.sb.has("uninit_bg")


def _needs(trait: str) -> Callable[[Profile], bool]:
    return lambda profile: trait in profile.traits


def _any(profile: Profile) -> bool:
    return True


# kind: (which profiles it applies to, the mutator)
_KINDS: dict[str, tuple[Callable[[Profile], bool], Callable[[_Ctx], Entry]]] = {
    "superblock": (_any, _m_superblock), "features": (_any, _m_features), "group_desc": (_any, _m_group_desc),
    "bitmap": (_any, _m_bitmap), "inode": (_any, _m_inode), "i_block": (_needs("blockmap"), _m_i_block),
    "extent": (_needs("extent"), _m_extent), "dirent": (_any, _m_dirent), "htree": (_any, _m_htree),
    "xattr": (_any, _m_xattr), "symlink": (_any, _m_symlink), "inline_data": (_needs("inline"), _m_inline_data),
    "casefold": (_needs("casefold"), _m_casefold), "quota": (_needs("quota"), _m_quota),
    "journal_sb": (_needs("journal"), _m_journal_sb), "journal_txn": (_needs("journal"), _m_journal_txn),
    "orphan": (_any, _m_orphan), "mmp": (_needs("mmp"), _m_mmp), "bitflip": (_any, _m_bitflip),
}
KINDS: tuple[str, ...] = tuple(_KINDS)


def applies(kind: str, profile: Profile) -> bool:
    """Whether mutation `kind` can be applied to images of `profile`."""
    return _KINDS[kind][0](profile)


# ---------------------------------------------------------------- generate and regenerate


def _check_arguments(seed: object, count: object) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SettingError(f"corpus seed must be an integer, got {seed!r}: pass --seed N")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise SettingError(f"corpus count must be an integer of at least 1, got {count!r}: pass --count N with N >= 1")


def _mutations(ctx: _Ctx, kind: str) -> list[Entry]:
    rng = ctx.rng
    usable = [k for k in KINDS if applies(k, ctx.profile)]
    out = []
    for chosen in [kind] + [rng.choice(usable) for _ in range(rng.choice((0, 0, 1, 1, 2)))]:
        start = len(ctx.img.writes)
        record = _KINDS[chosen][1](ctx)
        out.append({"kind": chosen, **record, "writes": ctx.img.writes[start:]})
    return out


def _make_image(seed: int, index: int, directory: Path, bases: _BaseCache, version: str) -> Entry:
    image_seed = _derive("image", seed, index)
    rng = random.Random(image_seed)
    kind = KINDS[(_derive("rotation", seed) + index) % len(KINDS)]
    profile = rng.choice([p for p in PROFILES if applies(kind, p)])
    base = bases.get(profile)
    name = f"img-{index:04d}.raw"
    path = directory / name
    _sparse_copy(base.path, path)
    image = _Image(path)
    try:
        mutations = _mutations(_Ctx(image, base.layout, rng, profile, base.facts), kind)
    finally:
        image.close()
    return {"file": name, "index": index, "seed": seed, "image_seed": image_seed, "profile": profile.name,
            "block_size": profile.block_size, "size_mib": profile.size_mib, "features": base.layout.sb.features,
            "mke2fs": mke2fs_args(profile, seed), "tune2fs": list(profile.tune2fs), "e2fsprogs": version,
            "base_sha256": base.sha256, "mutations": mutations, "sha256": file_sha256(path)}


def write_manifest(directory: Path, entries: list[Entry]) -> Path:
    path = Path(directory) / MANIFEST
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in entries))
    os.replace(partial, path)
    return path


def read_manifest(directory: Path) -> list[Entry]:
    """The entries of `directory`/manifest.jsonl, in image order."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise SettingError(f"{path} does not exist: generate the corpus first (`fuselab corpus generate`)")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ImageError(f"{path}:{number} is not JSON ({exc.msg}): regenerate the corpus with the same seed") from exc
    return entries


def generate(seed: int, count: int, directory: Path, progress: Progress | None = None) -> list[Entry]:
    """Write `count` hostile images `img-NNNN.raw` and `manifest.jsonl` into `directory`; same seed, same bytes.

    Image i gets mutation kind KINDS[(r + i) % len(KINDS)] (r derived from the seed) on a profile that kind
    applies to, plus 0-2 random extra mutations. `progress(done, total, file_name)` is called after each
    image. The manifest (not a directory listing) is the list of the corpus's images. Returns its entries."""
    _check_arguments(seed, count)
    version = e2fsprogs_version(find_tool("mke2fs"))
    for tool in TOOLS[1:]:
        find_tool(tool)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    with tempfile.TemporaryDirectory(prefix="fuselab-corpus-") as work:
        bases = _BaseCache(seed, Path(work))
        try:
            for index in range(count):
                entries.append(_make_image(seed, index, directory, bases, version))
                if progress is not None:
                    progress(index + 1, count, entries[-1]["file"])
        finally:
            bases.close()
    write_manifest(directory, entries)
    return entries


def _entry_parts(entry: Entry) -> tuple[Profile, int, str, list[Entry]]:
    try:
        profile, seed, name, mutations = profile_named(entry["profile"]), entry["seed"], entry["file"], entry["mutations"]
    except (KeyError, TypeError) as exc:
        raise SettingError(f"not a corpus manifest entry (missing {exc}): pass one line of {MANIFEST} as a dict") from exc
    if not isinstance(seed, int) or not isinstance(name, str) or "/" in name or name.startswith("."):
        raise SettingError(f"malformed manifest entry for {name!r}: 'seed' must be an int and 'file' a plain file name")
    return profile, seed, name, mutations


def regenerate(entry: Entry, directory: Path) -> Path:
    """Rebuild one image from its manifest entry alone (base from mke2fs, then the recorded writes)."""
    profile, seed, name, mutations = _entry_parts(entry)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with tempfile.TemporaryDirectory(prefix="fuselab-corpus-") as work:
        base = build_base(profile, seed, Path(work))
        if entry.get("base_sha256") not in (None, file_sha256(base)):
            here = e2fsprogs_version(find_tool("mke2fs"))
            raise ImageError(f"the rebuilt base of {name} differs from the manifest's (made with e2fsprogs "
                             f"{entry.get('e2fsprogs')}, this host has {here}): regenerate with that e2fsprogs version")
        _sparse_copy(base, path)
    image = _Image(path)
    try:
        for mutation in mutations:
            for write in mutation["writes"]:
                image.replay(write, name)
    finally:
        image.close()
    if entry.get("sha256") not in (None, file_sha256(path)):
        raise ImageError(f"regenerated {path} does not match the manifest's sha256: the manifest entry was edited "
                         "or this generator version differs; regenerate the whole corpus with `generate`")
    return path
