"""Unit: the images × drivers matrices, the per-driver summary, and what reaches the terminal."""

import pytest

from pytest_fuselab.cli.repro import line
from pytest_fuselab.judge.containment import Step, Verdict
from pytest_fuselab.judge.matrix import page, terminal
from pytest_fuselab.judge.triage import exercised, fire_rates, refusal_kind


def verdicts():
    return [Verdict("a.img#0", "kernel", "finding", [Step("mount", 0, "", 0.1)], ["WARNING in ext4_foo"],
                    evidence="kernel splat: WARNING in ext4_foo\nWARNING: CPU: 0 ..."),
            Verdict("a.img#0", "fuse2fs", "contained", [Step("mount", 3, "bad", 0.2)]),
            Verdict("b.img#0", "fuse2fs", "breach", [], ["INFO: task hung in fuse_flush"], evidence="<hung>")]


def test_terminal_matrix_has_a_row_per_image_and_a_column_per_driver():
    lines = terminal(verdicts())
    assert lines[0].split() == ["image", "kernel", "fuse2fs"]
    assert "FINDING (WARNING in ext4_foo)" in lines[1] and "CONTAINED" in lines[1]
    assert lines[2].split()[1] == "-" and "BREACH (INFO: task hung in fuse_flush)" in lines[2]


def test_html_page_is_self_contained_and_links_evidence():
    text = page(verdicts())
    assert text.startswith("<!doctype html>") and "<script" not in text and "http" not in text
    assert 'href="#e0"' in text and 'id="e0"' in text and 'id="e1"' in text
    assert "&lt;hung&gt;" in text  # escaped
    assert "1 contained, 1 breach, 1 finding" in text


def outcomes():
    quota = "quotas not supported. / Mount failed due to unrecognized options. (exit 3)"
    return [Verdict("f_a/image.gz", "kernel", "clean", reached="checked"),
            Verdict("f_a/image.gz", "fuse2fs", "contained", reached="refused", refusal=quota),
            Verdict("f_a/image.gz", "fuse2fs-sandbox", "contained", reached="walked",
                    hung="server hung during walk (connection aborted)"),
            Verdict("f_b/image.gz", "kernel", "clean", reached="refused", refusal="Structure needs cleaning (exit 32)"),
            Verdict("f_b/image.gz", "fuse2fs", "contained", reached="checked"),
            Verdict("f_b/image.gz", "fuse2fs-sandbox", "error", [Step("judge", -1, "no answer within 120 s", 130.0)],
                    hung="no verdict within the image's budget (130 s)"),
            Verdict("v.syz#0", "kernel", "clean", reached="checked"),
            Verdict("v.syz#0", "fuse2fs", "skipped", [Step("mount", -1, "not an ext2/3/4 image (vfat)", 0.0)]),
            Verdict("v.syz#0", "fuse2fs-sandbox", "n/a")]


def test_terminal_matrix_tells_refused_hung_error_and_not_applicable_from_contained():
    lines = terminal(outcomes(), width=60)
    assert lines[1].split("  ")[0] == "f_a/image.gz"
    assert "CLEAN " in lines[1] + " " and "REFUSED (quota feature)" in lines[1]
    assert "HUNG (during walk (connection aborted))" in lines[1]
    assert "REFUSED (EUCLEAN)" in lines[2] and "CONTAINED" in lines[2]
    assert "ERROR (no verdict within the image's budget (130 s))" in lines[2]
    assert lines[3].split()[2:] == ["n/a", "n/a"]


def test_html_page_shows_how_far_each_image_got_and_a_note():
    text = page(outcomes(), note="interrupted after 9 verdicts")
    assert "<b>refused</b>" in text and "<b>hung</b>" in text and "<b>error</b>" in text and "<b>n/a</b>" in text
    assert "reached: walked · hung: server hung during walk (connection aborted)" in text
    assert "interrupted after 9 verdicts" in text
    assert "1 contained, 2 clean, 2 refused, 1 hung, 1 error, 2 n/a" in text


def test_each_run_ends_with_what_each_driver_exercised():
    runs = outcomes() + [Verdict(f"q{i}", "fuse2fs", "contained", reached="refused",
                                 refusal="quotas not supported. (exit 3)") for i in range(3)]
    assert exercised(runs) == [
        "kernel: exercised 2 of 3, refused 1 (EUCLEAN 1)",
        "fuse2fs: exercised 1 of 5, refused 4 (quota feature 4), n/a 1",
        "fuse2fs-sandbox: exercised 1 of 2, hung 1, lab errors 1, n/a 1"]


@pytest.mark.parametrize(("words", "kind"), [
    ("quotas not supported.\nMount failed due to unrecognized options. (exit 3)", "quota feature"),
    ("mount: /mnt/x: mount(2) system call failed: Structure needs cleaning. (exit 32)", "EUCLEAN"),
    ("ext2fs_open2: Bad magic number in super-block (exit 1)", "bad superblock"),
    ("fuse2fs: Filesystem has unsupported feature(s) (exit 1)", "journal/feature unsupported"),
    ("Operation not permitted (exit 1)", "other")])
def test_refusals_are_sorted_by_their_words(words, kind):
    assert refusal_kind(words) == kind


def test_names_and_titles_never_reach_the_terminal_raw():
    evil = [Verdict("\x1b]0;pwned\x07f.img", "kernel", "finding", splats=["WARNING in \x1b[2Jx"]),
            Verdict("\x1b]0;pwned\x07f.img", "fuse2fs", "contained", reached="refused", refusal="\x1b[31mquota")]
    text = "\n".join(terminal(evil) + fire_rates(evil, 2) + exercised(evil))
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07f.img" in text and "WARNING in \\x1b[2Jx" in text
    assert "\x1b" not in line(evil[0]) and "\\x1b" in line(evil[0])


def test_a_refusal_is_sorted_by_everything_its_mount_said():
    v = Verdict("q.img", "fuse2fs-sandbox", "contained", [Step("mount", 3, "Running as unit: x.service\n"
                                                                "FUSE2FS (vdc4): quotas not supported.", 0.9)],
                reached="refused", refusal="Running as unit: x.service (exit status 3)")
    assert "REFUSED (quota feature)" in terminal([v])[1]
