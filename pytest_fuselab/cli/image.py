"""`fuselab image build|list|clean`: the guest images of this host."""

from __future__ import annotations

import argparse

from pytest_fuselab.build import image, recipe
from pytest_fuselab.lab import stderr_progress
from pytest_fuselab.text import printable


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`fuselab image`."""
    img = sub.add_parser("image", help="build, list or remove guest images")
    img.add_argument("action", choices=["build", "list", "clean"])
    img.add_argument("--recipe", default="sid", help="recipe name in pytest_fuselab/recipes/ or a .toml path (default: sid)")
    img.add_argument("--rebuild", action="store_true", help="build even if a cached image looks fine")
    img.add_argument("--refresh", action="store_true", help="read the archive's package versions now")
    img.add_argument("--all", action="store_true", help="with clean: remove every image and snapshot")


def cmd_image(args: argparse.Namespace) -> int:
    {"build": build, "list": show, "clean": clean}[args.action](args)
    return 0


def build(args: argparse.Namespace) -> None:
    built = image.ensure(recipe.load(args.recipe), stderr_progress, rebuild=args.rebuild, refresh=args.refresh)
    manifest = built.manifest()
    print(f"{built.directory}  kernel {manifest['kernel_version']}  built {manifest['built']}")


def show(args: argparse.Namespace) -> None:
    for img in image.built_images():
        problem = img.problem()
        if problem:
            print(printable(f"{img.directory.name}  UNUSABLE: {problem}"))
            continue
        m = img.manifest()
        pk = m["packages"]
        assert isinstance(pk, dict)
        layer = m.get("stack") or {}
        assert isinstance(layer, dict)
        fuse, e2fs = (layer["versions"]["libfuse"], layer["versions"]["e2fsprogs"]) if layer else (
            pk.get("fuse3"), pk.get("fuse2fs"))
        print(printable(f"{img.directory.name}  kernel {m['kernel_version']}  fuse3 {fuse}  fuse2fs {e2fs}  "
                        f"systemd {pk.get('systemd')}  built {m['built']}"
                        + (f"  stack {layer['name']} from {layer['sources']}" if layer else ""), lines=False))
    if not image.built_images():
        print(f"no images built yet in {image.images_dir()} (`fuselab image build`)")


def clean(args: argparse.Namespace) -> None:
    current = image.latest_built(recipe.load(args.recipe))
    keep = {current.directory} if current else set()
    for path in image.clean(everything=args.all, keep=keep):
        print(f"removed {path}")
    if current and not args.all:
        print(f"kept {current.directory} (the newest image of recipe {args.recipe}; --all removes it too)")
