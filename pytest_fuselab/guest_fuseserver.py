#!/usr/bin/python3
"""Start FUSE servers in the guest so that their fate is known (runs in the guest, stdlib only).

The lab puts this file into every guest as /usr/local/lib/fuselab/fuseserver.py.

    fuseserver.py start   --fate F --mountpoint M -- SERVER ARGS...   (SERVER runs with -f)
    fuseserver.py sandbox --fate F DEVICE MOUNTPOINT [-o OPTIONS]     (fuse2fs, contained; root)
    fuseserver.py wait    --fate F [--timeout S]                      (after an unmount)
    fuseserver.py warm                                                (before a snapshot)

`start` returns 0 once the mount is there, or the server's own failure when it exits first;
a keeper process stays behind as the server's parent and writes its fate (exit status, signal,
core dump) to F as one JSON object when it ends.

`sandbox` is libfuse's mount-service split done with the released stack: this (privileged)
side opens /dev/fuse and mounts; fuse2fs gets the connection as /dev/fd/N and runs in a
transient systemd service sandboxed like e2fsprogs' fuse4fs@.service: a dynamic unprivileged
user, no capabilities, no network, NoNewPrivileges, a system-call filter, a read-only system,
access to its own disk only.  systemd connects the service's stdin to a socket of ours, over
which the FUSE fd is passed, so the sandbox needs no socket of its own; inside, the same keeper
as `start` writes the server's fate.
"""

import array
import ctypes
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time

STATE = "/run/fuselab/servers"
CORES = "/var/lib/fuselab/cores"
SELF = os.path.abspath(__file__)
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


def describe(status):
    """A waitpid status as the fate record."""
    if os.WIFSIGNALED(status):
        return {"exit": None, "signal": signal.Signals(os.WTERMSIG(status)).name,
                "core": os.WCOREDUMP(status)}
    return {"exit": os.WEXITSTATUS(status), "signal": None, "core": False}


def write_fate(path, fate):
    fate["ended"] = time.time()
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(fate, f)
    os.replace(tmp, path)


def is_mounted(mountpoint):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mountpoint for line in f)


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def prepare(fate):
    os.makedirs(os.path.dirname(fate), exist_ok=True)
    for stale in (fate, f"{fate}.log"):
        if os.path.exists(stale):
            os.unlink(stale)  # the lab removes another user's records before (Driver.prepare_command)


def keep(fate, argv, log=None, handed=()):
    """Run the server `argv` as our child, wait for it and write its fate (we are its keeper).

    `handed` are fds for the server alone: the keeper closes its copies, so that a dead server
    really ends its FUSE connection."""
    server = os.fork()
    if server == 0:
        if log:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1), os.dup2(fd, 2)
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        if os.access(CORES, os.W_OK):
            os.chdir(CORES)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"fuseserver: cannot run {argv[0]}: {exc}", file=sys.stderr)
            os._exit(127)
    for fd in handed:
        os.close(fd)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(server, signal.SIGTERM))
    while True:
        try:
            _, status = os.waitpid(server, 0)
            break
        except InterruptedError:
            continue
    write_fate(fate, {"server": os.path.basename(argv[0]), "pid": server, **describe(status)})
    return 0


def start(fate, mountpoint, argv):
    """Run `argv` (a FUSE server in the foreground) under a keeper; wait for the mount."""
    prepare(fate)
    log = f"{fate}.log"
    if os.fork() == 0:
        os.setsid()
        for fd in (0, 1, 2):
            os.dup2(os.open("/dev/null", os.O_RDWR), fd)
        os._exit(keep(fate, argv, log))
    while True:
        if is_mounted(mountpoint):
            return 0
        if os.path.exists(fate):
            with open(fate) as f:
                record = json.load(f)
            sys.stderr.write(tail(log))
            print(f"fuseserver: {argv[0]} ended before mounting: {fate_text(record)}", file=sys.stderr)
            return record["exit"] or 1
        time.sleep(0.02)


def fate_text(record):
    if record.get("signal"):
        return f"killed by {record['signal']}" + (" (core dumped)" if record.get("core") else "")
    return f"exit status {record.get('exit')}"


def fuse_mount(device, mountpoint):
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


def sandbox(fate, device, mountpoint, options):
    """Mount here, run fuse2fs in a sandboxed transient unit with the connection fd."""
    prepare(fate)
    device = os.path.realpath(device)
    name = os.path.basename(fate).replace(".json", "")
    unit = f"fuselab-fs-{name}"
    sock_path = f"{fate}.sock"
    os.makedirs(CORES, mode=0o1777, exist_ok=True)
    os.chmod(CORES, 0o1777)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    listener.bind(sock_path)
    listener.listen(1)
    fd = fuse_mount(device, mountpoint)
    server = ["/usr/bin/python3", "-S", SELF, "serve", "--fate", fate, "--", "fuse2fs", "-f", device, "/dev/fd/3"]
    if options:
        server += ["-o", options]
    props = [f"--property={p}" for p in SANDBOX + [f"DeviceAllow={device} rw", f"ReadWritePaths={STATE}",
                                                  f"StandardInput=file:{sock_path}",
                                                  "StandardOutput=journal", "StandardError=journal"]]
    argv = ["systemd-run", "--quiet", "--collect", f"--unit={unit}", *props, *server]
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0 and "already" in run.stderr:  # a unit of the same name not collected yet
        subprocess.run(["systemctl", "reset-failed", f"{unit}.service"], capture_output=True)
        run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        os.close(fd)
        subprocess.run(["umount", mountpoint])
        print(f"fuseserver: systemd-run failed: {run.stderr.strip()}", file=sys.stderr)
        return 1
    listener.settimeout(30)
    conn, _ = listener.accept()
    conn.sendmsg([b"fuse"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    conn.close(), listener.close(), os.close(fd), os.unlink(sock_path)
    try:
        os.stat(mountpoint)  # answered by fuse2fs once it has opened the filesystem
        return 0
    except OSError as exc:
        wait(fate, 10)
        journal = subprocess.run(["journalctl", "-q", "--no-pager", "-n", "20", "-u", unit],
                                 capture_output=True, text=True).stdout
        sys.stderr.write(journal)
        print(f"fuseserver: fuse2fs in {unit} failed to serve {mountpoint}: {exc.strerror}", file=sys.stderr)
        subprocess.run(["umount", mountpoint], capture_output=True)
        return 1


def serve(fate, argv):
    """Inside the unit: take the FUSE fd from stdin (our socket) as fd 3, keep the server."""
    conn = socket.socket(fileno=0)
    fds = array.array("i")
    _, ancdata, _, _ = conn.recvmsg(16, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not fds:
        print("fuseserver: no FUSE fd arrived on stdin", file=sys.stderr)
        return 1
    os.dup2(fds[0], 3, inheritable=True)
    os.close(fds[0])
    conn.detach()
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    return keep(fate, argv, handed=(3,))


def wait(fate, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(fate):
        if time.monotonic() > deadline:
            print(f"fuseserver: the server had not exited {timeout} s after the unmount", file=sys.stderr)
            return 1
        time.sleep(0.02)
    with open(fate) as f:
        print(fate_text(json.load(f)))
    return 0


def warm():
    """Run the sandbox once with a no-op, so a snapshot taken after this starts servers fast."""
    os.makedirs(CORES, mode=0o1777, exist_ok=True)
    props = [f"--property={p}" for p in SANDBOX]
    unit = "fuselab-warm"
    subprocess.run(["systemd-run", "--quiet", "--collect", f"--unit={unit}", *props, "/usr/bin/python3",
                    "-S", "-c", "import array, ctypes, json, resource, socket, subprocess"], check=True)
    deadline = time.monotonic() + 60  # systemd-run --wait needs D-Bus, which guests do not have
    while subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0:
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.1)
    return 0


def option(args, name, default=None):
    if name in args:
        i = args.index(name)
        value = args[i + 1]
        del args[i:i + 2]
        return value
    return default


def main(args):
    command, args = args[0], args[1:]
    rest = args[args.index("--") + 1:] if "--" in args else []
    args = args[:args.index("--")] if "--" in args else args
    fate = option(args, "--fate")
    if command == "start":
        return start(fate, option(args, "--mountpoint"), rest)
    if command == "sandbox":
        options = option(args, "-o", "")
        return sandbox(fate, args[0], args[1], options)
    if command == "serve":
        return serve(fate, rest)
    if command == "warm":
        return warm()
    if command == "wait":
        return wait(fate, float(option(args, "--timeout", "30")))
    print(f"fuseserver: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
