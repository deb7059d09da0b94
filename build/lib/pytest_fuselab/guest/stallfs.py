#!/usr/bin/python3
"""stallfs: a controllable FUSE server for deterministic races (runs in the guest; pyfuse3).

An in-memory filesystem whose operations can be made to stall, slow down, fail or crash at a
chosen moment:  stallfs MOUNTPOINT --state DIR --fault write:3:hang --fault fsync:1:crash
  hang        the Nth call of OP waits until DIR/release-OP-N exists
  delay=S     the Nth call sleeps S seconds first
  error=ERRNO the Nth call fails with that errno (EIO, ENOSPC, ...)
  crash       the server kills itself (SIGKILL) inside the Nth call
When the Nth call is reached the server creates DIR/reached-OP-N, so a test knows for certain
that the race window is open before it acts.  Faults may repeat: write:*:delay=0.1.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import time

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE


class Fault:
    """One planned fault, from OP:N:ACTION (N may be * for every call)."""

    def __init__(self, spec: str) -> None:
        op, nth, action = spec.split(":", 2)
        self.op, self.action = op, action
        self.nth: int | None = None if nth == "*" else int(nth)

    def matches(self, op: str, count: int) -> bool:
        """Whether the `count`th call of `op` is the one this fault is for."""
        return op == self.op and (self.nth is None or self.nth == count)


class StallFS(pyfuse3.Operations):  # type: ignore[misc]  # pyfuse3 has no type information
    """One flat in-memory directory whose operations pass through the planned faults."""

    def __init__(self, state: str, faults: list[Fault]) -> None:
        super().__init__()
        self.state, self.faults = state, faults
        self.counts: dict[str, int] = {}
        self.names: dict[str, int] = {}  # name -> inode (one flat directory)
        self.data: dict[int, bytearray] = {}  # inode -> contents
        self.modes: dict[int, int] = {}
        self.next_inode: int = ROOT + 1

    async def _gate(self, op: str) -> None:
        """Apply the fault planned for this call of `op`, if any."""
        count = self.counts[op] = self.counts.get(op, 0) + 1
        for fault in self.faults:
            if not fault.matches(op, count):
                continue
            marker = f"{op}-{count}"
            open(os.path.join(self.state, f"reached-{marker}"), "w").close()
            if fault.action == "hang":
                release = os.path.join(self.state, f"release-{marker}")
                while not os.path.exists(release):
                    await trio.sleep(0.02)
            elif fault.action.startswith("delay="):
                await trio.sleep(float(fault.action[6:]))
            elif fault.action.startswith("error="):
                raise pyfuse3.FUSEError(getattr(errno, fault.action[6:]))
            elif fault.action == "crash":
                os.kill(os.getpid(), signal.SIGKILL)

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        """The attributes of `inode`, never cached by the kernel."""
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        if inode == ROOT:
            entry.st_mode, entry.st_size, entry.st_nlink = stat.S_IFDIR | 0o777, 0, 2
        else:
            entry.st_mode, entry.st_size, entry.st_nlink = self.modes[inode], len(self.data[inode]), 1
        entry.st_uid, entry.st_gid = os.getuid(), os.getgid()
        now = time.time_ns()
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = now
        entry.attr_timeout = entry.entry_timeout = 0
        return entry

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        await self._gate("getattr")
        if inode != ROOT and inode not in self.data:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        await self._gate("lookup")
        inode = self.names.get(name.decode())
        if parent_inode != ROOT or inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        await self._gate("readdir")
        for i, (name, inode) in enumerate(sorted(self.names.items())):
            if i >= start_id and not pyfuse3.readdir_reply(token, name.encode(), self._attr(inode), i + 1):
                break

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        await self._gate("create")
        inode, self.next_inode = self.next_inode, self.next_inode + 1
        self.names[name.decode()], self.data[inode], self.modes[inode] = inode, bytearray(), stat.S_IFREG | mode
        return pyfuse3.FileInfo(fh=inode), self._attr(inode)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        await self._gate("open")
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        await self._gate("read")
        return bytes(self.data[fh][off:off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        await self._gate("write")
        data = self.data[fh]
        if len(data) < off:
            data.extend(bytes(off - len(data)))
        data[off:off + len(buf)] = buf
        return len(buf)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        await self._gate("setattr")
        if fields.update_size:
            del self.data[inode][attr.st_size:]
        return self._attr(inode)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._gate("unlink")
        inode = self.names.pop(name.decode(), None)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)

    async def flush(self, fh: int) -> None:
        await self._gate("flush")

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._gate("fsync")

    async def release(self, fh: int) -> None:
        await self._gate("release")

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        await self._gate("statfs")
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = st.f_bfree = st.f_bavail = 1 << 18
        st.f_files = st.f_ffree = st.f_favail = 1 << 16
        return st


def main() -> None:
    """Mount stallfs with the planned faults and serve until it is unmounted or killed."""
    parser = argparse.ArgumentParser(prog="python3 -m pytest_fuselab.guest.stallfs",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--state", required=True, help="directory for reached-/release- marker files")
    parser.add_argument("--fault", action="append", default=[], help="OP:N:ACTION (see the module text)")
    parser.add_argument("--allow-other", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.state, exist_ok=True)
    fs = StallFS(args.state, [Fault(spec) for spec in args.fault])
    options = set(pyfuse3.default_options) | {"fsname=stallfs"}
    if args.allow_other:
        options.add("allow_other")
    pyfuse3.init(fs, args.mountpoint, options)
    open(os.path.join(args.state, "mounted"), "w").close()
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
