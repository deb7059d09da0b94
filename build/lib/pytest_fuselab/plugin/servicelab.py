"""The mount-service scenarios' tools: service targets, the hostile server, fuse.conf, mounts, unit evidence."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_fuselab import capabilities, guestconfig
from pytest_fuselab.guest import module_command
from pytest_fuselab.judge.drivers import USER

PROTO = module_command("mountproto")
RUN = "/run/fuselab-service"
HOSTILE = "hostile"  # the subtype our hostile server answers for
# Real socket-activated servers, best first: fuse4fs (seed 004) or libfuse's own service example.
TARGETS = (("fuse4fs", "ext4", "fuse4fs-service"), ("service_ll", "service_ll", None))
# By-hand route until the stack builder installs everything these scenarios use: a tar of an
# install tree (e.g. libfuse main with its service examples) unpacked over the guest's root.
LAYER_ENV = "FUSELAB_SERVICE_LAYER"


@dataclass
class Target:
    """A real socket-activated fuse server: its unit name and the subtype it listens for."""

    unit: str
    subtype: str

    @property
    def socket(self) -> str:
        return f"{self.unit}.socket"


class Service:
    """The guest's service stack, driven from a scenario."""

    def __init__(self, guest: Any, caps: capabilities.Capabilities) -> None:
        self.guest, self.caps = guest, caps
        self.socket_dir = caps.socket_dir or "/run/filesystems"

    def sh(self, command: str, timeout: float = 60, user: str | None = None) -> Any:
        """Run a shell command (as `user` when given) and return the result, whatever its status."""
        if user:
            command = f"runuser -u {user} -- sh -c {shlex.quote(command)}"
        return self.guest.run(command, timeout=timeout, check=False)

    def require(self, *features: str) -> None:
        for feature in features:
            why = self.caps.missing(feature)
            if why:
                pytest.skip(f"needs {feature}: {why}")

    def target(self) -> Target:
        """The best real service server this stack has, or a skip naming what is missing."""
        self.require("fuservicemount3")
        for unit, subtype, feature in TARGETS:
            if (feature is None or self.caps.has(feature)) and f"{unit}.socket" in self.caps.socket_units:
                return Target(unit, subtype)
        pytest.skip("needs a socket-activated fuse server: fuse4fs.socket (fuse4fs with seed 004's service "
                    f"mode: {self.caps.missing('fuse4fs-service')}) or libfuse's service_ll example "
                    f"(install it with {LAYER_ENV}=TAR)")

    def start(self, target: Target, mode: str | None = None) -> None:
        """Start the target's socket; `mode` adds an explicit, visible SocketMode= drop-in."""
        if mode:
            dropin = f"/run/systemd/system/{target.socket}.d"
            self.guest.put(f"{dropin}/zz-fuselab-scenario-socket-mode.conf", guestconfig.socket_dropin(mode))
            self.sh("systemctl daemon-reload", timeout=120)
        result = self.sh(f"systemctl restart {target.socket}")
        assert result.exit_status == 0, f"{target.socket} did not start:\n{self.evidence(target.socket)}"

    def evidence(self, pattern: str) -> str:
        """`systemctl status` and the journal of the units matching `pattern` (for failure messages)."""
        status = self.sh(f"systemctl status --all --no-pager --full -n 0 '{pattern}' 2>&1 | head -60")
        journal = self.sh(f"journalctl -b --no-pager -o short-monotonic -u '{pattern}' 2>&1 | tail -40")
        return f"--- systemctl status {pattern}\n{status.stdout}\n--- journalctl -u {pattern}\n{journal.stdout}"

    def instances(self, target: Target) -> list[dict[str, str]]:
        """Every instance of target@.service the manager knows, with its state and result."""
        out = self.sh(f"systemctl list-units --all --plain --no-legend '{target.unit}@*.service'").stdout
        units = [line.split()[0] for line in out.splitlines() if line.strip()]
        found = []
        for unit in units:
            props = self.sh(f"systemctl show -p ActiveState,Result,ExecMainStatus,ExecMainCode,MainPID {unit}")
            found.append({"unit": unit, **dict(line.split("=", 1) for line in props.stdout.splitlines() if "=" in line)})
        return found

    def server_pid(self, target: Target, deadline: float = 30) -> int:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for unit in self.instances(target):
                if unit.get("ActiveState") == "active" and unit.get("MainPID", "0") != "0":
                    return int(unit["MainPID"])
            time.sleep(0.3)
        raise AssertionError(f"no running {target.unit}@ instance:\n{self.evidence(target.unit + '@*')}")

    def fuse_mounts(self) -> list[str]:
        """Mount points of every FUSE mount in the guest's mount namespace."""
        text = self.sh("cat /proc/self/mountinfo").stdout
        found = []
        for line in text.splitlines():
            fstype = line.split(" - ", 1)[1].split()[0] if " - " in line else ""
            if fstype in ("fuse", "fuseblk") or fstype.startswith(("fuse.", "fuseblk.")):
                found.append(line.split()[4])
        return found

    def utab(self) -> str:
        return str(self.sh("cat /run/mount/utab 2>/dev/null").stdout)

    def conf(self, **settings: str | bool) -> None:
        """Write /etc/fuse.conf (`user_allow_other=True`, `mount_max="0"`)."""
        options = [k if v is True else f"{k}={v}" for k, v in settings.items() if v is not False]
        guestconfig.configure(self.guest, fuse_conf=",".join(options))

    def user_dir(self, name: str) -> str:
        """A directory the unprivileged user owns, for mountpoints."""
        path = f"/home/{USER}/{name}"
        self.sh(f"mkdir -p {path} && chown {USER}: /home/{USER} {path}")
        return path


@dataclass
class Conversation:
    """What happened when fuservicemount3 met the hostile server."""

    status: int
    stderr: str
    transcript: list[dict[str, Any]]
    mounts: list[str]

    def requests(self) -> list[dict[str, Any]]:
        return [e for e in self.transcript if e["event"] == "request"]

    def answers(self) -> list[str]:
        """The helper's answer to each request: an errno name, the tag it sent, or "EOF" once it hung up."""
        out = []
        for r in self.requests():
            a = r.get("answer", {})
            hangup = a.get("eof") or r.get("recv_error") == "ECONNRESET" or r.get("send_error") == "EPIPE"
            out.append("EOF" if hangup else a.get("errno") or a.get("tag") or r.get("send_error", "?"))
            if hangup:
                break  # the helper has gone: later requests only meet a closed socket
        return out

    def explain(self) -> str:
        return (f"fuservicemount3 exit status {self.status}\nstderr:\n{self.stderr}\ntranscript:\n"
                + "\n".join(json.dumps(e) for e in self.transcript) + f"\nfuse mounts: {self.mounts}")


class HostileServer:
    """Our protocol server, listening where the helper connects (SEQPACKET at <dir>/hostile)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.socket = f"{service.socket_dir}/{HOSTILE}"

    def converse(self, attack: str, mountpoint: str = "/mnt/hostile", source: str = "/dev/null",
                 user: str | None = None, options: str = "", dialect: str = "main") -> Conversation:
        """Start the server for one connection, run the real helper against it, collect both sides."""
        svc, log = self.service, f"{RUN}/server.jsonl"
        svc.sh(f"mkdir -p {RUN} {svc.socket_dir} && rm -f {log} {self.socket}")
        if not mountpoint.startswith(("/dev", "/proc", "/sys")):
            svc.sh(f"mkdir -p {mountpoint}")
        svc.sh(f"nohup {PROTO} serve --attack {attack} --dialect {dialect} --listen {self.socket} "
               f"--log {log} > {RUN}/server.out 2>&1 & echo $! > {RUN}/server.pid")
        wait = svc.sh(f"for i in $(seq 100); do [ -S {self.socket} ] && exit 0; sleep 0.1; done; "
                      f"cat {RUN}/server.out; exit 1", timeout=30)
        assert wait.exit_status == 0, f"the hostile server did not start: {wait.stdout}"
        opts = f" -o {options}" if options else ""
        helper = svc.sh(f"timeout 60 fuservicemount3 {source} {mountpoint} -t {HOSTILE}{opts}", user=user,
                        timeout=90)
        svc.sh(f"pid=$(cat {RUN}/server.pid); for i in $(seq 50); do kill -0 $pid 2>/dev/null || exit 0; "
               "sleep 0.1; done; kill $pid", timeout=30)
        text = svc.sh(f"cat {log} 2>/dev/null").stdout
        transcript = [json.loads(line) for line in text.splitlines() if line.strip()]
        return Conversation(helper.exit_status, helper.stderr + helper.stdout, transcript, svc.fuse_mounts())


def not_a_crash(status: int) -> bool:
    """An exit status from a program that ended by itself (not a signal, not a timeout)."""
    return 0 <= status < 124


CONTENT = "hello from the service\n"


def make_source(service: Service, target: Target, disk: Any = None, owner: str | None = None) -> str:
    """Something the target can serve, holding CONTENT: an ext4 disk for fuse4fs, a file for service_ll."""
    # `disk` is the fuselab_disk factory; without it the ext4 goes on a loop device in the guest
    if target.subtype == "ext4":
        dev = str(disk("64M").path) if disk else service.sh(
            "mkdir -p /srv && truncate -s 64M /srv/ext4.img && losetup -f --show /srv/ext4.img").stdout.strip()
        result = service.sh(f"mkdir -p /tmp/seed && printf %s {shlex.quote(CONTENT)} > /tmp/seed/hello && "
                            f"mkfs.ext4 -q -F -d /tmp/seed {dev}")
        assert result.exit_status == 0, result.stderr
        path = dev
    else:
        path = "/srv/backing"
        service.sh(f"mkdir -p /srv && printf %s {shlex.quote(CONTENT)} > {path} && truncate -s 1M {path}")
    if owner:
        service.sh(f"chown {owner}: {path}")
    return path


def content_path(target: Target, mountpoint: str) -> str:
    """Where CONTENT shows up once the target is mounted."""
    return f"{mountpoint}/hello" if target.subtype == "ext4" else f"{mountpoint}/single_file"


def exits(service: Service, target: Target) -> list[str]:
    """systemd's "Main process exited" lines for the target's instances, from the journal."""
    text = service.sh(f"journalctl -b --no-pager -o cat -u '{target.unit}@*' | grep -E 'Main process exited|"
                      "Failed with result|core-dump|dumped core' || true").stdout
    return [line for line in text.splitlines() if line.strip()]


def wait_no_instance(service: Service, target: Target, seconds: float = 30) -> list[dict[str, str]]:
    """Wait until no instance of the target runs; the ones still running after `seconds`."""
    end = time.monotonic() + seconds
    while True:
        running = [u for u in service.instances(target) if u.get("ActiveState") in ("active", "activating",
                                                                                     "deactivating")]
        if not running or time.monotonic() > end:
            return running
        time.sleep(0.5)
