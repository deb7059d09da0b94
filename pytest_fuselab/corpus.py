"""Deterministic hostile ext4 images: valid bases from mke2fs and debugfs, then seeded, recorded corruptions.

`generate(seed, count, directory)` writes `img-NNNN.raw` files and `manifest.jsonl`; `regenerate(entry,
directory)` rebuilds one image from its manifest entry alone. The host only runs mke2fs, debugfs and
tune2fs on images it has just made, before any corruption; corrupted images are only written to, never
mounted, fscked, loop-attached or opened with debugfs.
"""

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
from typing import Any

from . import ext4layout as ext4
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
            inodes=8192, many=3000),
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
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
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
    src.mkdir()
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
    width = 24 if profile.many > 1000 else 8
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
        "mknod dir/null c 1 3", "mknod dir/fifo p", "ln small.txt dir/hardlink", "sif small.txt links_count 2",
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
    """Make the valid, populated base image of `profile` for corpus `seed` in `work` (an empty directory)."""
    tools = {name: find_tool(name) for name in TOOLS}
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
        self.seed, self.work, self._bases = seed, work, {}  # type: dict[str, _Base]
        self._bases: dict[str, _Base] = {}

    def get(self, profile: Profile) -> _Base:
        if profile.name not in self._bases:
            work = self.work / profile.name
            work.mkdir()
            path = build_base(profile, self.seed, work)
            layout = ext4.Layout(path)
            self._bases[profile.name] = _Base(profile, path, _sha256(path), layout, _facts(layout, profile))
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
        for i, group in enumerate(groups):
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
        self.writes: list[dict[str, Any]] = []

    def close(self) -> None:
        os.close(self._fd)

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        return data + bytes(size - len(data))

    def put(self, offset: int, data: bytes) -> None:
        old = self.read(offset, len(data))
        for start, end in _diff_runs(old, data):
            os.pwrite(self._fd, data[start:end], offset + start)
            self.writes.append({"offset": offset + start, "old": old[start:end].hex(), "new": data[start:end].hex()})

    def replay(self, write: dict[str, Any], where: str) -> None:
        new, old = bytes.fromhex(write["new"]), bytes.fromhex(write["old"])
        if self.read(write["offset"], len(old)) != old:
            raise ImageError(f"{where}: bytes at offset {write['offset']} differ from the manifest's 'old' value; "
                             "the base image was not rebuilt identically (compare `mke2fs -V` with the manifest)")
        os.pwrite(self._fd, new, write["offset"])


def _diff_runs(old: bytes, new: bytes, gap: int = 8) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i, (a, b) in enumerate(zip(old, new)):
        if a == b:
            continue
        if runs and i - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _sparse_copy(source: Path, target: Path) -> None:
    size = source.stat().st_size
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.truncate(size)
        position = 0
        while position < size:
            try:
                start = os.lseek(src.fileno(), position, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            for at in range(start, end, 1 << 20):
                os.pwrite(dst.fileno(), os.pread(src.fileno(), min(1 << 20, end - at), at), at)
            position = end


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------- generate and regenerate


def _check_arguments(seed: object, count: object) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SettingError(f"corpus seed must be an integer, got {seed!r}: pass --seed N")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise SettingError(f"corpus count must be an integer of at least 1, got {count!r}: pass --count N with N >= 1")


def generate(seed: int, count: int, directory: Path, progress: Progress | None = None) -> list[Entry]:
    """Write `count` hostile images `img-NNNN.raw` and `manifest.jsonl` into `directory`; same seed, same bytes.

    `progress(done, total, file_name)` is called after each image. Returns the manifest entries."""
    from . import corpus_mutations  # noqa: F401  (kept for a future split; see _mutate)
    raise NotImplementedError
