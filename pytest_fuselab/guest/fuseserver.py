"""Start FUSE servers in the guest so that their fate is known (runs in the guest, stdlib only).

    python3 -m pytest_fuselab.guest.fuseserver start   --fate F --mountpoint M -- SERVER ARGS...
    python3 -m pytest_fuselab.guest.fuseserver sandbox --fate F DEVICE MOUNTPOINT [-o OPTIONS]
    python3 -m pytest_fuselab.guest.fuseserver wait    --fate F [--timeout S]   (after an unmount)
    python3 -m pytest_fuselab.guest.fuseserver warm                             (before a snapshot)

SERVER runs with -f; `sandbox` runs fuse2fs contained (as root).

`start` returns 0 once the mount is there, or the server's own failure when it exits first;
a keeper process stays behind as the server's parent and writes its fate (exit status, signal,
core dump) to F as one JSON object when it ends (fates.py; protocol.ServerFate on the host).

`sandbox` is libfuse's mount-service split done with the released stack: this (privileged)
side opens /dev/fuse and mounts; fuse2fs gets the connection as /dev/fd/0 and runs in a
transient systemd service sandboxed like e2fsprogs' fuse4fs@.service: a dynamic unprivileged
user, no capabilities, no network, NoNewPrivileges, a system-call filter, a read-only system,
access to its own disk only.  `systemd-run --pipe` hands its own stdin (the connection), stdout
and stderr (the log) to the service and waits for it, so the keeper of `start` keeps
systemd-run: its exit status is the server's, and a signal is named in its last words.  Nothing
but fuse2fs runs in the sandbox.  It is started once per mount: it imports little (no protocol).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import time

from pytest_fuselab.guest.fates import fate_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pytest_fuselab.guest.fates import Fate

STATE = "/run/fuselab/servers"
CORES = "/var/lib/fuselab/cores"
MS_NOSUID, MS_NODEV = 2, 4

# Close to fuse4fs@.service (e2fsprogs), for fuse2fs 1.47.4 which opens its device by name.
SANDBOX = [
    "DynamicUser=yes", "SupplementaryGroups=disk", "ProtectSystem=strict", "ProtectHome=yes",
    "PrivateTmp=yes", "PrivateNetwork=yes", "ProtectHostname=yes",
    "RestrictAddressFamilies=AF_UNIX",  # "none" is not accepted for transient units
    "IPAddressDeny=any", "ProtectKernelLogs=yes", "ProtectKernelModules=yes",
    "ProtectKernelTunables=yes", "ProtectControlGroups=yes", "ProtectProc=invisible",
    "ProcSubset=pid", "RestrictNamespaces=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes",
    "RestrictRealtime=yes", "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged @resources @clock "
    "@cpu-emulation @debug @module @reboot @swap @mount",
    "SystemCallErrorNumber=EL3RST", "CapabilityBoundingSet=", "AmbientCapabilities=",
    "NoNewPrivileges=yes", "RestrictSUIDSGID=yes", "ProtectClock=yes", "DevicePolicy=closed",
    "LimitCORE=infinity", f"ReadWritePaths={CORES}", f"WorkingDirectory={CORES}",
    "OOMPolicy=continue", "OOMScoreAdjust=-1000",
]
# Every server the lab starts gets this environment.  fuse2fs fills a 32 MiB block cache as it
# starts; asked to back its heap with transparent huge pages, glibc does that in some 600 page
# faults instead of 8,900, and under TCG a fault is most of a mount's CPU.  The allocator's
# layout and fuse2fs's own code and options are as shipped.
SERVER_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
# How systemd says a service's main process ended: `systemd-run --wait` ("Main processes terminated
# with: code=dumped, status=11/SEGV") and PID 1 in the journal ("Main process exited, code=exited, ...").
SYSTEMD_ENDED = re.compile(r"Main process(?:es terminated with:| exited,) code=(\w+), status=(\d+)/(\w+)")


def describe(status: int) -> Fate:
    """A waitpid status as the fate record."""
    if os.WIFSIGNALED(status):
        return {"exit": None, "signal": signal.Signals(os.WTERMSIG(status)).name,
                "core": os.WCOREDUMP(status)}
    return {"exit": os.WEXITSTATUS(status), "signal": None, "core": False}


def systemd_fate(text: str) -> Fate | None:
    """The fate record told by systemd's last words about a service in `text`, or None."""
    said = SYSTEMD_ENDED.findall(text)
    if not said:
        return None
    code, status, name = said[-1]
    if code in ("killed", "dumped"):
        return {"exit": None, "signal": f"SIG{name}", "core": code == "dumped"}
    return {"exit": int(status), "signal": None, "core": False}


def write_fate(path: str, fate: Fate) -> None:
    """Write `fate` to `path` at once (a reader sees all of it or nothing)."""
    fate["ended"] = time.time()
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(fate, f)
    os.replace(tmp, path)


def is_mounted(mountpoint: str) -> bool:
    """Whether something is mounted at `mountpoint` in our mount namespace."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mountpoint for line in f)


def tail(path: str, lines: int = 15) -> str:
    """The last `lines` lines of the file `path` ("" when it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def prepare(fate: str) -> None:
    """Make way for a new fate record at `fate`."""
    os.makedirs(os.path.dirname(fate), exist_ok=True)
    for stale in (fate, f"{fate}.log", f"{fate}.pid"):
        if os.path.exists(stale):
            os.unlink(stale)  # the lab removes another user's records before (Driver.prepare_command)


def keep(fate: str, argv: list[str], log: str | None = None, stdin: int | None = None,
         server: str | None = None) -> int:
    """Run the server `argv` as our child, wait for it and write its fate (we are its keeper).

    `stdin` is an fd for the server alone (its FUSE connection): the keeper closes its copy, so
    that a dead server really ends the connection.  `server` names a server that `argv` runs
    through `systemd-run --pipe --wait`, whose fate is then read from systemd-run's words."""
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    if os.access(CORES, os.W_OK):
        os.chdir(CORES)  # the server inherits both: where its core dump lands
    actions = [(os.POSIX_SPAWN_DUP2, stdin, 0) if stdin is not None else
               (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
    if log:
        actions += [(os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
                    (os.POSIX_SPAWN_DUP2, 1, 2)]
    try:  # spawned, not forked: a fork of this Python would cost more than the server's start
        child = os.posix_spawnp(argv[0], argv, {**SERVER_ENV, **os.environ}, file_actions=actions)
    except OSError as exc:
        if log:
            with open(log, "a") as f:
                print(f"fuseserver: cannot run {argv[0]}: {exc}", file=f)
        write_fate(fate, {"server": server or os.path.basename(argv[0]), "pid": None, "exit": 127,
                          "signal": None, "core": False})
        return 0
    if stdin is not None:
        os.close(stdin)
    with open(f"{fate}.pid.tmp", "w") as f:  # for the judge, to kill a server left behind
        json.dump({"keeper": os.getpid(), "server": child}, f)
    os.replace(f"{fate}.pid.tmp", f"{fate}.pid")
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    record = describe(status)
    told = systemd_fate(tail(log, 10)) if server and log else None  # its last words, after the server's own
    if told and told["signal"]:  # systemd-run's own exit status is the server's otherwise
        record = told
    write_fate(fate, {"server": server or os.path.basename(argv[0]), "pid": child, **record})
    return 0


def kept_server(fate: str) -> int | None:
    """The pid of the process the keeper of `fate` spawned, while it is still the keeper's child."""
    try:
        with open(f"{fate}.pid") as f:
            said = json.load(f)
        with open(f"/proc/{int(said['server'])}/stat") as f:
            ppid = int(f.read().rpartition(") ")[2].split()[1])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return int(said["server"]) if ppid == said.get("keeper") else None


def start(fate: str, mountpoint: str, argv: list[str], stdin: int | None = None, server: str | None = None) -> int:
    """Run `argv` (a FUSE server in the foreground) under a keeper; wait for the mount to answer."""
    prepare(fate)
    log = f"{fate}.log"
    if os.fork() == 0:
        os.setsid()
        for fd in (0, 1, 2):
            os.dup2(os.open("/dev/null", os.O_RDWR), fd)
        os.closerange(3, stdin if stdin is not None else 1 << 20)  # the keeper lives as long as its server:
        if stdin is not None:                                      # it holds nothing of its parent's (the
            os.closerange(stdin + 1, 1 << 20)                      # judge's connection to the agent, say)
        os._exit(keep(fate, argv, log, stdin, server))
    if stdin is not None:
        os.close(stdin)
    while True:
        if os.path.exists(fate):
            with open(fate) as f:
                record = json.load(f)
            sys.stderr.write(tail(log))
            print(f"fuseserver: {server or argv[0]} ended before mounting: {fate_text(record)}", file=sys.stderr)
            return int(record.get("exit") or 1)
        if is_mounted(mountpoint) and (stdin is None or answers(mountpoint)):  # ours: once served
            return 0
        time.sleep(0.02)


def answers(mountpoint: str) -> bool:
    """Whether the filesystem at `mountpoint` answers a stat (a FUSE server: once it serves).
    An error is an answer too (a root inode that is not a directory gives EIO), except the
    connection's end (the server went away: its fate tells) and ECONNREFUSED, the kernel's word
    for a connection whose INIT the server never answered (fuse2fs refusing an option)."""
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV, errno.ECONNREFUSED)
    return True


def fuse_mount(device: str, mountpoint: str) -> int:
    """Open /dev/fuse and mount it at `mountpoint` (root only); return the connection's fd."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    mode = stat.S_IFMT(os.stat(mountpoint).st_mode)
    data = f"fd={fd},rootmode={mode:o},user_id=0,group_id=0,allow_other,default_permissions"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(device.encode(), mountpoint.encode(), b"fuse.ext4", MS_NOSUID | MS_NODEV, data.encode()):
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount {mountpoint}: {os.strerror(err)}")
    return fd


def sandbox(fate: str, device: str, mountpoint: str, options: str) -> int:
    """Mount here, run fuse2fs on the connection in a sandboxed transient unit, kept by us."""
    prepare(fate)
    device = os.path.realpath(device)
    unit = f"fuselab-fs-{os.path.basename(fate).removesuffix('.json')}-{os.getpid()}"
    os.makedirs(CORES, mode=0o1777, exist_ok=True)
    os.chmod(CORES, 0o1777)
    server = ["fuse2fs", "-f", device, "/dev/fd/0"] + (["-o", options] if options else [])
    props = [f"--property={p}" for p in SANDBOX + [f"DeviceAllow={device} rw"]]
    props += [f"--setenv={name}={value}" for name, value in SERVER_ENV.items()]
    argv = ["systemd-run", "--pipe", "--wait", "--collect", f"--unit={unit}", *props, *server]
    fd = fuse_mount(device, mountpoint)
    status = start(fate, mountpoint, argv, stdin=fd, server="fuse2fs")
    if status != 0 and is_mounted(mountpoint):
        subprocess.run(["umount", mountpoint], capture_output=True)
    return status


def wait(fate: str, timeout: float) -> int:
    """Wait for the fate at `fate` (after an unmount) and print it."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(fate):
        if time.monotonic() > deadline:
            print(f"fuseserver: the server had not exited {timeout} s after the unmount", file=sys.stderr)
            return 1
        time.sleep(0.02)
    with open(fate) as f:
        print(fate_text(json.load(f)))
    return 0


def warm() -> int:
    """Run fuse2fs once in the sandbox, so a snapshot taken after this starts servers fast."""
    os.makedirs(CORES, mode=0o1777, exist_ok=True)
    props = [f"--property={p}" for p in SANDBOX]
    return subprocess.run(["systemd-run", "--quiet", "--pipe", "--wait", "--collect", "--unit=fuselab-warm",
                           *props, "fuse2fs", "-V"], stdin=subprocess.DEVNULL, capture_output=True).returncode


def option(args: list[str], name: str, default: str = "") -> str:
    """The value of option `name` in `args` (removed from them), or `default`."""
    if name in args:
        i = args.index(name)
        value = args[i + 1]
        del args[i:i + 2]
        return value
    return default


def main(args: list[str]) -> int:
    command, args = args[0], args[1:]
    rest = args[args.index("--") + 1:] if "--" in args else []
    args = args[:args.index("--")] if "--" in args else args
    fate = option(args, "--fate")
    if command == "warm":
        return warm()
    if command in ("start", "sandbox", "wait") and not fate:
        print(f"fuseserver: {command} needs --fate FILE", file=sys.stderr)
        return 2
    if command == "start":
        return start(fate, option(args, "--mountpoint"), rest)
    if command == "sandbox":
        options = option(args, "-o", "")
        return sandbox(fate, args[0], args[1], options)
    if command == "wait":
        return wait(fate, float(option(args, "--timeout", "30")))
    print(f"fuseserver: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
