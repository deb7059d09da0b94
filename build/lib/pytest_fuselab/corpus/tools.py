"""The host's e2fsprogs: finding them, and the pinned environment and command lines they run with."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from pytest_fuselab.errors import HostError, ImageError
from .profiles import Profile, seeded_uuid

FAKE_TIME = 1700000000
SBIN_DIRS = ("/usr/sbin", "/sbin")
TOOLS = ("mke2fs", "debugfs", "tune2fs")

MKE2FS_CONF = """[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 5.0
\tlazy_itable_init = true
\tlazy_journal_init = true

[fs_types]
\text2 = {
\t}
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tfuselab = {
\t}
"""


def find_tool(name: str) -> str:
    """The path of an e2fsprogs command, looked up in PATH and then in SBIN_DIRS."""
    found = shutil.which(name) or (shutil.which(name, path=os.pathsep.join(SBIN_DIRS)) if SBIN_DIRS else None)
    if not found:
        raise HostError(f"{name} was not found in PATH or {', '.join(SBIN_DIRS)}: install e2fsprogs "
                        "(`apt-get install e2fsprogs`, or `fuselab setup`) to generate a corpus")
    return found


def e2fsprogs_version(mke2fs: str) -> str:
    """The version `mke2fs -V` reports ("unknown" when it names none)."""
    out = subprocess.run([mke2fs, "-V"], capture_output=True, text=True, env={"LC_ALL": "C"})
    match = re.search(r"mke2fs (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def tool_env(work: Path) -> dict[str, str]:
    """The environment e2fsprogs run with in `work`: its mke2fs.conf, a fixed clock, the C locale, no pager."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC",
            "MKE2FS_CONFIG": str(work / "mke2fs.conf"), "E2FSPROGS_FAKE_TIME": str(FAKE_TIME),
            "DEBUGFS_PAGER": "__none__", "PAGER": "__none__"}


def mke2fs_args(profile: Profile, seed: int) -> list[str]:
    """The mke2fs command line (image and size last) that makes the base of `profile` for corpus `seed`."""
    hash_seed = seeded_uuid(seed, profile.name, "hash")
    extended = ["root_owner=0:0", f"hash_seed={hash_seed}", "nodiscard", *profile.extended]
    args = ["mke2fs", "-q", "-F", "-t", profile.fs_type, "-T", "fuselab", "-b", str(profile.block_size),
            "-I", str(profile.inode_size), "-N", str(profile.inodes), "-U", seeded_uuid(seed, profile.name, "fs"),
            "-E", ",".join(extended), "-L", "fuselab"]
    if profile.features:
        args += ["-O", profile.features]
    if profile.cluster_size:
        args += ["-C", str(profile.cluster_size)]
    return [*args, "base.raw", f"{profile.size_mib}M"]


def run_debugfs(debugfs: str, env: dict[str, str], work: Path, commands: list[str]) -> None:
    """Run `commands` in a writable debugfs on work/base.raw; ImageError with what it complained about."""
    (work / "commands.txt").write_text("\n".join(commands) + "\n")
    argv = [debugfs, "-w", "-f", "commands.txt", "base.raw"]
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    errors = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if done.returncode != 0 or errors:
        raise ImageError(f"populating a base image failed (status {done.returncode}): {' '.join(argv)} in {work}\n"
                         + "\n".join(errors[-10:]) + "\ncheck that e2fsprogs is 1.47 or newer (`mke2fs -V`)")
