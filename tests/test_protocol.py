"""Unit: the protocol across the guest boundary (guest/protocol.py): records round-trip, and
whatever breaks it is refused naming the field; the host turns that into a GuestError."""

from __future__ import annotations

import json
import os
import socket

import pytest

from pytest_fuselab.errors import GuestError
from pytest_fuselab.guest import fates, tasks
from pytest_fuselab.guest import judge as guest_judge
from pytest_fuselab.guest.protocol import (MAX_KMSG, MAX_SAID, DriverRecord, HealthFacts, JudgeAnswer,
                                           JudgeSpec, ProtocolError, ServerFate, StepRecord)
from pytest_fuselab.judge import health
from pytest_fuselab.judge.containment import DEADLINES, STOP
from pytest_fuselab.judge.drivers import DRIVERS, fate_path, server_fate
from pytest_fuselab.vm.channel import Result
from pytest_fuselab.vm.guest import Guest


def spec() -> JudgeSpec:
    drivers = [DRIVERS[name].judge_spec(f"/dev/vd{c}", f"/mnt/hostile-{name}", "")
               for name, c in zip(DRIVERS, "bcdef", strict=False)]
    return JudgeSpec(drivers=drivers, deadlines=dict(DEADLINES), stop=STOP, together=True)


def record(name: str = "kernel") -> DriverRecord:
    steps = [StepRecord("mount", 0, "", 0.5), StepRecord("walk", 1, "judge: walk: stat /x: EUCLEAN", 0.2, "EUCLEAN")]
    return DriverRecord(name=name, steps=steps, server="killed by SIGSEGV (core dumped) during walk",
                        stuck=["cat[77]"], kmsg="[    1.000000] EXT4-fs error", seconds=1.25, reached="walked",
                        entries=12, files=3, walk_errors=1, hung="server hung during walk (connection aborted)")


def wire(message: object) -> object:
    """`message` as it arrives: through JSON."""
    return json.loads(json.dumps(message))


def test_valid_records_round_trip():
    asked = spec()
    assert JudgeSpec.from_json(wire(asked.to_json())) == asked
    answer = JudgeAnswer(verdicts=[record(d.name) for d in asked.drivers[:2]], together=True, hurt=False)
    assert JudgeAnswer.from_json(wire(answer.to_json()), asked) == answer
    fate = ServerFate(exit=None, signal="SIGSEGV", core=True, server="fuse2fs", pid=312, ended=1.7e9)
    assert ServerFate.from_json(wire(fate.to_json())) == fate
    assert HealthFacts.from_json(wire(HealthFacts(["cat[77]"]).to_json())) == HealthFacts(["cat[77]"])
    assert JudgeSpec.from_json({"drivers": []}) == JudgeSpec()  # what a snapshot's warm-up sends


def test_the_new_fields_default_when_absent_and_round_trip():
    """An older peer's messages (no fstype, checker, budget, reached...) still read, with the defaults."""
    old = {k: v for k, v in record().to_json().items()
           if k not in ("reached", "refusal", "entries", "files", "walk_errors", "hung", "livelock")}
    assert DriverRecord.from_json(old).reached == "" and DriverRecord.from_json(old).entries == 0
    asked = JudgeSpec(drivers=spec().drivers[:1], deadlines=dict(DEADLINES), budget=137.5, stall=10)
    got = JudgeSpec.from_json(wire(asked.to_json()))
    assert (got.budget, got.stall, got.drivers[0].checker, got.drivers[0].fstype) == (137.5, 10, ["e2fsck", "-fn"], "ext4")
    bare = wire(asked.to_json())
    for key in ("fstype", "readonly", "checker"):
        del bare["drivers"][0][key]
    del bare["budget"], bare["stall"]
    got = JudgeSpec.from_json(bare)
    assert (got.budget, got.stall, got.drivers[0].checker, got.drivers[0].readonly) == (0, 12, [], False)
    refused = DriverRecord(name="fuse2fs", steps=[StepRecord("mount", 3, "quotas not supported.", 0.2)],
                           reached="refused", refusal="quotas not supported. (exit status 3)",
                           livelock="walk[9] never returned ...")
    assert DriverRecord.from_json(wire(refused.to_json())) == refused


def test_numbers_stay_as_sent():
    """A deadline of 60 stays 60, so the judge's words ("no result within 60 s") do not change."""
    got = JudgeSpec.from_json(wire(spec().to_json()))
    assert got.deadlines["mount"] == 60 and isinstance(got.deadlines["mount"], int)


@pytest.mark.parametrize(("change", "field", "problem"), [
    (lambda a: a["verdicts"][0]["steps"][1].update(status="1"), "verdicts[0].steps[1].status", "an integer expected"),
    (lambda a: a["verdicts"][0]["steps"][1].update(status=True), "verdicts[0].steps[1].status", "not a boolean"),
    (lambda a: a["verdicts"][1].update(stuck_mount=1), "verdicts[1].stuck_mount", "a boolean expected"),
    (lambda a: a["verdicts"][0].update(stuck="cat[1]"), "verdicts[0].stuck", "a list expected"),
    (lambda a: a["verdicts"][0]["stuck"].append(7), "verdicts[0].stuck[1]", "a string expected"),
    (lambda a: a.update(verdicts={}), "verdicts", "a list expected"),
    (lambda a: a["verdicts"].__setitem__(0, []), "verdicts[0]", "an object expected"),
    (lambda a: a["verdicts"][0].update(seconds=float("nan")), "verdicts[0].seconds", "not within"),
    (lambda a: a["verdicts"][0]["steps"][0].update(seconds=-1), "verdicts[0].steps[0].seconds", "not within"),
    (lambda a: a["verdicts"][0].update(reached="fscked"), "verdicts[0].reached", "is not one of refused, mounted"),
    (lambda a: a["verdicts"][0].update(reached=3), "verdicts[0].reached", "a string expected"),
    (lambda a: a["verdicts"][0].update(entries=-1), "verdicts[0].entries", "not within"),
    (lambda a: a["verdicts"][0].update(walk_errors=2.5), "verdicts[0].walk_errors", "an integer expected"),
    (lambda a: a["verdicts"][0].update(files=1 << 40), "verdicts[0].files", "not within"),
    (lambda a: a["verdicts"][0].update(hung=None), "verdicts[0].hung", "a string expected"),
])
def test_a_wrong_type_names_the_field(change, field, problem):
    answer = wire(JudgeAnswer(verdicts=[record("kernel"), record("fuse2fs")]).to_json())
    change(answer)
    with pytest.raises(ProtocolError, match=problem) as refused:
        JudgeAnswer.from_json(answer)
    assert refused.value.field == field and str(refused.value).startswith(f"{field}: ")


@pytest.mark.parametrize(("change", "field"), [
    (lambda a: a.update(extra=1), "extra"),
    (lambda a: a["verdicts"][0].update(shell="rm -rf /"), "verdicts[0].shell"),
    (lambda a: a["verdicts"][0]["steps"][0].update(errnum=5), "verdicts[0].steps[0].errnum"),
])
def test_an_unknown_key_names_the_field(change, field):
    answer = wire(JudgeAnswer(verdicts=[record()]).to_json())
    change(answer)
    with pytest.raises(ProtocolError, match="unknown field") as refused:
        JudgeAnswer.from_json(answer)
    assert refused.value.field == field


@pytest.mark.parametrize(("change", "field"), [
    (lambda a: a["verdicts"][0].update(kmsg="x" * (MAX_KMSG + 1)), "verdicts[0].kmsg"),
    (lambda a: a["verdicts"][0]["steps"][1].update(said="x" * (MAX_SAID + 1)), "verdicts[0].steps[1].said"),
    (lambda a: a["verdicts"][0]["steps"].extend([a["verdicts"][0]["steps"][0]] * 5), "verdicts[0].steps"),
    (lambda a: a["verdicts"][0].update(stuck=["t"] * 10001), "verdicts[0].stuck"),
    (lambda a: a["verdicts"][0].update(name="k" * 65), "verdicts[0].name"),
    (lambda a: a.update(error="e" * 5000), "error"),
    (lambda a: a["verdicts"][0].update(refusal="r" * (MAX_SAID + 1)), "verdicts[0].refusal"),
    (lambda a: a["verdicts"][0].update(hung="h" * (MAX_SAID + 1)), "verdicts[0].hung"),
    (lambda a: a["verdicts"][0].update(livelock="s" * 4097), "verdicts[0].livelock"),
])
def test_an_oversized_field_is_refused_by_name(change, field):
    answer = wire(JudgeAnswer(verdicts=[record()]).to_json())
    change(answer)
    with pytest.raises(ProtocolError, match="longer than|more than") as refused:
        JudgeAnswer.from_json(answer)
    assert refused.value.field == field


def test_missing_fields_and_unknown_steps_are_refused():
    with pytest.raises(ProtocolError, match=r"^verdicts\[0\]\.steps: missing$"):
        JudgeAnswer.from_json({"verdicts": [{"name": "kernel"}]})
    with pytest.raises(ProtocolError, match=r"^steps\[0\]\.name: 'format' is not one of"):
        DriverRecord.from_json({**record().to_json(), "steps": [{**StepRecord("mount", 0, "", 0).to_json(),
                                                                  "name": "format"}]})
    with pytest.raises(ProtocolError, match="^message: an object expected, not a list$"):
        JudgeAnswer.from_json([])


def test_an_answer_must_be_for_the_drivers_asked():
    asked = spec()
    with pytest.raises(ProtocolError, match=r"^verdicts\[0\]\.name: 'fuse2fs', but driver 0 is 'kernel'$"):
        JudgeAnswer.from_json(JudgeAnswer(verdicts=[record("fuse2fs")]).to_json(), asked)
    with pytest.raises(ProtocolError, match="^verdicts: 2 records for 1 drivers$"):
        JudgeAnswer.from_json(JudgeAnswer(verdicts=[record(), record()]).to_json(),
                              JudgeSpec(drivers=asked.drivers[:1], deadlines=dict(DEADLINES)))


def test_a_spec_is_checked_too():
    good = spec().to_json()
    for change, message in [
        (lambda s: s["drivers"][0].update(mount=["format", "/dev/vdb"]), r"drivers\[0\]\.mount: the kind must be"),
        (lambda s: s["drivers"][2].update(mount=["sandbox", "f", "/dev/vdb"]), r"drivers\[2\]\.mount: 'sandbox' takes 4"),
        (lambda s: s["drivers"][0].update(unmount=[]), r"drivers\[0\]\.unmount: an empty command"),
        (lambda s: s["deadlines"].pop("fsck"), r"deadlines\.fsck: missing"),
        (lambda s: s["deadlines"].update(mount=-1), r"deadlines\.mount: -1 is not within"),
        (lambda s: s.update(stop="("), r"stop: not a regular expression"),
        (lambda s: s.update(budget=-5), r"budget: -5 is not within"),
        (lambda s: s.update(stall="12"), r"stall: a number expected"),
        (lambda s: s["drivers"][0].update(checker="fsck.fat -n"), r"drivers\[0\]\.checker: a list expected"),
        (lambda s: s["drivers"][0].update(checker=["x"] * 65), r"drivers\[0\]\.checker: more than 64 items"),
        (lambda s: s["drivers"][0].update(readonly="yes"), r"drivers\[0\]\.readonly: a boolean expected"),
        (lambda s: s["drivers"][0].update(fstype="f" * 65), r"drivers\[0\]\.fstype: longer than 64"),
    ]:
        bad = wire(good)
        change(bad)
        with pytest.raises(ProtocolError, match=f"^{message}"):
            JudgeSpec.from_json(bad)


def test_a_fate_has_one_text_on_both_sides():
    record = {"exit": None, "signal": "SIGABRT", "core": True, "server": "fuse2fs", "pid": 9, "ended": 1.0}
    assert ServerFate.from_json(record).text() == fates.fate_text(record) == "killed by SIGABRT (core dumped)"
    assert ServerFate.from_json({"exit": 0, "signal": None}).text() == "exit status 0"
    with pytest.raises(ProtocolError, match="^exit: 300 is not within 0..255$"):
        ServerFate.from_json({"exit": 300, "signal": None})


# -- the host side: a broken answer is a GuestError naming the field ---------------------------

class FakeChannel:
    def __init__(self, reply: dict[str, object]) -> None:
        self.reply, self.sent = reply, []

    def request(self, op: str, wait: float, **fields: object) -> dict[str, object]:
        self.sent.append((op, fields))
        return {"id": "x-1", "ok": True, **self.reply}


def fake_guest(reply: dict[str, object]) -> Guest:
    guest = object.__new__(Guest)  # no QEMU: only its channel is used
    guest.channel = FakeChannel(reply)  # type: ignore[assignment]
    return guest


def test_the_judges_answer_is_checked_on_the_host():
    asked = spec()
    good = JudgeAnswer(verdicts=[record("kernel")]).to_json()
    guest = fake_guest({"timed_out": False, "answer": good, "duration": 1.0})
    assert guest.judge(asked, timeout=10) == JudgeAnswer(verdicts=[record("kernel")])
    assert guest.channel.sent[0][1]["spec"] == asked.to_json()  # type: ignore[attr-defined]
    assert fake_guest({"timed_out": True, "duration": 9.0}).judge(asked, timeout=10) is None
    bad = wire(good)
    bad["verdicts"][0]["steps"][0]["status"] = "0"
    with pytest.raises(GuestError, match=r"answer\.verdicts\[0\]\.steps\[0\]\.status: an integer expected"):
        fake_guest({"timed_out": False, "answer": bad}).judge(asked, timeout=10)
    with pytest.raises(GuestError, match=r"answer: an object expected, not null"):
        fake_guest({"timed_out": False}).judge({"drivers": []}, timeout=10)


def test_health_facts_come_from_the_agent_and_are_checked():
    guest = fake_guest({"stuck": ["cat[77]"]})
    assert health.stuck_tasks(guest) == ["cat[77]"]
    assert guest.channel.sent == [("tasks", {"grace": tasks.STUCK_GRACE})]  # type: ignore[attr-defined]
    with pytest.raises(GuestError, match="stuck: more than 10000 items"):
        health.stuck_tasks(fake_guest({"stuck": ["t"] * 10001}))
    with pytest.raises(GuestError, match="rootkit: unknown field"):
        health.stuck_tasks(fake_guest({"stuck": [], "rootkit": True}))


def test_a_fate_file_that_is_not_one_is_a_guest_error():
    class Files:
        def __init__(self, text: str) -> None:
            self.text = text

        def run(self, command: str, check: bool = True, **_: object) -> Result:
            return Result(command, 0, self.text, "", 0.0)

    assert server_fate(Files('{"exit": 0, "signal": null}'), "/mnt/x") == "exit status 0"  # type: ignore[arg-type]
    with pytest.raises(GuestError, match=f"{fate_path('/mnt/x')}.*core: a boolean expected"):
        server_fate(Files('{"exit": null, "signal": "SIGSEGV", "core": "yes"}'), "/mnt/x")  # type: ignore[arg-type]
    with pytest.raises(GuestError, match="is not one"):
        server_fate(Files("garbage"), "/mnt/x")  # type: ignore[arg-type]


# -- the guest side: the judge reads specs and answers with the protocol ------------------------

def ask_the_judge(message: bytes) -> object:
    """What a fork of the resident judge answers to `message` (in a mount namespace of its own)."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        try:
            guest_judge.answer(theirs)
        finally:
            os._exit(0)
    theirs.close()
    with ours, ours.makefile("rb") as reader:
        assert json.loads(reader.readline())["pid"] == pid
        ours.sendall(message + b"\n")
        answer = json.loads(reader.read())
    os.waitpid(pid, 0)
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="the judge makes a mount namespace of its own: root")
def test_the_judge_answers_with_the_protocol_and_names_a_bad_field():
    assert JudgeAnswer.from_json(ask_the_judge(b'{"drivers": []}')) == JudgeAnswer()
    bad = JudgeAnswer.from_json(ask_the_judge(json.dumps({"drivers": [], "stop": "(", "x": 1}).encode()))
    assert bad.error == "ProtocolError: x: unknown field"


def test_d_state_tasks_are_found_in_proc(capsys, monkeypatch):
    assert isinstance(tasks.d_state_tasks(), set)
    monkeypatch.setattr(tasks, "d_state_tasks", lambda: {"cat[7]", "we\nird[8]"})
    assert tasks.main(["0.2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["cat[7]", "we\\nird[8]"]
