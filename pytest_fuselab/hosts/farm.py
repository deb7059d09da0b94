"""`fuselab repro|bench --hosts`: images judged on the hosts of hosts.toml over execnet channels (the controller).

One execnet gateway per guest slot (the spec of hosts.distribute), each running hosts.remote_judge; the images
go one at a time, as bytes over the channel, to whichever slot is free, and the verdicts come back as they are
reached.  A slot whose host is lost costs only its image in flight: it is judged once more on another slot
(another host when there is one), else each of its drivers gets a lab error; every image ends with exactly
one set of verdicts.  A host that cannot be reached, or whose lab does not start, is reported and skipped.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import execnet

from pytest_fuselab.errors import SettingError
from pytest_fuselab.hosts import config as hosts_config, distribute, messages, remote_judge, ssh
from pytest_fuselab.hosts.ssh import Reach
from pytest_fuselab.judge.verdict import Key, Verdict, failed, name_of
from pytest_fuselab.reproducers import Extracted
from pytest_fuselab.settings import Settings

SENT = ("image", "memory", "cpus", "boot_timeout", "watchdog", "command_timeout", "budget", "suppress",
        "socket_mode", "fuse_conf")  # settings the hosts take from the controller (the rest: their own)
NOT_SENT = ("kernel", "modules", "stack")  # paths and builds of the controller: not with --hosts yet
SLACK = 120.0  # seconds past an image's budget (and a guest's boot) before a silent slot counts as lost
Said = Callable[[Verdict], None]


def remote_settings(settings: Settings) -> dict[str, str]:
    """The settings chosen on the controller (not defaults) that the hosts take, as text."""
    chosen = [n for n in NOT_SENT if settings.sources.get(n, "default") != "default"]
    if chosen:
        raise SettingError(f"--hosts: {', '.join(chosen)} cannot be sent to the hosts yet; "
                           "run without it, or on each host")
    out = {}
    for name in SENT:
        value = getattr(settings, name)
        if settings.sources.get(name, "default") != "default" and value is not None:
            out[name] = "\n".join(value) if isinstance(value, tuple) else str(value)
    return out


@dataclass
class Job:
    """One image to judge, and the host it was lost on once (if it was)."""

    item: Extracted
    name: str
    lost_on: str = ""


@dataclass
class Slot:
    """One guest slot: an execnet gateway to its host and the remote judge's channel."""

    host: str
    gateway: Any
    channel: Any
    drivers: list[str] = field(default_factory=list)
    lost: bool = False


class Queue:
    """The images not yet judged, made one at a time from `jobs` as slots ask; a lost image goes back once."""

    def __init__(self, jobs: Iterable[Job], hosts: list[str]) -> None:
        self.source: Iterator[Job] | None = iter(jobs)
        self.pending: collections.deque[Job] = collections.deque()  # lost once, to judge again
        self.inflight = 0
        self.live = collections.Counter(hosts)  # host -> slots still working
        self.cond = threading.Condition()
        self.stopped = False

    def _fits(self, job: Job, host: str) -> bool:
        others = [h for h, n in self.live.items() if n > 0 and h != job.lost_on]
        return job.lost_on != host or not others

    def _next(self, host: str) -> Job | None:
        job = next((j for j in self.pending if self._fits(j, host)), None)
        if job is not None:
            self.pending.remove(job)
        elif self.source is not None:
            job = next(self.source, None)
            self.source = None if job is None else self.source
        return job

    def take(self, host: str) -> Job | None:
        """The next image for a slot of `host`; None when there is nothing left to do."""
        with self.cond:
            while not self.stopped:
                job = self._next(host)
                if job is not None:
                    self.inflight += 1
                    return job
                if not self.pending and not self.inflight and self.source is None:
                    return None
                self.cond.wait()
            return None

    def left(self) -> list[Job]:
        """What no slot took (every slot was lost): the images to report as lab errors."""
        with self.cond:
            rest, self.pending = [*self.pending, *(self.source or [])], collections.deque()
            self.source = None
            return rest

    def done(self) -> None:
        with self.cond:
            self.inflight -= 1
            self.cond.notify_all()

    def lost(self, host: str, job: Job | None) -> Job | None:
        """A slot of `host` is gone; its `job` goes back once if a slot is left, else it is returned (lab error)."""
        with self.cond:
            self.live[host] -= 1
            if job is not None:
                self.inflight -= 1
                if not job.lost_on and +self.live:
                    job.lost_on = host
                    self.pending.appendleft(job)
                    job = None
            self.cond.notify_all()
            return job

    def ended(self, host: str) -> None:
        """A slot of `host` finished its work."""
        with self.cond:
            self.live[host] -= 1
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


def connect(reach: Reach, cfg: Any, group: Any, settings: dict[str, str], warm: bool) -> Slot:
    """A gateway to one slot of `reach`'s host with the remote judge started; RuntimeError says why not."""
    gateway = group.makegateway(distribute.spec(reach, cfg))
    channel = gateway.remote_exec(remote_judge)
    channel.send(messages.hello(settings, warm))
    answer = channel.receive(timeout=1800)  # a cold host may first build the guest's snapshot
    if messages.kind(answer) == "failure":
        raise RuntimeError(f"the lab did not start there: {messages.body(answer, 'failure').get('why')}")
    return Slot(reach.host.name, gateway, channel, messages.check_ready(answer))


def rebuild(found: object, job: Job, drivers: list[str]) -> list[Verdict]:
    """The Verdicts of a `verdicts` message, checked: one per driver asked for, of the image asked for."""
    raw = messages.body(found, "verdicts").get("list")
    if not isinstance(raw, list) or len(raw) != len(drivers):
        raise messages.MessageError(f"verdicts: wanted {len(drivers)} verdicts of {job.name}")
    out = []
    for i, data in enumerate(raw):
        fields = messages.check_verdict(data, f"verdicts[{i}]")
        if fields["image"] != job.name or fields["driver"] != drivers[i]:
            raise messages.MessageError(f"verdicts[{i}]: of {fields['image']}/{fields['driver']}, "
                                        f"not of {job.name}/{drivers[i]}")
        steps = [remote_step(s) for s in fields.pop("steps")]  # type: ignore[attr-defined]
        out.append(Verdict(**fields, steps=steps))  # type: ignore[arg-type]
    return out


def remote_step(fields: dict[str, Any]) -> Any:
    from pytest_fuselab.judge.verdict import Step

    return Step(**fields)


class Farm:
    """The slots of a run over hosts: connected first, then fed images until none is left."""

    def __init__(self, settings: Settings, warm: bool = False, log: Callable[[str], None] | None = None) -> None:
        if settings.hosts is None:
            raise SettingError("--hosts: no hosts file given")
        self.hosts = hosts_config.load(settings.hosts)
        self.settings, self.warm = settings, warm
        self.remote = remote_settings(settings)
        self.log = log or (lambda text: print(f"fuselab: {text}", file=sys.stderr, flush=True))
        self.group = execnet.Group()
        self.slots: list[Slot] = []
        self.skipped: list[tuple[str, str]] = []  # (host, why)
        self.lost: dict[str, str] = {}  # host -> why
        self.reruns: list[tuple[str, str]] = []  # (image, host it was lost on)
        self.lock = threading.Lock()
        self.failure: BaseException | None = None  # the controller's own, in a slot's thread
        self.closed = False

    def connect(self) -> list[Slot]:
        """Probe the hosts, open a gateway per guest slot at once; the hosts that fail are reported and skipped."""
        live, self.skipped = distribute.usable(ssh.probe_all(self.hosts))
        cfg = ssh.ssh_config(self.hosts)
        reaches = [r for r in live for _ in range(r.guests)]
        threads = [threading.Thread(target=self._open, args=(r, cfg), daemon=True) for r in reaches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        order = {r.host.name: i for i, r in enumerate(live)}
        self.slots.sort(key=lambda slot: order[slot.host])  # reports follow hosts.toml
        for name, why in self.skipped:
            self.log(f"host {name} skipped: {why}")
        if not self.slots:
            raise SettingError(f"--hosts: no usable host in {self.hosts.path}: "
                               + "; ".join(f"{n}: {w}" for n, w in self.skipped))
        counts = collections.Counter(s.host for s in self.slots)
        self.log("judging on " + ", ".join(f"{h} ({n} slot{'s' if n > 1 else ''})" for h, n in counts.items()))
        return self.slots

    def _open(self, reach: Reach, cfg: Any) -> None:
        try:
            slot = connect(reach, cfg, self.group, self.remote, self.warm)
        except Exception as exc:  # noqa: BLE001 - execnet.HostNotFound, EOFError, a failed lab: skip the slot
            with self.lock:
                if all(h != reach.host.name for h, _ in self.skipped):
                    why = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
                    self.skipped.append((reach.host.name, why))
            return
        with self.lock:
            self.slots.append(slot)

    def drivers(self, chosen: list[str] | None) -> list[str]:
        """The run's drivers: those chosen, else those the first slot's stack can run; slots lacking one are dropped."""
        drivers = list(chosen or self.slots[0].drivers)
        keep = [s for s in self.slots if set(drivers) <= set(s.drivers)]
        for slot in self.slots:
            if slot not in keep:
                self.log(f"host {slot.host} skipped: its stack cannot run {', '.join(set(drivers) - set(slot.drivers))}")
                slot.gateway.exit()
        if not keep:
            raise SettingError(f"--hosts: no host can run {', '.join(drivers)}")
        self.slots = keep
        return drivers

    def run(self, items: Iterable[Extracted], drivers: list[str], said: Said, names: dict[Key, str],
            watch: Callable[[str, str], None] | None = None) -> None:
        """Every item (made as slots ask) through `drivers` on the slots, named by `names` (verdict.item_names);
        each image's verdicts go to `said`, one thread at a time."""
        slots = [s for s in self.slots if not s.lost]
        queue = Queue((Job(item, name_of(names, item)) for item in items), [s.host for s in slots])
        threads = [threading.Thread(target=self._feed, args=(s, queue, drivers, said, watch), daemon=True)
                   for s in slots]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.5)  # a join with a timeout lets Ctrl-C through
        except BaseException:
            queue.stop()
            self.close(now=True)
            raise
        if self.failure is not None:
            self.close(now=True)
            raise self.failure
        for job in queue.left():  # no slot was left to take them
            self._error(job, drivers, "not judged: every host that could judge it was lost ("
                        + "; ".join(f"{h}: {w}" for h, w in self.lost.items()) + ")", said)

    def _feed(self, slot: Slot, queue: Queue, drivers: list[str], said: Said,
              watch: Callable[[str, str], None] | None) -> None:
        """One slot's thread: a failure of the controller itself (making an image, writing a report) stops the run."""
        try:
            self._work(slot, queue, drivers, said, watch)
        except BaseException as exc:
            self.failure = self.failure or exc
            queue.stop()

    def _work(self, slot: Slot, queue: Queue, drivers: list[str], said: Said,
              watch: Callable[[str, str], None] | None) -> None:
        timeout = self.settings.budget + self.settings.boot_timeout + SLACK
        while (job := queue.take(slot.host)) is not None:
            item = job.item
            try:
                slot.channel.send(messages.image(job.name, item.fstype, item.mount_options, item.mount_flags,
                                                 item.notes, item.sparse.size, list(item.sparse.extents), drivers))
                while messages.kind(answer := slot.channel.receive(timeout=timeout)) == "watch":
                    got = messages.body(answer, "watch")
                    if watch is not None:
                        watch(str(got.get("image"))[:messages.MAX_NAME], str(got.get("what"))[:200])
                verdicts = rebuild(answer, job, drivers)
            except Exception as exc:  # noqa: BLE001 - a lost host, a closed or silent channel, a broken message
                self._lost(slot, queue, job, drivers, said, exc)
                return
            with self.lock:
                for v in verdicts:
                    said(v)
            queue.done()
        queue.ended(slot.host)

    def _lost(self, slot: Slot, queue: Queue, job: Job, drivers: list[str], said: Said, exc: Exception) -> None:
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else 'channel closed'}"
        with self.lock:
            self.lost.setdefault(slot.host, why)
            slot.lost = True
        self.log(f"host {slot.host} lost ({why}) while judging {job.name}")
        with contextlib.suppress(Exception):
            slot.gateway.exit()
        first = job.lost_on
        back = queue.lost(slot.host, job)
        if back is None:
            self.log(f"judging {job.name} again on another slot")
            with self.lock:
                self.reruns.append((job.name, slot.host))
            return
        again = f"lost twice (on {first}, then on {slot.host})" if first else \
            f"host {slot.host} was lost while judging it and no other slot was left"
        self._error(back, drivers, f"{why}; {again}", said)

    def _error(self, job: Job, drivers: list[str], why: str, said: Said) -> None:
        with self.lock:
            for d in drivers:
                said(failed(job.name, d, f"lab error on the hosts: {why}"))

    def summary(self) -> list[str]:
        """One line per host: its slots and state, then the re-runs."""
        counts = collections.Counter(s.host for s in self.slots)
        lines = [f"{h}: {n} slot(s), " + (f"LOST: {self.lost[h]}" if h in self.lost else "ok") for h, n in counts.items()]
        lines += [f"{h}: skipped at the start: {w}" for h, w in self.skipped]
        lines += [f"re-run after losing {h}: {image}" for image, h in self.reruns]
        return lines

    def close(self, now: bool = False) -> None:
        """End every gateway: the remote judges shut their guests down (`now`: killed, and QEMU dies with them)."""
        if self.closed:
            return
        self.closed = True
        for slot in self.slots if not now else []:
            with contextlib.suppress(Exception):
                slot.channel.send(None)
        for slot in self.slots if not now else []:
            with contextlib.suppress(Exception):
                slot.channel.waitclose(timeout=60)
        self.group.terminate(timeout=5 if now else 30)
