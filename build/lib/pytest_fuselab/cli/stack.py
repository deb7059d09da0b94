"""`fuselab stack build|list`: build a FUSE stack from source as an image layer, or list the built ones."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping

from pytest_fuselab.build.stack import build
from pytest_fuselab.build.stack.spec import label
from pytest_fuselab.errors import ImageError
from pytest_fuselab.settings import resolve
from pytest_fuselab.text import printable

Progress = Callable[[str], None]


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `stack` subcommand to the `fuselab` parser."""
    p = sub.add_parser("stack", help="build a FUSE stack from source (libfuse, e2fsprogs) as an image layer")
    p.add_argument("action", choices=["build", "list"])
    p.add_argument("stack", nargs="?", default=None,
                   help="debian-source, a stack .toml, or libfuse=SRC[@REF],e2fsprogs=SRC[@REF][,...-patches=P] "
                        "(default: $FUSELAB_STACK)")
    p.add_argument("--rebuild", action="store_true", help="build even if a cached layer matches")
    p.add_argument("--image", action="store_true", help="also build the guest image with the layer")
    p.add_argument("--recipe", default="sid", help="image recipe for --image (default: sid)")


def versions(info: Mapping[str, object]) -> str:
    """`libfuse X  e2fsprogs Y` from a layer's manifest."""
    found = info.get("versions")
    known = found if isinstance(found, dict) else {}
    return f"libfuse {known.get('libfuse', '?')}  e2fsprogs {known.get('e2fsprogs', '?')}"


def list_layers() -> int:
    """Print one line per built layer."""
    for path in sorted(build.stacks_dir().glob("*/manifest.json")) if build.stacks_dir().exists() else []:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # a damaged layer is rebuilt when next used
            print(printable(f"{path.parent.name}  UNUSABLE: {path}: {exc}", lines=False))
            continue
        if not isinstance(info, dict):
            info = {}
        print(printable(f"{path.parent.name}  {versions(info)}  built {info.get('built')} in "
                        f"{info.get('build_seconds')} s  from {info.get('sources')}", lines=False))
    return 0


def cli(args: argparse.Namespace, progress: Progress) -> int:
    """Run `fuselab stack ACTION`."""
    if args.action == "list":
        return list_layers()
    spec = resolve({"stack": args.stack}, only={"stack"}).stack  # the argument, else $FUSELAB_STACK
    if spec is None:
        raise ImageError(f"name a stack to build ({label(spec)} is the released packages: nothing to build): "
                         "debian-source, a .toml file, or libfuse=...,e2fsprogs=...")
    layer = build.ensure(spec, progress, rebuild=args.rebuild)
    info = layer.manifest()
    units = info.get("units")
    shown = ", ".join(str(unit) for unit in units) if isinstance(units, list) else ""
    print(printable(f"{layer.directory}  {versions(info)}  units {shown or '-'}", lines=False))
    if args.image:
        from pytest_fuselab.build import image
        from pytest_fuselab.build import recipe

        built = image.ensure(build.layered_recipe(recipe.load(args.recipe), layer), progress, layer=layer)
        print(f"{built.directory}")
    return 0
