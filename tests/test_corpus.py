"""Unit tests of the hostile ext4 corpus generator and of the layout reader it builds on."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from pytest_fuselab import corpus
from pytest_fuselab import ext4
from pytest_fuselab.errors import FuselabError, HostError, ImageError, SettingError


def _e2fsprogs_missing() -> str:
    try:
        for tool in corpus.TOOLS:
            corpus.find_tool(tool)
    except HostError as exc:
        return str(exc)
    return ""


needs_e2fsprogs = pytest.mark.skipif(bool(_e2fsprogs_missing()), reason=_e2fsprogs_missing() or "e2fsprogs present")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(directory: Path) -> dict[str, str]:
    # The generator's hole-aware sha256, checked against a plain full read in
    # test_every_image_has_a_manifest_entry; reading 40 sparse images in full twice is slow.
    return {p.name: corpus.file_sha256(p) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def corpus_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    directory = tmp_path_factory.mktemp("corpus-a")
    return directory, corpus.generate(1, 40, directory)


@pytest.fixture(scope="module")
def base_1k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.build_base(corpus.profile_named("ext4-1k"), 1, tmp_path_factory.mktemp("base-1k"))


# ---------------------------------------------------------------- determinism and the manifest


@needs_e2fsprogs
def test_same_seed_gives_identical_images_and_manifest(corpus_a: tuple[Path, list[dict[str, Any]]],
                                                       tmp_path: Path) -> None:
    first, _ = corpus_a
    corpus.generate(1, 40, tmp_path / "again")
    assert (tmp_path / "again" / corpus.MANIFEST).read_bytes() == (first / corpus.MANIFEST).read_bytes()
    assert _digests(tmp_path / "again") == _digests(first)


@needs_e2fsprogs
def test_different_seeds_give_different_images(corpus_a: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    first, entries = corpus_a
    calls: list[tuple[int, int, str]] = []
    other = corpus.generate(2, 4, tmp_path, progress=lambda *args: calls.append(args))
    assert calls == [(i + 1, 4, f"img-{i:04d}.raw") for i in range(4)]
    assert {e["sha256"] for e in other}.isdisjoint(e["sha256"] for e in entries)
    assert {e["base_sha256"] for e in other}.isdisjoint(e["base_sha256"] for e in entries)
    assert (tmp_path / corpus.MANIFEST).read_bytes() != (first / corpus.MANIFEST).read_bytes()


@needs_e2fsprogs
def test_every_image_has_a_manifest_entry(corpus_a: tuple[Path, list[dict[str, Any]]]) -> None:
    directory, entries = corpus_a
    images = sorted(p.name for p in directory.glob("img-*.raw"))
    assert images == [e["file"] for e in entries] == [f"img-{i:04d}.raw" for i in range(40)]
    assert corpus.read_manifest(directory) == json.loads(json.dumps(entries))
    for entry in entries:
        path = directory / entry["file"]
        assert corpus.file_sha256(path) == entry["sha256"]
        if entry["index"] % 8 == 0:
            assert _sha(path) == entry["sha256"]  # a plain full read agrees with the hole-aware digest
        assert 8 << 20 <= path.stat().st_size == entry["size_mib"] << 20 <= 64 << 20
        assert entry["seed"] == 1 and entry["mutations"] and entry["mke2fs"][0] == "mke2fs"
        assert entry["block_size"] in (1024, 4096)


@needs_e2fsprogs
def test_every_mutation_kind_and_both_block_sizes_occur(corpus_a: tuple[Path, list[dict[str, Any]]]) -> None:
    _, entries = corpus_a
    assert {m["kind"] for e in entries for m in e["mutations"]} == set(corpus.KINDS)
    assert {e["block_size"] for e in entries} == {1024, 4096}
    assert {m["checksum"] for e in entries for m in e["mutations"]} == {"recomputed", "stale", "none"}
    for entry in entries:
        for mutation in entry["mutations"]:
            assert {"kind", "structure", "field", "offset", "old", "new", "checksum", "writes"} <= set(mutation)
            assert corpus.applies(mutation["kind"], corpus.profile_named(entry["profile"]))
            for write in mutation["writes"]:
                assert write["old"] != write["new"]
                assert write["offset"] + len(write["new"]) // 2 <= entry["size_mib"] << 20


@needs_e2fsprogs
def test_superblock_checksum_is_recomputed_or_left_stale_as_recorded(
        corpus_a: tuple[Path, list[dict[str, Any]]]) -> None:
    directory, entries = corpus_a
    checked = 0
    for entry in entries:
        last = [m for m in entry["mutations"] if any(1024 <= w["offset"] < 2048 for w in m["writes"])]
        if not last or last[-1]["structure"] != "superblock" or "metadata_csum" not in entry["features"]:
            continue
        with open(directory / entry["file"], "rb") as image:
            sb = os.pread(image.fileno(), 1024, 1024)
        valid = ext4.crc32c(sb[:0x3FC]) == struct.unpack_from("<I", sb, 0x3FC)[0]
        assert valid == (last[-1]["checksum"] == "recomputed"), entry["file"]
        checked += 1
    assert checked >= 2


@needs_e2fsprogs
def test_regenerate_rebuilds_an_image_from_its_entry_alone(corpus_a: tuple[Path, list[dict[str, Any]]],
                                                            tmp_path: Path) -> None:
    directory, entries = corpus_a
    picked = {e["profile"]: e for e in entries if e["profile"] != "htree-deep"}
    for entry in list(picked.values())[:4]:
        fresh = json.loads(json.dumps(entry))
        path = corpus.regenerate(fresh, tmp_path)
        assert path == tmp_path / entry["file"]
        assert path.read_bytes() == (directory / entry["file"]).read_bytes()


@needs_e2fsprogs
def test_regenerate_refuses_a_tampered_entry(corpus_a: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, entries = corpus_a
    entry = json.loads(json.dumps(next(e for e in entries if e["profile"] == "ext4-4k")))
    write = entry["mutations"][0]["writes"][0]
    write["old"] = "ff" * (len(write["old"]) // 2) if write["old"] != "ff" * (len(write["old"]) // 2) else "00"
    with pytest.raises(ImageError, match="differ from the manifest"):
        corpus.regenerate(entry, tmp_path)


def test_regenerate_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="missing 'profile'"):
        corpus.regenerate({"file": "img-0000.raw"}, tmp_path)
    with pytest.raises(SettingError, match="unknown corpus profile"):
        corpus.regenerate({"file": "x", "profile": "nope", "seed": 1, "mutations": []}, tmp_path)
    with pytest.raises(SettingError, match="plain file name"):
        corpus.regenerate({"file": "../x", "profile": "ext4-4k", "seed": 1, "mutations": []}, tmp_path)


# ---------------------------------------------------------------- bad arguments, missing tools


@pytest.mark.parametrize("count", [0, -3, "5", 2.0, True])
def test_bad_count_is_a_setting_error(count: Any, tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="at least 1"):
        corpus.generate(1, count, tmp_path)
    assert not list(tmp_path.iterdir())


def test_bad_seed_is_a_setting_error(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="seed must be an integer"):
        corpus.generate("1", 3, tmp_path)  # type: ignore[arg-type]


def test_missing_mke2fs_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(corpus.tools, "SBIN_DIRS", ())
    with pytest.raises(HostError, match=r"mke2fs was not found .*install e2fsprogs"):
        corpus.generate(1, 2, tmp_path / "out")
    assert issubclass(HostError, FuselabError)


def test_read_manifest_of_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="generate the corpus first"):
        corpus.read_manifest(tmp_path)


# ---------------------------------------------------------------- the layout reader


def test_crc32c_and_htree_hashes_match_known_values() -> None:
    assert ext4.crc32c(b"123456789") ^ 0xFFFFFFFF == 0xE3069283
    assert ext4.crc16(b"123456789", 0) == 0xBB3D
    seed = struct.unpack("<4I", uuid.UUID("11111111-2222-3333-4444-555555555556").bytes)
    # Values printed by `debugfs -R "dx_hash -h ALG -s SEED NAME"` (e2fsprogs 1.47.0).
    assert ext4.dx_hash(b"hello-world", 1, seed) == (0x5F5894F0, 0x0637AD64)
    assert ext4.dx_hash(b"hello-world-this-is-a-longer-name-xyz", 2, seed) == (0x24D0DB70, 0x7EB12BA3)
    assert ext4.dx_hash(b"hello", 0) == (0x32252546, 0)


@needs_e2fsprogs
@pytest.mark.parametrize("name", ["ext4-1k", "ext4-4k", "ext2-blockmap"])
def test_layout_finds_the_root_directory_and_block_size(name: str, tmp_path: Path) -> None:
    profile = corpus.profile_named(name)
    with ext4.Layout(corpus.build_base(profile, 3, tmp_path)) as layout:
        assert layout.block_size == profile.block_size
        root = layout.inode(ext4.ROOT_INO)
        assert root.is_type(ext4.S_IFDIR)
        names = {e.name for e in layout.dir_entries(root)}
        assert {b".", b"..", b"lost+found", b"dir", b"small.txt", b"many"} <= names
        assert layout.inode(layout.lookup("dir/sub/large.bin")).size == 300 * 1024
        assert layout.inode(layout.lookup("fastlink")).is_type(ext4.S_IFLNK)
        assert (layout.journal() is not None) == ("journal" in profile.traits)


@needs_e2fsprogs
def test_layout_checksums_agree_with_e2fsprogs(base_1k: Path) -> None:
    """Each fixer recomputes exactly what mke2fs and debugfs wrote, so a fresh image is left unchanged."""
    with ext4.Layout(base_1k) as layout:
        assert layout.metadata_csum and layout.sb.desc_size == 64
        assert layout.fix_superblock(layout.sb.raw) == layout.sb.raw
        for group in layout.groups:
            assert layout.fix_group_desc(group.number, group.raw) == group.raw
            assert layout.fix_bitmap("block", group.raw, layout.block(group.block_bitmap)) == group.raw
        for number in [1, 2, 7, 8, 11, *(layout.lookup(p) for p in ("small.txt", "dir", "dir/sparse.bin"))]:
            inode = layout.inode(number)
            assert layout.fix_inode(number, inode.raw) == inode.raw
        sparse = layout.inode(layout.lookup("dir/sparse.bin"))
        leaves = [n.block for n in layout.extent_nodes(sparse) if n.block is not None]
        assert leaves and layout.fix_extent_block(sparse, layout.block(leaves[0])) == layout.block(leaves[0])
        root = layout.inode(ext4.ROOT_INO)
        for _, physical in layout.file_blocks(root):
            assert layout.fix_dir_leaf(root, layout.block(physical)) == layout.block(physical)
        xattrs = layout.xattr_block(layout.inode(layout.lookup("dir/medium.bin")))
        assert xattrs is not None and xattrs.block is not None and len(xattrs.entries) == 4
        assert layout.fix_xattr_block(xattrs.block, layout.block(xattrs.block)) == layout.block(xattrs.block)


@needs_e2fsprogs
def test_built_htree_is_consistent(tmp_path: Path) -> None:
    with ext4.Layout(corpus.build_base(corpus.profile_named("htree-deep"), 1, tmp_path)) as layout:
        inode = layout.inode(layout.lookup("many"))
        tree = layout.htree(inode)
        assert tree is not None and tree.indirect_levels == 1 and tree.hash_version == 1
        blocks = dict(layout.file_blocks(inode))
        root = tree.nodes[0]
        assert layout.fix_dx_block(inode, layout.block(root.block), 0x20) == layout.block(root.block)
        ranges = []
        for lower, child, _ in root.entries:
            node = next(n for n in tree.nodes if n.logical == child)
            ranges += [(lower if i == 0 else h, leaf) for i, (h, leaf, _) in enumerate(node.entries)]
        assert [r[0] for r in ranges] == sorted(r[0] for r in ranges)
        leaf_of = {blocks[leaf]: i for i, (_, leaf) in enumerate(ranges)}
        entries = [e for e in layout.dir_entries(inode) if e.block in leaf_of]
        assert len(entries) == 1000
        for entry in entries:
            i = leaf_of[entry.block]
            upper = ranges[i + 1][0] if i + 1 < len(ranges) else 1 << 32
            assert ranges[i][0] <= ext4.dx_hash(entry.name, 1, layout.sb.hash_seed)[0] < upper


@needs_e2fsprogs
def test_profiles_have_the_features_they_claim(tmp_path: Path) -> None:
    claims = {"inline_data": "inline_data", "casefold": "casefold", "quota": "quota", "bigalloc": "bigalloc",
              "mmp": "mmp", "ea_inode": "ea_inode", "ext4-32bit-uninit_bg": "uninit_bg"}
    for name, feature in claims.items():
        with ext4.Layout(corpus.build_base(corpus.profile_named(name), 1, tmp_path / name)) as layout:
            assert layout.sb.has(feature), name
            assert layout.sb.has("64bit") == (name != "ext4-32bit-uninit_bg")
            if name == "mmp":
                offset = layout.mmp_offset()
                assert offset is not None
                assert layout.read(offset + 0x10, 7) == b"fuselab"


def test_layout_refuses_what_is_not_ext4(tmp_path: Path) -> None:
    image = tmp_path / "zeros.raw"
    image.write_bytes(bytes(8192))
    with pytest.raises(ImageError, match="not an ext4 image"):
        ext4.Layout(image)
