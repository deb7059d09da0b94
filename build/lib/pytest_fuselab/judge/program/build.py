"""C reproducers compiled on the host as syzkaller compiles them (never run there), and
syz-execprog's command line for a `.syz` program."""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
from pathlib import Path

from pytest_fuselab.errors import HostError, InputError

# syzkaller (commit 1e72964b, 2026-08-17) builds a C reproducer for linux/amd64 with its target's
# flags (sys/targets/targets.go: `-m64`, `-static-pie` falling back to `-static`, and the common
# `-O2 -pthread -Wall ...`) plus the `-DGOOS_linux=1 -DGOARCH_amd64=1 -DHOSTGOOS_linux=1` that
# pkg/csource/build.go adds; its docs/reproducing_crashes.md tells people `gcc repro.c -lpthread
# -static -o repro`. We take `-static` (no PIE: Debian 12's gcc and libc.a link it everywhere) and
# `-w` instead of `-Wall -Werror`, as its BuildNoWarn does for repros written for another compiler.
CFLAGS = ["-m64", "-O2", "-pthread", "-static", "-w",
          "-DGOOS_linux=1", "-DGOARCH_amd64=1", "-DHOSTGOOS_linux=1"]
COMPILE_SECONDS = 120
COMPILE_MEMORY = 2 << 30  # address space of the compiler (cc1 included)
SHOWN_LINES = 8  # of the compiler's complaints


def gcc_argv(source: Path, output: Path, compiler: str = "gcc") -> list[str]:
    """The compiler's command line for `source`."""
    return [compiler, "-o", str(output), *CFLAGS, str(source)]


def _bounded() -> None:
    """In the compiler's process: a memory bound (its children inherit it)."""
    resource.setrlimit(resource.RLIMIT_AS, (COMPILE_MEMORY, COMPILE_MEMORY))


def compile_c(source: Path, output: Path, compiler: str = "gcc", seconds: float = COMPILE_SECONDS) -> Path:
    """Compile `source` to the static binary `output`, left without execute bits: it only runs in guests."""
    if shutil.which(compiler) is None:
        raise HostError(f"{compiler} not found: C reproducers are compiled on the host; run `fuselab setup` "
                        "(Debian packages gcc and libc6-dev)")
    argv = gcc_argv(source, output, compiler)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=seconds,
                              stdin=subprocess.DEVNULL, preexec_fn=_bounded)
    except subprocess.TimeoutExpired:
        output.unlink(missing_ok=True)
        raise InputError(f"{source}: the compiler took more than {seconds:.0f} s ({' '.join(argv)})") from None
    if done.returncode != 0 or not output.is_file():
        output.unlink(missing_ok=True)
        said = [line for line in done.stderr.splitlines() if line.strip()][:SHOWN_LINES]
        if any("cannot find -lc" in line or "cannot find -lpthread" in line for line in said):
            raise HostError(f"{source}: no static C library on the host ({said[0].strip()}); run `fuselab setup` "
                            "(Debian package libc6-dev has libc.a)")
        raise InputError(f"{source}: does not compile (status {done.returncode}: {' '.join(argv)}):\n"
                         + "\n".join(said))
    output.chmod(0o644)  # never executed on the host
    return output


# -- syz-execprog ----------------------------------------------------------------------------

HEADER = re.compile(r"^#\s*(\{.*\})\s*$", re.M)
OPTION = re.compile(r'"?([A-Za-z_]+)"?\s*:\s*"?([A-Za-z0-9_]+)"?')


def header_options(text: str) -> dict[str, str]:
    """The options a syzkaller reproducer's header line states (`# {Threaded:true Procs:8 ...}`, or
    the JSON spelling of newer versions), keys in lower case without underscores."""
    match = HEADER.search(text)
    if match is None:
        return {}
    return {key.lower().replace("_", ""): value.lower() for key, value in OPTION.findall(match.group(1))}


def execprog_argv(text: str, executor: str = "./syz-executor", program: str = "prog.syz") -> list[str]:
    """syz-execprog's command line for the program `text`: processes, sandbox, threads and repetition as its
    header says, else one process, no sandbox, threaded, once (syzkaller's docs/reproducing_crashes.md: `Threaded`/`Procs`/`Sandbox` map to the
    flags of those names, `Repeat:true` to `-repeat=0`, which the run's deadline ends)."""
    opts = header_options(text)
    sandbox = opts.get("sandbox", "none")
    if sandbox not in ("none", "setuid", "namespace", "android"):
        sandbox = "none"
    procs = opts.get("procs", "1")
    return ["./syz-execprog", f"-executor={executor}", f"-repeat={0 if opts.get('repeat') == 'true' else 1}",
            f"-procs={procs if procs.isdigit() and 0 < int(procs) <= 32 else 1}", f"-sandbox={sandbox}",
            f"-threaded={'false' if opts.get('threaded') == 'false' else 'true'}", program]


def syzkaller_binaries(directory: Path) -> tuple[Path, Path]:
    """syz-execprog and syz-executor of a syzkaller build (DIR/bin/linux_amd64/); InputError naming what is missing."""
    found = []
    for name in ("syz-execprog", "syz-executor"):
        for candidate in (directory / "bin" / "linux_amd64" / name, directory / "linux_amd64" / name, directory / name):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            raise InputError(f"--syzkaller {directory}: no {name} in {directory}/bin/linux_amd64/; build it with "
                             "`make TARGETOS=linux TARGETARCH=amd64 execprog executor` in a syzkaller checkout")
    return found[0], found[1]
