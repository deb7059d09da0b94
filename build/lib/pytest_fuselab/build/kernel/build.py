"""Configure a kernel tree for the lab (the shipped fragment on top of defconfig, tinyconfig or the
tree's own .config, then olddefconfig) and build it, showing progress; `fuselab kernel` is cli/kernel.py."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_fuselab.build.kernel import config as kconfig
from pytest_fuselab.errors import FuselabError, SettingError

Progress = Callable[[str], None]
DATA = Path(__file__).resolve().parent  # the fragments ship beside this module
FRAGMENT = DATA / "lab.config"
DEBUG_FRAGMENT = DATA / "debug.config"
BASES = ("defconfig", "tinyconfig", "current")
STEP = re.compile(r"^\s+(CC|LD|AR|AS|CC \[M\]|LD \[M\]|OBJCOPY|GEN|ZSTD|XZKERN|GZIP|MODPOST)\s+(\S+)")
ERROR = re.compile(r"make(\[\d+\])?: \*\*\* \[(.+?)\] Error \d+")


class BuildError(FuselabError):
    """A kernel build step failed; the message has the failing command and the log's tail."""


@dataclass(frozen=True)
class Build:
    tree: Path
    log: Path
    seconds: float
    bzimage: Path
    unmet: list[str]  # fragment options the configuration did not take (a dependency is off)


TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc", "perl": "perl"}
HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}


def missing_tools() -> list[str]:
    """Debian packages a kernel build needs that this host lacks."""
    import shutil

    packages = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    return packages + [pkg for header, pkg in HEADERS.items() if not Path(header).exists()]


def fragments(debug: bool) -> list[Path]:
    return [FRAGMENT, *([DEBUG_FRAGMENT] if debug else [])]


def make(tree: Path, args: list[str], log: Path, progress: Progress | None = None, nice: int = 0) -> None:
    """Run make in `tree`, its output appended to `log`; progress every few seconds; on failure
    a BuildError with the target make names and the log's last lines."""
    argv = ["make", "-C", str(tree), *args]
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    start = last = time.monotonic()
    steps = 0
    with open(log, "a", errors="replace") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, errors="replace")
        assert child.stdout is not None
        tail: list[str] = []
        for line in child.stdout:
            out.write(line)
            tail = (tail + [line.rstrip()])[-40:]
            if match := STEP.match(line):
                steps += 1
                if progress and time.monotonic() - last >= 5:
                    out.flush()  # so that the log can be followed as it grows
                    last = time.monotonic()
                    progress(f"[{last - start:5.0f}s] {steps} build steps, now {match.group(1)} {match.group(2)}")
        status = child.wait()
    if status != 0:
        failed = [m.group(2).rsplit(": ", 1) for line in tail if (m := ERROR.search(line))]
        where = f" building {failed[0][-1]}" + (f" (rule at {failed[0][0]})" if len(failed[0]) == 2 else "") \
            if failed else ""
        raise BuildError(f"`{' '.join(argv)}` failed with status {status}{where} (full log: {log}); last lines:\n"
                         + "\n".join(tail[-25:]))


def configure(tree: Path, base: str, debug: bool, log: Path, progress: Progress, nice: int = 0) -> list[str]:
    """Write tree/.config: `base` (or keep the tree's own), merge the fragments, olddefconfig.
    Returns the fragment options that did not end up as asked."""
    if base not in BASES:
        raise SettingError(f"config base {base!r} is not one of {', '.join(BASES)}")
    if base != "current" or not (tree / ".config").exists():
        progress(f"make {base if base != 'current' else 'defconfig'}")
        make(tree, [base if base != "current" else "defconfig"], log, nice=nice)
    merge = tree / "scripts/kconfig/merge_config.sh"
    progress(f"merging {', '.join(p.name for p in fragments(debug))} into .config")
    proc = subprocess.run([str(merge), "-m", "-O", str(tree), str(tree / ".config"),
                           *map(str, fragments(debug))], cwd=tree, capture_output=True, text=True)
    with open(log, "a") as out:
        out.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise BuildError(f"{merge} failed (status {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    make(tree, ["olddefconfig"], log, nice=nice)
    return unmet(kconfig.parse((tree / ".config").read_text()), fragments(debug))


def unmet(config: kconfig.Config, files: list[Path]) -> list[str]:
    """Fragment lines the final config does not match."""
    missing = []
    for path in files:
        for option, want in kconfig.parse(path.read_text()).items():
            have = kconfig.value(config, option)
            if have != want and not (want == "m" and have == "y"):
                missing.append(f"CONFIG_{option}={want} (got {have})")
    return missing


def build(tree: Path, progress: Progress, debug: bool = False, base: str = "current", jobs: int | None = None,
          nice: int = 0, configure_first: bool = True) -> Build:
    """Configure (unless told not to) and build bzImage and modules in `tree`."""
    tree = tree.resolve()
    if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
        raise SettingError(f"{tree} is not a kernel source tree (no Makefile and Kconfig)")
    if missing := missing_tools():
        raise SettingError(f"building a kernel needs {', '.join(missing)}: apt-get install {' '.join(missing)}")
    log = tree / "fuselab-build.log"
    log.write_text("")
    start = time.monotonic()
    missing = configure(tree, base, debug, log, progress, nice) if configure_first else []
    for line in missing:
        progress(f"warning: the fragment asked for {line}")
    jobs = jobs or os.cpu_count() or 1
    progress(f"make -j{jobs} bzImage modules (log: {log})")
    make(tree, [f"-j{jobs}", "bzImage", "modules"], log, progress, nice)
    seconds = time.monotonic() - start
    progress(f"built {tree / 'arch/x86/boot/bzImage'} in {seconds:.0f} s")
    return Build(tree, log, seconds, tree / "arch/x86/boot/bzImage", missing)

