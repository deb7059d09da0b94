"""Deterministic hostile ext4 images: valid bases from mke2fs and debugfs, then seeded, recorded corruptions.

`generate(seed, count, directory)` writes the images and manifest.jsonl (same seed, same bytes);
`regenerate(entry, directory)` makes one image again from its manifest entry alone.
"""

# Safety rule: the host runs mke2fs, debugfs and tune2fs only on base images it has just made, before any
# corruption. Corrupted images are only written to here: never mounted, fscked, loop-attached or given to
# debugfs. They are parsed inside guests only.

from __future__ import annotations

from pytest_fuselab.sparse import file_sha256
from .bases import build_base
from .build import Progress, generate, regenerate
from .manifest import MANIFEST, Entry, read_manifest, write_manifest
from .mutations import KINDS, applies
from .profiles import PROFILES, Profile, profile_named
from .tools import FAKE_TIME, TOOLS, e2fsprogs_version, find_tool, mke2fs_args

__all__ = ["FAKE_TIME", "KINDS", "MANIFEST", "PROFILES", "TOOLS", "Entry", "Profile", "Progress", "applies",
           "build_base", "e2fsprogs_version", "file_sha256", "find_tool", "generate", "mke2fs_args", "profile_named",
           "read_manifest", "regenerate", "write_manifest"]
