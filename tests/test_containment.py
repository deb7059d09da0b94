"""Unit: the host's containment decisions with fake guests: the image's budget, who is blamed, lab
errors apart from findings, how far an image got, disks unplugged, unique names, verdicts streamed."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from collections.abc import Callable

import pytest

from pytest_fuselab.errors import GuestError, GuestLost
from pytest_fuselab.guest.protocol import DriverRecord, JudgeAnswer, JudgeSpec, StepRecord
from pytest_fuselab.judge import containment, parallel
from pytest_fuselab.judge.verdict import item_names, name_of, reached_by, refusal_of
from pytest_fuselab.reproducers.extracted import Extracted
from pytest_fuselab.reproducers.sparse import SparseImage
from pytest_fuselab.vm.guest import Disk
from pytest_fuselab.vm.machine import Runstate

ALL = ["kernel", "fuse2fs", "fuse2fs-user", "fuse2fs-sandbox"]
WARNING = ("[   12.0] WARNING: CPU: 0 PID: 9 at fs/ext4/super.c:1 ext4_fill_super+0x1/0x2\n"
           "[   12.0] ---[ end trace 0000000000000000 ]---\n")
FULL = [StepRecord("mount", 0, "", 0.5), StepRecord("walk", 0, "walked 5 entries", 0.5),
        StepRecord("modify", 0, "", 0.2), StepRecord("unmount", 0, "", 0.1), StepRecord("fsck", 0, "", 0.3)]
QUOTA = [StepRecord("mount", 3, "quotas not supported.\nMount failed due to unrecognized options.", 0.2),
         StepRecord("fsck", 0, "", 0.3)]


def record(name: str, steps: list[StepRecord] | None = None, **extra: Any) -> DriverRecord:
    r = DriverRecord(name=name, steps=list(FULL if steps is None else steps), server="exit status 0", seconds=1.5)
    for key, value in extra.items():
        setattr(r, key, value)  # fields the guest side adds (reached, refusal, hung), or error
    return r


@dataclass
class FakeMachine:
    state: Runstate = Runstate.READY
    running: bool = True
    exitcode: int | None = None

    def is_running(self) -> bool:
        return self.running


@dataclass
class FakeGuest:
    """Answers the judge with `answer(spec, timeout)`; records what it was asked and what was unplugged."""

    answer: Callable[[JudgeSpec, float], JudgeAnswer | None]
    console: str = ""
    answers_pings: bool = True
    machine: FakeMachine = field(default_factory=FakeMachine)
    disks: list[Disk] = field(default_factory=list)
    unplugged: list[Disk] = field(default_factory=list)
    asked: list[tuple[JudgeSpec, float, float | None]] = field(default_factory=list)
    killed: bool = False
    channel: Any = None

    def __post_init__(self) -> None:
        self.channel = SimpleNamespace(lost=None, request=lambda op, wait, **kw: {"stuck": []})

    @property
    def state(self) -> Runstate:
        return self.machine.state

    def console_offset(self) -> int:
        return 0

    def console_text(self, since: int = 0) -> str:
        return self.console

    def splats(self, since: int = 0, suppress: tuple[str, ...] = ()) -> list[Any]:
        from pytest_fuselab.judge import splats

        return splats.scan(self.console, suppress)

    def ping(self, timeout: float = 5.0) -> bool:
        return self.answers_pings

    def judge(self, spec: JudgeSpec, timeout: float, wait: float | None = None) -> JudgeAnswer | None:
        self.asked.append((spec, timeout, wait))
        return self.answer(spec, timeout)

    def plug_partitioned(self, path: Path) -> Disk:
        disk = Disk(f"disk{len(self.disks) + len(self.unplugged) + 1}", path, "", 0)
        self.disks.append(disk)
        return disk

    def partitions_of(self, disk: Disk, count: int, timeout: float = 30) -> list[Disk]:
        return [Disk(f"{disk.name}p{i + 1}", disk.host_path, f"/dev/vd{i}", 1 << 20) for i in range(count)]

    def unplug(self, disk: Disk) -> None:
        self.disks.remove(disk)
        self.unplugged.append(disk)

    def reap_unplugged(self) -> list[Disk]:
        return []

    def kill(self) -> None:
        self.killed = True

    def shutdown(self) -> None:
        self.machine.state = Runstate.STOPPED


class FakeLab:
    """Hands out FakeGuests; the first answers with `first`, every later one with `later`."""

    def __init__(self, first: Callable[..., JudgeAnswer | None], later: Callable[..., JudgeAnswer | None] | None = None,
                 budget: float = 150.0, **guest: Any) -> None:
        self.first, self.later, self.guest_options = first, later or healthy, guest
        self.settings = SimpleNamespace(budget=budget)
        self.guests: list[FakeGuest] = []
        self.said: list[str] = []

    def guest(self) -> FakeGuest:
        made = FakeGuest(self.first if not self.guests else self.later, **self.guest_options)
        self.guests.append(made)
        return made

    def progress(self, message: str) -> None:
        self.said.append(message)


def healthy(spec: JudgeSpec, timeout: float) -> JudgeAnswer:
    return JudgeAnswer(verdicts=[record(d.name) for d in spec.drivers], together=spec.together)


def image(tmp_path: Path, name: str = "image.gz", index: int = 0, directory: str = "f_a") -> Extracted:
    source = tmp_path / directory / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"x")
    return Extracted(source, index, "ext4", SparseImage(4 << 20, ((1024, b"\x53\xef"),)), "", 0)


def judge_one(tmp_path: Path, lab: FakeLab, drivers: list[str] = ALL, budget: float | None = None) -> list[Any]:
    runner = containment.ImageRunner(lab, tmp_path / "run", budget=budget)  # type: ignore[arg-type]
    try:
        return runner.judge_item(image(tmp_path), drivers)
    finally:
        runner.close()


def test_the_guests_judge_gets_the_images_budget_less_the_hosts_margins(tmp_path):
    lab = FakeLab(healthy, budget=100)
    verdicts = judge_one(tmp_path, lab)
    spec, timeout, wait = lab.guests[0].asked[0]
    assert 80 <= timeout <= 100 - containment.HEALTH_RESERVE - containment.CHANNEL_MARGIN
    assert wait == pytest.approx(timeout + containment.CHANNEL_MARGIN)
    assert spec.budget == pytest.approx(timeout - containment.GUEST_MARGIN, abs=0.1)
    assert max(spec.deadlines.values()) <= spec.budget + 0.1  # no step may outlast the image
    assert [v.verdict for v in verdicts] == ["clean", "contained", "contained", "contained"]
    assert {v.reached for v in verdicts} == {"checked"}


def test_a_judge_that_never_answers_is_a_lab_error_within_the_budget_not_a_breach(tmp_path):
    """The 17-minute `BREACH fuse2fs-sandbox judge=-1`: now an error, no second guest, no re-judging."""
    lab = FakeLab(lambda spec, timeout: None, budget=60)
    verdicts = judge_one(tmp_path, lab, ["fuse2fs-sandbox"])
    (v,) = verdicts
    assert v.verdict == "error" and v.splats == []
    assert "no answer within" in v.steps[0].said and v.hung.startswith("no verdict within the image's budget")
    assert len(lab.guests) == 1  # no second guest for it
    several = judge_one(tmp_path, FakeLab(lambda spec, timeout: None, budget=60))
    assert [v.verdict for v in several] == ["error"] * 4  # the whole batch: the lab's failure, judged once


def test_a_driver_the_judge_failed_on_is_the_error_and_the_others_keep_their_verdicts(tmp_path):
    def one_fails(spec: JudgeSpec, timeout: float) -> JudgeAnswer:
        records = [record(d.name) for d in spec.drivers]
        records[3] = DriverRecord(name=records[3].name, error="no record")
        return JudgeAnswer(verdicts=records, together=True, hurt=True)

    lab = FakeLab(one_fails)
    verdicts = judge_one(tmp_path, lab)
    assert [v.verdict for v in verdicts] == ["clean", "contained", "contained", "error"]
    assert "judge failed on fuse2fs-sandbox: no record" in verdicts[3].evidence
    assert len(lab.guests) == 1  # blame known: no one judged again


def test_a_timeout_the_guest_blames_on_one_driver_judges_no_one_again(tmp_path):
    def sandbox_hung(spec: JudgeSpec, timeout: float) -> JudgeAnswer:
        records = [record(d.name) for d in spec.drivers]
        records[3] = record("fuse2fs-sandbox", FULL[:2], hung="server hung during walk (connection aborted)")
        return JudgeAnswer(verdicts=records, together=True)

    lab = FakeLab(sandbox_hung)
    verdicts = judge_one(tmp_path, lab)
    assert [v.verdict for v in verdicts] == ["clean", "contained", "contained", "contained"]
    assert (verdicts[3].hung, verdicts[3].reached) == ("server hung during walk (connection aborted)", "walked")
    assert len(lab.guests) == 1


def test_a_hurt_kernel_with_no_one_to_blame_judges_each_driver_alone(tmp_path):
    lab = FakeLab(lambda spec, timeout: JudgeAnswer(verdicts=[record(d.name) for d in spec.drivers],
                                                    together=True, hurt=True, kmsg=WARNING))
    verdicts = judge_one(tmp_path, lab)
    assert len(lab.guests) == 2  # the batch's guest is replaced; the fresh one stays healthy
    assert [[d.name for d in spec.drivers] for spec, _, _ in lab.guests[1].asked] == [[d] for d in ALL]
    assert [v.verdict for v in verdicts] == ["clean", "contained", "contained", "contained"]


def test_judging_alone_stays_within_the_images_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(containment, "ALONE_FLOOR", 1000.0)  # as if the batch had used up the budget
    lab = FakeLab(lambda spec, timeout: JudgeAnswer(verdicts=[record(d.name) for d in spec.drivers],
                                                    together=True, hurt=True, kmsg=WARNING))
    verdicts = judge_one(tmp_path, lab)
    assert len(lab.guests) == 1
    assert [v.verdict for v in verdicts] == ["error"] * 4
    assert "could be judged alone" in verdicts[0].evidence and "WARNING in ext4_fill_super" in verdicts[0].evidence


def test_a_budget_too_small_to_judge_is_an_error_without_asking_the_guest(tmp_path):
    lab = FakeLab(healthy, budget=10)
    verdicts = judge_one(tmp_path, lab, ["kernel"])
    assert verdicts[0].verdict == "error" and "budget (10 s) was spent" in verdicts[0].evidence
    assert lab.guests[0].asked == []


def test_a_lost_guest_is_a_lab_error_unless_a_splat_explains_it(tmp_path):
    def lost(spec: JudgeSpec, timeout: float) -> JudgeAnswer:
        raise GuestLost("the guest's agent channel closed (QEMU exited?)")

    quiet = FakeLab(lost, answers_pings=False)
    assert judge_one(tmp_path, quiet, ["kernel"])[0].verdict == "error"
    splat = FakeLab(lost, answers_pings=False, console=WARNING)
    v = judge_one(tmp_path, splat, ["kernel"])[0]
    assert (v.verdict, v.splats[0]) == ("finding", "WARNING in ext4_fill_super")
    fuse = judge_one(tmp_path, FakeLab(lost, answers_pings=False, console=WARNING), ["fuse2fs"])[0]
    assert fuse.verdict == "breach"


def test_an_answer_that_breaks_the_protocol_is_a_lab_error(tmp_path):
    def broken(spec: JudgeSpec, timeout: float) -> JudgeAnswer:
        raise GuestError("the guest's judge sent an answer the lab cannot take: answer.x: unknown field")

    verdicts = judge_one(tmp_path, FakeLab(broken))
    assert [v.verdict for v in verdicts] == ["error"] * 4 and "unknown field" in verdicts[0].evidence


def test_how_far_an_image_got_from_the_guests_fields_or_its_steps(tmp_path):
    def refusals(spec: JudgeSpec, timeout: float) -> JudgeAnswer:
        return JudgeAnswer(verdicts=[
            record("kernel", FULL[:2] + [StepRecord("modify", -1, "timed out", 60.0)]),
            record("fuse2fs", QUOTA),
            record("fuse2fs-user", QUOTA, reached="refused", refusal="quotas not supported. (exit 3)"),
            record("fuse2fs-sandbox", FULL[:4])], together=True)

    verdicts = judge_one(tmp_path, FakeLab(refusals))
    assert [v.reached for v in verdicts] == ["walked", "refused", "refused", "unmounted"]
    assert verdicts[1].refusal == "quotas not supported. / Mount failed due to unrecognized options. (exit 3)"
    assert verdicts[2].refusal == "quotas not supported. (exit 3)"
    assert reached_by([]) == "" and reached_by([StepRecord("mount", -1, "", 60)]) == ""
    assert refusal_of([StepRecord("mount", 32, "", 0.1)]) == "no words (exit 32)"


def test_each_judged_disk_is_unplugged_and_deleted_unless_a_mount_is_stuck(tmp_path):
    lab = FakeLab(healthy)
    runner = containment.ImageRunner(lab, tmp_path / "run")  # type: ignore[arg-type]
    first, second = image(tmp_path), image(tmp_path, directory="f_b")
    runner.judge_item(first, ALL, after=second)
    guest = lab.guests[0]
    assert len(guest.unplugged) == 1 and not guest.unplugged[0].host_path.exists()
    assert len(guest.disks) == 1  # the next image's disk, plugged ahead
    runner.judge_item(second, ALL)
    assert len(guest.unplugged) == 2 and guest.disks == []
    stuck = FakeLab(lambda spec, timeout: JudgeAnswer(
        verdicts=[record(d.name, stuck_mount=d.name == "fuse2fs") for d in spec.drivers], together=True))
    verdicts = judge_one(tmp_path, stuck)
    assert verdicts[1].verdict == "breach" and stuck.guests[0].unplugged == []
    runner.close()


def test_names_are_the_shortest_path_suffix_that_tells_inputs_apart(tmp_path):
    a, b = image(tmp_path, directory="tests/f_a"), image(tmp_path, directory="tests/f_b")
    c0, c1 = image(tmp_path, "prog.syz", 0, "x"), image(tmp_path, "prog.syz", 1, "x")
    d = image(tmp_path, "other.img", 0, "x")
    names = item_names([a, b, c0, c1, d])
    assert [name_of(names, i) for i in (a, b, c0, c1, d)] == [
        "f_a/image.gz", "f_b/image.gz", "prog.syz#0", "prog.syz#1", "other.img"]
    deeper = image(tmp_path, directory="other/tests/f_a")
    assert name_of(item_names([a, deeper]), a).endswith("/tests/f_a/image.gz")
    assert name_of(None, c1) == "prog.syz#1"  # no names given: the file's name and index


def test_verdicts_from_several_guests_are_said_as_they_come_under_the_run_names(tmp_path):
    lab = FakeLab(healthy)
    lab.later = healthy
    items = [image(tmp_path, directory=f"d{i}") for i in range(3)]
    heard: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def said(v: Any) -> None:
        with lock:
            heard.append((v.image, v.driver, threading.current_thread().name))

    verdicts = parallel.judge_images(lab, tmp_path / "run", items, ["kernel", "fuse2fs"], guests=2,  # type: ignore[arg-type]
                                        said=said)
    assert [v.image for v in verdicts] == ["d0/image.gz"] * 2 + ["d1/image.gz"] * 2 + ["d2/image.gz"] * 2
    assert sorted(h[:2] for h in heard) == sorted((v.image, v.driver) for v in verdicts)
    assert all(h[2] != threading.main_thread().name for h in heard)  # said by the workers, at once


def test_a_server_left_running_costs_the_next_image_a_fresh_guest_not_its_cpu(tmp_path):
    def left(spec: JudgeSpec, timeout: float) -> JudgeAnswer:
        records = [record(d.name) for d in spec.drivers]
        records[1] = record("fuse2fs", FULL[:2], hung="server hung during walk (connection aborted)")
        records[1].server = "still running after the unmount"
        return JudgeAnswer(verdicts=records, together=True)

    lab = FakeLab(left)
    runner = containment.ImageRunner(lab, tmp_path / "run")  # type: ignore[arg-type]
    first, second = image(tmp_path), image(tmp_path, directory="f_b")
    hung = runner.judge_item(first, ALL, after=second)
    assert hung[1].hung and len(lab.guests) == 1
    assert [v.verdict for v in runner.judge_item(second, ALL)] == ["clean", "contained", "contained", "contained"]
    assert len(lab.guests) == 2 and lab.guests[1].asked  # judged on a fresh guest
    runner.close()


def test_with_next_takes_one_item_ahead_of_a_lazy_source():
    taken: list[int] = []

    def source():
        for i in range(3):
            taken.append(i)
            yield i

    pairs = containment.with_next(source())
    assert next(pairs) == (0, 1) and taken == [0, 1]
    assert list(pairs) == [(1, 2), (2, None)] and list(containment.with_next([])) == []


def test_lazy_images_are_judged_one_ahead_under_the_names_given_and_never_built_in_memory(tmp_path, monkeypatch):
    """Extracted.image makes all the image's bytes: the runners write each disk from its sparse extents."""
    monkeypatch.setattr(Extracted, "image", property(lambda self: pytest.fail("a whole image built in memory")))
    items = [image(tmp_path, directory=f"d{i}") for i in range(4)]
    names = item_names(items)
    held: list[int] = []

    def lazy():
        for i, item in enumerate(items):
            held.append(i)
            yield item

    heard: list[str] = []
    runner = containment.ImageRunner(FakeLab(healthy), tmp_path / "run")  # type: ignore[arg-type]
    for v in runner.run(lazy(), ["kernel", "fuse2fs"], names=names):
        heard.append(v.image)
        assert len(held) <= len(set(heard)) + 1  # the image judged and one ahead, no more
    assert heard == [f"d{i}/image.gz" for i in range(4) for _ in range(2)]
    verdicts = parallel.judge_images(FakeLab(healthy), tmp_path / "par", iter(items), ["kernel"], guests=3,  # type: ignore[arg-type]
                                     names=names)
    assert [v.image for v in verdicts] == [f"d{i}/image.gz" for i in range(4)]  # in the order of the items
