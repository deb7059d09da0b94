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
    def __init__(self, spec):
        op, nth, action = spec.split(":", 2)
        self.op, self.nth, self.action = op, None if nth == "*" else int(nth), action

    def matches(self, op, count):
        return op == self.op and (self.nth is None or self.nth == count)


class StallFS(pyfuse3.Operations):
    def __init__(self, state, faults):
        super().__init__()
        self.state, self.faults = state, faults
        self.counts = {}
        self.names = {}  # name -> inode (one flat directory)
        self.data = {}  # inode -> bytearray
        self.modes = {}
        self.next_inode = ROOT + 1

    async def _gate(self, op):
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

    def _attr(self, inode):
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

    async def getattr(self, inode, ctx=None):
        await self._gate("getattr")
        if inode != ROOT and inode not in self.data:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        await self._gate("lookup")
        inode = self.names.get(name.decode())
        if parent_inode != ROOT or inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        await self._gate("readdir")
        for i, (name, inode) in enumerate(sorted(self.names.items())):
            if i >= start_id and not pyfuse3.readdir_reply(token, name.encode(), self._attr(inode), i + 1):
                break

    async def create(self, parent_inode, name, mode, flags, ctx):
        await self._gate("create")
        inode, self.next_inode = self.next_inode, self.next_inode + 1
        self.names[name.decode()], self.data[inode], self.modes[inode] = inode, bytearray(), stat.S_IFREG | mode
        return pyfuse3.FileInfo(fh=inode), self._attr(inode)

    async def open(self, inode, flags, ctx):
        await self._gate("open")
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        await self._gate("read")
        return bytes(self.data[fh][off:off + size])

    async def write(self, fh, off, buf):
        await self._gate("write")
        data = self.data[fh]
        if len(data) < off:
            data.extend(bytes(off - len(data)))
        data[off:off + len(buf)] = buf
        return len(buf)

    async def setattr(self, inode, attr, fields, fh, ctx):
        await self._gate("setattr")
        if fields.update_size:
            del self.data[inode][attr.st_size:]
        return self._attr(inode)

    async def unlink(self, parent_inode, name, ctx):
        await self._gate("unlink")
        inode = self.names.pop(name.decode(), None)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)

    async def flush(self, fh):
        await self._gate("flush")

    async def fsync(self, fh, datasync):
        await self._gate("fsync")

    async def release(self, fh):
        await self._gate("release")

    async def statfs(self, ctx):
        await self._gate("statfs")
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = st.f_bfree = st.f_bavail = 1 << 18
        st.f_files = st.f_ffree = st.f_favail = 1 << 16
        return st


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
