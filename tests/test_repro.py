"""`fuselab repro`: its report (unit: verdict lines, JSON lines as they come, the HTML page at the
end or on interruption, progress lines) and, in real guests, images from reproducers judged by
each driver, and an image whose FUSE server never answers costing no more than its budget."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_fuselab.cli.bench import stalling_image
from pytest_fuselab.cli.progress import Progress, duration
from pytest_fuselab.cli.repro import Report, interrupts_as_keyboard
from pytest_fuselab.errors import FuselabError, SettingError
from pytest_fuselab.judge.containment import Step, Verdict

DATA = Path(__file__).parent / "data" / "repro"


def verdict(image="f_a/image.gz", driver="fuse2fs", outcome="contained", **kw):
    return Verdict(image, driver, outcome, [Step("mount", 0, "", 0.1)], reached="checked", **kw)


def test_json_lines_are_written_and_flushed_as_verdicts_arrive(tmp_path, capsys):
    report = Report.open(tmp_path / "v.jsonl", tmp_path / "m.html")
    assert not (tmp_path / "v.jsonl").exists() and not (tmp_path / "m.html").exists()  # checked, not made
    report.said(verdict())
    assert json.loads((tmp_path / "v.jsonl").read_text())["image"] == "f_a/image.gz"  # before the end
    report.said(verdict(driver="kernel", outcome="clean"))
    assert len((tmp_path / "v.jsonl").read_text().splitlines()) == 2
    report.close(stopped="interrupted")
    page = (tmp_path / "m.html").read_text()
    assert "interrupted after 2 verdicts" in page and "f_a/image.gz" in page
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("CONTAINED fuse2fs") and "interrupted after 2 verdicts" in out


def test_the_matrix_follows_the_inputs_order_whatever_guest_answered_first(capsys):
    report = Report(None, None)
    report.order = ["f_a/image.gz", "f_b/image.gz"]
    for v in (verdict("f_b/image.gz"), verdict("f_a/image.gz"), verdict("f_a/image.gz", "kernel", "clean")):
        report.said(v)
    report.close()
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith(("image ", "f_"))]
    assert rows[-3:] == ["image", "f_a/image.gz", "f_b/image.gz"]


def test_inputs_are_named_in_a_first_pass_and_extracted_anew_one_input_at_a_time(tmp_path):
    """repro holds no list of images: a first pass keeps their keys (names, count), each round extracts again."""
    import types

    from pytest_fuselab.cli.repro import Inputs
    from pytest_fuselab.judge.verdict import name_of

    for d in ("f_a", "f_b"):
        (tmp_path / d).mkdir()
        subprocess.run(["mke2fs", "-q", "-t", "ext4", str(tmp_path / d / "image.img"), "1M"], check=True)
    inputs = Inputs.read([tmp_path], 64 << 20)
    assert len(inputs.keys) == 2 and isinstance(inputs.images(), types.GeneratorType)
    names = inputs.names()
    assert [name_of(names, item) for item in inputs.images()] == ["f_a/image.img", "f_b/image.img"]
    (tmp_path / "bad.syz").write_text("syz_mount_image$ext4(&(0x7f0000000000)='ext4\\x00', 0x0, 0x0, 0x0, 0x0)\n")
    with pytest.raises(FuselabError):  # a bad input is refused in the first pass, before any guest
        Inputs.read([tmp_path / "bad.syz"], 64 << 20)


def test_a_report_path_that_cannot_be_written_fails_before_the_run(tmp_path):
    with pytest.raises(SettingError, match="cannot write the report there"):
        Report.open(tmp_path / "no" / "such" / "v.jsonl", None)
    with pytest.raises(SettingError, match="cannot write the report there"):
        Report.open(None, Path("/sys/fuselab-matrix.html"))  # sysfs takes no new files, not even root's


def test_a_terminating_signal_stops_the_run_like_ctrl_c(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), interrupts_as_keyboard():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_progress_is_plain_lines_in_a_log_and_one_live_line_on_a_terminal():
    now = [100.0]
    log = io.StringIO()
    plain = Progress(4, per=2, stream=log, clock=lambda: now[0])
    plain.status("f_a/image.gz", "4 drivers")
    now[0] += 60
    plain.verdict(), plain.verdict()
    plain.status("f_b/\x1b[2Jimage.gz", "fuse2fs alone")
    lines = log.getvalue().splitlines()
    assert lines == ["fuselab: [0/4] f_a/image.gz: 4 drivers · 0s",
                     "fuselab: [1/4] f_b/\\x1b[2Jimage.gz: fuse2fs alone · 1m00s · 1.0 images/min · about 3m00s left"]
    tty = io.StringIO()
    live = Progress(4, stream=tty, live=True, clock=lambda: now[0], tick=0)
    live.status("f_a/image.gz", "4 drivers")
    live.say("CONTAINED ...", tty)
    live.close()
    assert tty.getvalue().count("\r\x1b[K") >= 3 and "\n" in tty.getvalue() and tty.getvalue().endswith("\r\x1b[K")
    assert (duration(59), duration(61), duration(3720)) == ("59s", "1m01s", "1h02m")


def fuselab(*args):
    return subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", *args], capture_output=True, text=True,
                          timeout=900, check=False)


@pytest.mark.guest
def test_repro_judges_each_image_and_driver(tmp_path):
    good = tmp_path / "good.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", str(good), "8M"], check=True)
    out = fuselab("repro", str(DATA / "syz_mount_image_ext4_40.syz"), str(good),
                  "--driver", "kernel", "--driver", "fuse2fs", "--guests", "2", "--json", str(tmp_path / "v.jsonl"),
                  "--html", str(tmp_path / "m.html"))
    assert out.returncode == 0, out.stdout + out.stderr
    verdicts = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert sorted((v["image"], v["driver"]) for v in verdicts) == [  # as they came from the two guests
        ("good.img", "fuse2fs"), ("good.img", "kernel"),
        ("syz_mount_image_ext4_40.syz", "fuse2fs"), ("syz_mount_image_ext4_40.syz", "kernel")]  # one image each: no #N
    by = {(v["image"], v["driver"]): v for v in verdicts}
    clean = by[("good.img", "fuse2fs")]
    assert clean["verdict"] == "contained"
    assert [(s["name"], s["status"]) for s in clean["steps"]] == [
        ("mount", 0), ("walk", 0), ("modify", 0), ("unmount", 0), ("fsck", 0)]
    assert (clean["reached"], by[("good.img", "kernel")]["verdict"]) == ("checked", "clean")
    assert "4 verdicts: 0 containment breaches" in out.stdout
    lines = out.stdout.splitlines()
    assert lines[-6].split() == ["image", "kernel", "fuse2fs"]  # the matrix, each driver's line, the count
    assert lines[-5].startswith("syz_mount_image_ext4_40.syz ") and lines[-4].startswith("good.img ")
    assert lines[-3].startswith("kernel: exercised ") and lines[-2].startswith("fuse2fs: exercised ")
    assert "good.img" in (tmp_path / "m.html").read_text()


@pytest.mark.guest
def test_repro_names_a_malformed_reproducer(tmp_path):
    bad = tmp_path / "bad.syz"
    text = (DATA / "syz_mount_image_ext4_40.syz").read_text()
    bad.write_text(text.replace('"$', '"$!!!', 1))
    out = fuselab("repro", str(bad))
    assert out.returncode == 2
    assert str(bad) in out.stderr


@pytest.mark.guest
def test_an_image_whose_fuse_server_never_answers_costs_at_most_its_budget(tmp_path):
    """stalling_image: listing one directory costs fuse2fs minutes of block reads in one request.
    With --budget 60 that image's verdicts come within the budget, none is a breach, and the good
    image judged after it on the same run is judged in full."""
    stalling_image(tmp_path / "stalling.img")
    good = tmp_path / "good.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", str(good), "8M"], check=True)
    start = time.monotonic()
    out = fuselab("repro", str(tmp_path / "stalling.img"), str(good), "--budget", "60",
                  "--json", str(tmp_path / "v.jsonl"))
    wall = time.monotonic() - start
    verdicts = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    stalled = [v for v in verdicts if v["image"] == "stalling.img"]
    assert len(stalled) == 4 and all(v["seconds"] <= 60 for v in stalled), stalled
    assert not any(v["verdict"] == "breach" for v in verdicts), out.stdout
    fuse = {v["driver"]: v for v in stalled if v["driver"] != "kernel"}
    assert all(v["hung"] or v["verdict"] == "error" for v in fuse.values()), fuse
    good_ones = [v for v in verdicts if v["image"] == "good.img"]
    assert [(v["verdict"], v["reached"]) for v in good_ones] == [("clean", "checked")] + [("contained", "checked")] * 3
    assert wall < 60 + 120, out.stdout  # the budget, one restore, the good image, start and end
