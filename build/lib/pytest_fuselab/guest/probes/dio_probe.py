#!/usr/bin/python3
"""Guest-side O_DIRECT probe (stdlib only): statx DIOALIGN, then aligned and misaligned direct
reads and writes, mixed buffered/direct access; prints one JSON document.

Usage: python3 -m pytest_fuselab.guest.probes.dio_probe write FILE SEED
       python3 -m pytest_fuselab.guest.probes.dio_probe verify FILE SEED < (write's JSON)   (after a remount)
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import sys
from typing import Any

STATX_DIOALIGN = 0x2000
AT_FDCWD = -100
SYS_STATX = 332  # x86_64


class Statx(ctypes.Structure):
    """struct statx, up to its DIOALIGN fields."""

    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32), ("attributes", ctypes.c_uint64),
                ("nlink", ctypes.c_uint32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("mode", ctypes.c_uint16), ("pad1", ctypes.c_uint16), ("ino", ctypes.c_uint64),
                ("size", ctypes.c_uint64), ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("times", ctypes.c_uint8 * 64), ("rdev_major", ctypes.c_uint32), ("rdev_minor", ctypes.c_uint32),
                ("dev_major", ctypes.c_uint32), ("dev_minor", ctypes.c_uint32), ("mnt_id", ctypes.c_uint64),
                ("dio_mem_align", ctypes.c_uint32), ("dio_offset_align", ctypes.c_uint32),
                ("spare", ctypes.c_uint64 * 12)]


def dioalign(path: str) -> dict[str, Any]:
    """statx(STATX_DIOALIGN) of `path`: the memory and offset alignment O_DIRECT needs."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = Statx()
    if libc.syscall(SYS_STATX, AT_FDCWD, path.encode(), 0, STATX_DIOALIGN, ctypes.byref(buf)) != 0:
        return {"error": errno.errorcode.get(ctypes.get_errno(), "?")}
    if not buf.mask & STATX_DIOALIGN:
        return {"supported": False}
    return {"supported": True, "mem": buf.dio_mem_align, "offset": buf.dio_offset_align}


def pattern(seed: int, offset: int, length: int) -> bytes:
    """Reproducible pseudo-random bytes for one region of the file."""
    rng = random.Random(f"{seed}:{offset}:{length}")
    return rng.randbytes(length)


def buffer(data: bytes, misalign: int) -> tuple[mmap.mmap, memoryview]:
    """A buffer holding `data` that starts `misalign` bytes past a page boundary."""
    area = mmap.mmap(-1, len(data) + misalign + mmap.PAGESIZE)
    view = memoryview(area)[misalign:misalign + len(data)]
    view[:] = data
    return area, view


def errname(exc: OSError) -> str:
    """The errno's symbolic name (EINVAL...)."""
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


# (name, file offset, length, buffer misalignment)
CASES = [
    ("aligned-4k", 0, 16384, 0),
    ("aligned-512", 20480, 1024, 0),
    ("offset-512", 32768 + 512, 4096, 0),
    ("offset-1", 49152 + 1, 4096, 0),
    ("length-1000", 65536, 1000, 0),
    ("buffer+512", 81920, 4096, 512),
    ("buffer+1", 98304, 4096, 1),
]


def attempt(fd: int, op: str, offset: int, data: bytes, misalign: int) -> dict[str, Any]:
    """One direct pwritev/preadv of `data`'s length through a buffer `misalign` bytes off a page."""
    area, view = buffer(data, misalign)
    try:
        if op == "write":
            done = os.pwritev(fd, [view], offset)
        else:
            done = os.preadv(fd, [view], offset)
            data = bytes(view[:done])
        return {"ok": True, "bytes": done, "data": data}
    except OSError as exc:
        return {"ok": False, "errno": errname(exc)}
    finally:
        view.release()
        area.close()


def write(path: str, seed: int) -> dict[str, Any]:
    """Write and read back every case with O_DIRECT, then the mixed buffered/direct checks."""
    cases: dict[str, Any] = {}
    report: dict[str, Any] = {"cases": cases}
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError as exc:
        return {"open": errname(exc)}
    report["open"] = "ok"
    report["dioalign"] = dioalign(path)
    for name, offset, length, misalign in CASES:
        data = pattern(seed, offset, length)
        w = attempt(fd, "write", offset, data, misalign)
        r = attempt(fd, "read", offset, bytes(length), misalign) if w["ok"] else {"ok": False}
        cases[name] = {"offset": offset, "length": length, "misalign": misalign,
                       "write": {k: v for k, v in w.items() if k != "data"},
                       "read_back_ok": r.get("ok", False) and r.get("data") == data[:w.get("bytes", 0)]}
    os.close(fd)
    report["mixed"] = mixed(path, seed)
    return report


def mixed(path: str, seed: int) -> dict[str, Any]:
    """Buffered write then direct read, and direct write then buffered read, of one region."""
    offset, length = 1 << 20, 8192
    data = pattern(seed, offset, length)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    direct = attempt(fd, "read", offset, bytes(length), 0)
    second = pattern(seed, offset + length, length)
    wrote = attempt(fd, "write", offset + length, second, 0)
    os.close(fd)
    with open(path, "rb") as f:
        f.seek(offset + length)
        buffered = f.read(length)
    return {"buffered_then_direct": direct.get("data") == data if direct["ok"] else direct.get("errno"),
            "direct_then_buffered": buffered == second if wrote["ok"] else wrote.get("errno")}


def verify(path: str, seed: int, written: dict[str, Any]) -> dict[str, Any]:
    """After a remount: every region the first pass wrote must read back with its pattern."""
    bad: list[str] = []
    with open(path, "rb") as f:
        for name, case in written["cases"].items():
            if not case["write"].get("ok"):
                continue
            f.seek(case["offset"])
            got = f.read(case["write"]["bytes"])
            if hashlib.sha256(got).digest() != hashlib.sha256(
                    pattern(seed, case["offset"], case["length"])[:case["write"]["bytes"]]).digest():
                bad.append(name)
    return {"corrupt": bad}


def main() -> None:
    """`write` prints its report; `verify` reads that report on stdin and prints the corrupt cases."""
    op, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if op == "write":
        print(json.dumps(write(path, seed)))
    else:
        print(json.dumps(verify(path, seed, json.loads(sys.stdin.read()))))


if __name__ == "__main__":
    main()
