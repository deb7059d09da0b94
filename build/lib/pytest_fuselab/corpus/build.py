"""Generating a corpus from a seed, and regenerating one image from its manifest entry alone."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from pytest_fuselab.errors import ImageError, SettingError
from pytest_fuselab.sparse import file_sha256, sparse_copy
from .bases import BaseCache, build_base
from .manifest import Entry, entry_parts, write_manifest
from .mutations import KINDS, applies, mutate
from .mutations.primitives import Ctx
from .profiles import PROFILES, derive
from .recording import RecordingImage
from .tools import TOOLS, e2fsprogs_version, find_tool, mke2fs_args
from pytest_fuselab.workdirs import work_dir

Progress = Callable[[int, int, str], None]


def _check_arguments(seed: object, count: object) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SettingError(f"corpus seed must be an integer, got {seed!r}: pass --seed N")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise SettingError(f"corpus count must be an integer of at least 1, got {count!r}: pass --count N with N >= 1")


def _mutations(ctx: Ctx, kind: str) -> list[Entry]:
    rng = ctx.rng
    usable = [k for k in KINDS if applies(k, ctx.profile)]
    out = []
    for chosen in [kind] + [rng.choice(usable) for _ in range(rng.choice((0, 0, 1, 1, 2)))]:
        start = len(ctx.img.writes)
        record = mutate(chosen, ctx)
        out.append({"kind": chosen, **record, "writes": ctx.img.writes[start:]})
    return out


def _make_image(seed: int, index: int, directory: Path, bases: BaseCache, version: str) -> Entry:
    image_seed = derive("image", seed, index)
    rng = random.Random(image_seed)
    kind = KINDS[(derive("rotation", seed) + index) % len(KINDS)]
    profile = rng.choice([p for p in PROFILES if applies(kind, p)])
    base = bases.get(profile)
    name = f"img-{index:04d}.raw"
    path = directory / name
    sparse_copy(base.path, path)
    image = RecordingImage(path)
    try:
        mutations = _mutations(Ctx(image, base.layout, rng, profile, base.facts), kind)
    finally:
        image.close()
    return {"file": name, "index": index, "seed": seed, "image_seed": image_seed, "profile": profile.name,
            "block_size": profile.block_size, "size_mib": profile.size_mib, "features": base.layout.sb.features,
            "mke2fs": mke2fs_args(profile, seed), "tune2fs": list(profile.tune2fs), "e2fsprogs": version,
            "base_sha256": base.sha256, "mutations": mutations, "sha256": file_sha256(path)}


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
    with work_dir("fuselab-corpus-") as work:
        bases = BaseCache(seed, Path(work))
        try:
            for index in range(count):
                entries.append(_make_image(seed, index, directory, bases, version))
                if progress is not None:
                    progress(index + 1, count, entries[-1]["file"])
        finally:
            bases.close()
    write_manifest(directory, entries)
    return entries


def regenerate(entry: Entry, directory: Path) -> Path:
    """Rebuild one image from its manifest entry alone (base from mke2fs, then the recorded writes)."""
    profile, seed, name, mutations = entry_parts(entry)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with work_dir("fuselab-corpus-") as work:
        base = build_base(profile, seed, Path(work))
        if entry.get("base_sha256") not in (None, file_sha256(base)):
            here = e2fsprogs_version(find_tool("mke2fs"))
            raise ImageError(f"the rebuilt base of {name} differs from the manifest's (made with e2fsprogs "
                             f"{entry.get('e2fsprogs')}, this host has {here}): regenerate with that e2fsprogs version")
        sparse_copy(base, path)
    image = RecordingImage(path)
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
