"""`fuselab corpus generate DIR`: a deterministic corpus of hostile ext4 images."""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_fuselab.cli.options import whole

MOST_IMAGES = 100_000


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab corpus`."""
    cp = sub.add_parser("corpus", help="generate a deterministic corpus of hostile ext4 images")
    cp.add_argument("action", choices=["generate"])
    cp.add_argument("directory")
    cp.add_argument("--seed", type=int, default=1, help="same seed, same bytes (default: %(default)s)")
    cp.add_argument("--count", type=whole(1, MOST_IMAGES), default=40, help="images to write (default: %(default)s)")


def cmd_corpus(args: argparse.Namespace) -> int:
    from pytest_fuselab import corpus

    directory = Path(args.directory)
    entries = corpus.generate(args.seed, args.count, directory,
                              lambda done, total, name: print(f"[{done}/{total}] {name}", flush=True))
    kinds = sorted({m["kind"] for e in entries for m in e["mutations"]})
    print(f"{len(entries)} images in {directory} (manifest {directory / corpus.MANIFEST}); "
          f"mutations: {', '.join(kinds)}")
    return 0
