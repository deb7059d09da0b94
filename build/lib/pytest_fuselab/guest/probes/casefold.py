"""Guest-side FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR probe (stdlib only); prints one JSON object, by path.

Usage: python3 -m pytest_fuselab.guest.probes.casefold get PATH...      -> {PATH: {"xflags": N} | {"error": ERRNO}}
       python3 -m pytest_fuselab.guest.probes.casefold set PATH XFLAGS  -> {PATH: {"set": "accepted" | ERRNO,
                                                                           "before": N, "after": N}}
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import sys
from typing import Any

FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR = 0x801C581F, 0x401C5820
FSXATTR = "IIIII8x"  # struct fsxattr: xflags, extsize, nextents, projid, cowextsize, 8 bytes pad


def errname(exc: OSError) -> str:
    """The errno's symbolic name (ENOTTY...); 95 is EOPNOTSUPP, as Linux names it (Python says ENOTSUP)."""
    if exc.errno == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def get(path: str) -> int:
    """The file's fsxattr xflags."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return int(struct.unpack(FSXATTR, fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(28)))[0])
    finally:
        os.close(fd)


def try_set(path: str, xflags: int) -> dict[str, Any]:
    """Add `xflags` to the file's flags; what the kernel said and the flags before and after."""
    before = get(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_FSSETXATTR, struct.pack(FSXATTR, before | xflags, 0, 0, 0, 0))
        outcome = "accepted"
    except OSError as exc:
        outcome = errname(exc)
    finally:
        os.close(fd)
    return {"set": outcome, "before": before, "after": get(path)}


def probe(op: str, args: list[str]) -> dict[str, dict[str, Any]]:
    """`get` each path, or `set` args[1] (an int literal) on args[0]; an error per path is its errno."""
    out: dict[str, dict[str, Any]] = {}
    for path in args if op == "get" else args[:1]:
        try:
            out[path] = try_set(path, int(args[1], 0)) if op == "set" else {"xflags": get(path)}
        except OSError as exc:
            out[path] = {"error": errname(exc)}
    return out


def main(argv: list[str]) -> int:
    """Print the probe's JSON; status 2 on a usage error."""
    if len(argv) < 2 or argv[0] not in ("get", "set") or (argv[0] == "set" and len(argv) != 3):
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(probe(argv[0], argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
