"""FUSE stacks built from source: libfuse (meson) then e2fsprogs (autotools), installed into a
guest image as a layer.

`spec` parses what `--fuselab-stack` names into a StackSpec; `keys` says what decides a build;
`build` builds a spec into a cached Layer in the chroot of `buildroot`, applying `patchseries`.
Settings in a running guest (fuse.conf, socket modes) are `pytest_fuselab.guestconfig`; the
`fuselab stack` command is `pytest_fuselab.cli.stack`.
"""

from __future__ import annotations

from pytest_fuselab.build.stack.spec import Source, StackSpec, parse

__all__ = ["Source", "StackSpec", "parse"]
