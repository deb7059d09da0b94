#!/usr/bin/python3
"""Run hostile images through drivers inside the guest, every step in one call (stdlib only).

The lab puts this file into every guest as /usr/local/lib/fuselab/judge.py, next to
fuseserver.py (guest_fuseserver.py), whose keeper and sandbox it uses in-process.

    judge.py < SPEC.json     prints {"verdicts": [...]} as one JSON object
    judge.py --serve SOCKET  stays resident: each connection sends SPEC (one line) and gets
                             {"pid": N} (one line), then the answer; it is judged by a fork
                             of the server, so Python and these modules start once per guest
                             (the agent's "judge" request, guest_agent.py, uses it)

SPEC is {"deadlines": {step: seconds}, "stop": REGEX, "drivers": [{"name", "device",
"mountpoint", "user", "mount", "unmount", "fate"}, ...]}, built by the host
(containment.py, Driver.judge_spec).  `mount` is ["sh", COMMAND], ["start", FATE,
MOUNTPOINT, ARGV...] or ["sandbox", FATE, DEVICE, MOUNTPOINT, OPTIONS].

For each driver: mount, walk (readdir, stat, read every file, readlink, listxattr and
getxattr), modify (create, write, rename, fsync, unlink), unmount, e2fsck -fn; each step in a
child process (as the driver's user) with a deadline, its errno recorded.  Then the FUSE
server's fate, whether the mount could be removed, tasks stuck in D state, and the kernel log
of that driver alone (read from /dev/kmsg), so the host can tell which driver a splat belongs
to.  When a driver's kernel log matches `stop`, the remaining drivers are not run: the host
runs them on a fresh guest.  The mounts are made in a mount namespace of the judge's own:
systemd does not track them (a mount unit per mount costs more than the mount under TCG), and
whatever a judge leaves mounted goes away with its namespace.
"""

import ctypes
import errno
import gc
import json
import os
import pwd
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

from pytest_fuselab.guest import fuseserver

WALK_ENTRIES, WALK_FILES, READ_LIMIT = 5000, 2000, 64 << 20
STUCK_GRACE = 5.0
MNT_DETACH = 2
MS_REC, MS_PRIVATE = 0x4000, 0x40000


class StepFailed(Exception):
    """A step's own failure: what was being done, and the errno when there is one."""

    def __init__(self, what, exc=None):
        self.errno = errno.errorcode.get(exc.errno, "") if isinstance(exc, OSError) and exc.errno else ""
        detail = f": {self.errno} ({exc.strerror})" if self.errno else (f": {exc}" if exc else "")
        super().__init__(f"{what}{detail}")


# -- the steps, each run in a child process ---------------------------------------------------

def run_shell(command):
    os.execv("/bin/sh", ["/bin/sh", "-c", command])


def run(command):
    """A shell command (a string), or an argv run directly: a shell is a process more (under TCG,
    tens of milliseconds), and ["umount", PATH] is the system call itself."""
    if isinstance(command, str):
        run_shell(command)
    if command[0] == "umount" and len(command) == 2:
        if ctypes.CDLL(None, use_errno=True).umount2(command[1].encode(), 0):
            err = ctypes.get_errno()
            raise StepFailed(f"umount {command[1]}", OSError(err, os.strerror(err)))
        return 0
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        raise StepFailed(f"cannot run {command[0]}", exc) from None


def do_mount(spec):
    kind, args = spec["mount"][0], spec["mount"][1:]
    if kind == "sh":
        run_shell(args[0])
    if kind == "exec":
        return run(args)
    if kind == "start":
        return fuseserver.start(args[0], args[1], args[2:])
    if kind == "sandbox":
        return fuseserver.sandbox(*args)
    raise StepFailed(f"unknown mount kind {kind!r}")


def walk(top):
    """Visit what a user would: every entry (stat, xattrs), file contents, link targets."""
    errors, seen, files = [], 0, 0
    dirs, visited = [top], set()

    def failed(what, path, exc):
        errors.append(StepFailed(f"{what} {path}", exc))

    while dirs and seen < WALK_ENTRIES:
        directory = dirs.pop()
        try:
            entries = os.scandir(directory)
        except OSError as exc:
            failed("opendir", directory, exc)
            continue
        with entries:
            while seen < WALK_ENTRIES:
                try:
                    entry = next(entries, None)
                except OSError as exc:
                    failed("readdir", directory, exc)
                    break
                if entry is None:
                    break
                seen += 1
                path = entry.path
                try:
                    st = os.lstat(path)
                except OSError as exc:
                    failed("stat", path, exc)
                    continue
                try:
                    for name in os.listxattr(path, follow_symlinks=False):
                        try:
                            os.getxattr(path, name, follow_symlinks=False)
                        except OSError as exc:
                            failed(f"getxattr {name}", path, exc)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                        failed("listxattr", path, exc)
                if stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) not in visited:
                        visited.add((st.st_dev, st.st_ino))
                        dirs.append(path)
                elif stat.S_ISLNK(st.st_mode):
                    try:
                        os.readlink(path)
                    except OSError as exc:
                        failed("readlink", path, exc)
                elif stat.S_ISREG(st.st_mode) and files < WALK_FILES:
                    files += 1
                    try:
                        with open(path, "rb", buffering=0) as f:
                            done = 0
                            while done < READ_LIMIT:
                                chunk = f.read(1 << 20)
                                if not chunk:
                                    break
                                done += len(chunk)
                    except OSError as exc:
                        failed("read", path, exc)
    print(f"judge: walked {seen} entries, read {files} files, {len(errors)} errors")
    if errors:
        for error in errors[:5]:
            print(f"judge: {error}", file=sys.stderr)
        raise errors[0]
    return 0


def modify(top):
    """Create, write, rename, fsync and unlink, as any user of a filesystem would."""
    def attempt(what, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            raise StepFailed(what, exc) from None

    os.chdir(top)
    fd = attempt("create .fl-new", os.open, ".fl-new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    attempt("write .fl-new", os.write, fd, b"x\n")
    os.close(fd)
    attempt("rename .fl-new", os.rename, ".fl-new", ".fl-renamed")
    fd = attempt("create .fl-big", os.open, ".fl-big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = b"\0" * (64 << 10)
    for _ in range(2):  # 128 KiB: blocks to allocate, without making the server's CPU the cost
        attempt("write .fl-big", os.write, fd, block)
    attempt("fsync .fl-big", os.fsync, fd)
    os.close(fd)
    attempt("unlink .fl-renamed", os.unlink, ".fl-renamed")
    attempt("unlink .fl-big", os.unlink, ".fl-big")
    os.sync()
    return 0


# -- running a step --------------------------------------------------------------------------

def drop_to(user):
    account = pwd.getpwnam(user)
    os.setgroups(os.getgrouplist(user, account.pw_gid))
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    os.environ.update(HOME=account.pw_dir, USER=user, LOGNAME=user)


def in_child(name, deadline, user, fn, *args):
    """Run fn(*args) in a child (as `user`) with `deadline` seconds; return the step record."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err_name:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                if user:
                    drop_to(user)
                code = fn(*args) or 0
            except StepFailed as exc:
                print(f"judge: {name}: {exc}", file=sys.stderr)
                os.write(err_name.fileno(), exc.errno.encode())
            except BaseException as exc:  # noqa: BLE001 (whatever happens is the step's result)
                print(f"judge: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        status, note = reap(pid, deadline)
        err_name.seek(0)
        return step_record(name, status, out, note, err_name.read().decode(), start)


def step_record(name, status, out, note, errno_name, start):
    """The record of a step that ended with `status`, its output in the file `out`."""
    out.seek(0)
    said = f"{out.read().decode(errors='replace').strip()}\n{note}".strip()
    return {"name": name, "status": status, "said": said[-300:], "errno": errno_name,
            "seconds": round(time.monotonic() - start, 2)}


def command_step(name, deadline, user, command):
    """A step that runs `command` (a shell string or an argv): as root, an argv is spawned
    without copying the judge (posix_spawn; a fork of Python costs tens of milliseconds of
    page-table copying and faults under TCG), otherwise in a child like any other step."""
    if user or isinstance(command, str) or (command[0] == "umount" and len(command) == 2):
        return in_child(name, deadline, user, run, command)
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, out.fileno(), 2)]
        try:
            pid = os.posix_spawnp(command[0], command, os.environ, file_actions=actions, setsid=True)
        except OSError as exc:
            failed = StepFailed(f"cannot run {command[0]}", exc)
            return {"name": name, "status": 1, "said": f"judge: {name}: {failed}", "errno": failed.errno,
                    "seconds": round(time.monotonic() - start, 2)}
        status, note = reap(pid, deadline)
        return step_record(name, status, out, note, "", start)


def reap(pid, deadline):
    """The child's exit status, or -1 once it outlived `deadline` (it is then killed)."""
    fd = os.pidfd_open(pid)
    try:
        if select.select([fd], [], [], deadline)[0]:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), ""
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if select.select([fd], [], [], 3)[0]:
            os.waitpid(pid, 0)
            return -1, f"judge: no result within {deadline} s (killed)"
        return -1, f"judge: no result within {deadline} s, and the step ignores SIGKILL (D state)"
    finally:
        os.close(fd)


# -- one driver ------------------------------------------------------------------------------

def fate_of(path):
    if not path or not os.path.exists(path):
        return ""
    with open(path) as f:
        return fuseserver.fate_text(json.load(f))


def prepare(spec):
    os.makedirs(spec["mountpoint"], exist_ok=True)
    os.makedirs(fuseserver.STATE, exist_ok=True)
    os.chmod(fuseserver.STATE, 0o1777)
    if spec.get("fate"):
        fuseserver.prepare(spec["fate"])
    if spec.get("user"):
        account = pwd.getpwnam(spec["user"])
        os.chown(spec["mountpoint"], account.pw_uid, account.pw_gid)


def wait_for_fate(path, seconds):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def unit_fate(journal):
    """How the last instance in `journal` (systemd's words about a unit's instances) ended."""
    record = fuseserver.systemd_fate(journal)
    if record:
        return fuseserver.fate_text(record)
    return "exit status 0" if "Deactivated successfully" in journal else ""


def service_fate(units, since):
    """The fate of a service-mode server (an instance of `units`, owned by systemd) started
    after `since`, from the journal (which may hear of the end a moment after the process went)."""
    deadline = time.monotonic() + 3
    while True:
        journal = subprocess.run(["journalctl", "-q", "--no-pager", "-o", "cat", f"--since=@{int(since) - 1}",
                                  "-u", units], capture_output=True, text=True).stdout
        fate = unit_fate(journal)
        if fate or time.monotonic() > deadline:
            return fate
        time.sleep(0.2)


def judge_driver(spec, deadlines):
    """Every step of one driver; the record the host turns into a Verdict."""
    mnt, user, fate = spec["mountpoint"], spec.get("user"), spec.get("fate")
    record = {"name": spec["name"], "steps": [], "server": "-", "stuck_mount": False}
    steps, began = record["steps"], time.time()
    prepare(spec)
    if spec["mount"][0] == "exec":
        steps.append(command_step("mount", deadlines["mount"], user, spec["mount"][1:]))
    else:
        steps.append(in_child("mount", deadlines["mount"], user, do_mount, spec))
    if steps[-1]["status"] != 0:
        record["server"] = fate_of(fate) or (spec.get("units") and service_fate(spec["units"], began)) or "-"
        return record
    for name, fn in (("walk", walk), ("modify", modify)):
        steps.append(in_child(name, deadlines[name], user, fn, mnt))
        ended = fate_of(fate) if record["server"] == "-" else ""
        if ended:
            record["server"] = f"{ended} during {name}"
    unmount = command_step("unmount", deadlines["unmount"], user, spec["unmount"])
    if unmount["status"] == 0 and fate and not wait_for_fate(fate, deadlines["unmount"]):
        unmount["status"] = 1
        unmount["said"] += f"\njudge: the server had not exited {deadlines['unmount']} s after the unmount"
    if fuseserver.is_mounted(mnt):
        record["stuck_mount"] = True
        ctypes.CDLL(None, use_errno=True).umount2(mnt.encode(), MNT_DETACH)
    steps.append(unmount)
    if fate and record["server"] == "-":
        record["server"] = fate_of(fate) or "still running after the unmount"
    elif spec.get("units"):  # the unmount step waited for the instance to go
        record["server"] = service_fate(spec["units"], began) or "-"
    steps.append(command_step("fsck", deadlines["fsck"], None, ["e2fsck", "-fn", spec["device"]]))
    return record


# -- what the kernel said and did ------------------------------------------------------------

def d_state_tasks():
    tasks = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm, _, rest = text.partition(" (")[2].rpartition(") ")
        if rest.startswith("D"):
            tasks.add(f"{comm}[{pid}]")
    return tasks


def stuck_tasks():
    """Tasks in D state all through the next `STUCK_GRACE` seconds (a short D is normal)."""
    stuck, deadline = d_state_tasks(), time.monotonic() + STUCK_GRACE
    while stuck and time.monotonic() < deadline:
        time.sleep(0.1)
        stuck &= d_state_tasks()
    return sorted(stuck)


def console_line(record):
    """A /dev/kmsg record ("6,123,4567890,-;text\\n KEY=value...") as the console shows it."""
    head, _, text = record.partition(";")
    fields = head.split(",")
    micros = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
    message = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text.split("\n")[0])
    return f"[{micros // 1000000:5d}.{micros % 1000000:06d}] {message}"


class KernelLog:
    """New records of /dev/kmsg, as console-style lines ("[   12.345678] text")."""

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def read(self):
        lines = []
        while True:
            try:
                record = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except BrokenPipeError:  # overwritten before we read it; go on with the next
                continue
            lines.append(console_line(record))
        return "\n".join(lines)


FIRST = {"sandbox": 0, "sh": 1, "start": 2, "exec": 3}  # the slowest mounts (systemd units) start first


def judge_together(drivers, deadlines):
    """Every driver at once, each in a process of its own (on its own disk and mountpoint)."""
    outputs, pids = [None] * len(drivers), [0] * len(drivers)
    for i in sorted(range(len(drivers)), key=lambda i: FIRST.get(drivers[i]["mount"][0], 9)):
        driver = drivers[i]
        outputs[i] = tempfile.TemporaryFile()
        pid = os.fork()
        if pid == 0:
            start = time.monotonic()
            try:
                record = judge_driver(driver, deadlines)
                record.update(stuck=[], kmsg="", seconds=round(time.monotonic() - start, 2))
            except BaseException as exc:  # noqa: BLE001 (reported as this driver's failure)
                record = {"name": driver["name"], "error": f"{type(exc).__name__}: {exc}"}
            outputs[i].write(json.dumps(record).encode())
            outputs[i].flush()
            os._exit(0)
        pids[i] = pid
    records = []
    for pid, output in zip(pids, outputs, strict=True):
        os.waitpid(pid, 0)
        output.seek(0)
        records.append(json.loads(output.read() or b'{"error": "no record"}'))
        output.close()
    return records


def own_mount_namespace():
    """Mount from here on in a private copy of the mount namespace."""
    os.unshare(os.CLONE_NEWNS)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None):
        raise OSError(ctypes.get_errno(), "making / private in the judge's mount namespace")


def judge(spec):
    """The answer to one SPEC: every driver's record, and in `together` mode what hurt."""
    stop = re.compile(spec.get("stop") or r"(?!)", re.M)
    own_mount_namespace()
    log = KernelLog()
    if spec.get("together") and len(spec["drivers"]) > 1:
        records = judge_together(spec["drivers"], spec["deadlines"])
        stuck, kmsg = stuck_tasks(), log.read()
        hurt = bool(stuck or stop.search(kmsg) or any("error" in r for r in records))
        return {"verdicts": records, "together": True, "hurt": hurt, "stuck": stuck, "kmsg": kmsg}
    verdicts = []
    for driver in spec["drivers"]:
        start = time.monotonic()
        record = judge_driver(driver, spec["deadlines"])
        record["stuck"] = stuck_tasks()
        record["kmsg"] = log.read()
        record["seconds"] = round(time.monotonic() - start, 2)
        verdicts.append(record)
        if record["stuck"] or stop.search(record["kmsg"]):
            break  # the kernel is hurt: the host runs the rest on a fresh guest
    return {"verdicts": verdicts}


def answer(conn):
    """In a fork of the server: read one SPEC from `conn`, send our pid, then the answer."""
    os.setsid()  # the agent kills the whole group when the host gives up on us
    gc.disable()  # a short life, forked again for every step: no collector touching shared pages
    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    with conn.makefile("rb") as reader:
        line = reader.readline()
    try:
        reply = judge(json.loads(line))
    except Exception as exc:  # noqa: BLE001 (the host shows it as the judge's failure)
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    conn.sendall(json.dumps(reply).encode())


def serve(path):
    """Stay resident on the unix socket `path`; judge each connection in a fork."""
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(8)
    gc.freeze()  # what is loaded now stays shared with every fork (see answer)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            code = 1
            try:
                answer(conn)
                code = 0
            finally:
                os._exit(code)
        conn.close()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap the judges that have finished
                pass
        except ChildProcessError:
            pass


def main(args):
    if args[:1] == ["--serve"]:
        return serve(args[1])
    json.dump(judge(json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
