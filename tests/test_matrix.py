"""Unit: the images × drivers matrices."""

from pytest_fuselab.judge.containment import Step, Verdict
from pytest_fuselab.judge.matrix import page, terminal


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
