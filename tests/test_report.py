"""Unit: the run summary table."""

from pytest_fuselab.plugin.report import split_nodeid, table


def test_split_nodeid():
    assert split_nodeid("scenarios/test_x.py::test_y[kernel-to-fuse2fs]") == ("test_x.py::test_y",
                                                                          "kernel-to-fuse2fs")
    assert split_nodeid("t.py::test_z") == ("t.py::test_z", "-")


def test_table_rows_and_totals():
    lines = table([
        {"nodeid": "s/t.py::test_a[k]", "outcome": "passed", "seconds": 3.21, "splats": []},
        {"nodeid": "s/t.py::test_a[f]", "outcome": "failed", "seconds": 9.0, "splats": ["WARNING in foo"]},
        {"nodeid": "s/t.py::test_b", "outcome": "failed", "when": "setup", "seconds": 1.0, "splats": []},
    ], accel="tcg (KVM rejected)")
    assert lines[0].split()[:5] == ["scenario", "variant", "result", "time", "kernel"]
    assert "PASS" in lines[2] and "3.2s" in lines[2]
    assert "FAIL" in lines[3] and lines[3].endswith("WARNING in foo")
    assert "FAIL (setup)" in lines[4]
    assert lines[-1] == "1 passed, 2 failed, 0 skipped; acceleration: tcg (KVM rejected)"


def test_table_escapes_titles_and_names_from_guests():
    lines = table([{"nodeid": "s/t.py::test_a[k\x1b[2J]", "outcome": "failed", "seconds": 1.0,
                    "splats": ["WARNING in \x1b]0;owned\x07f\nnext"]}])
    assert not any("\x1b" in line or "\x07" in line for line in lines)
    assert lines[2].endswith("WARNING in \\x1b]0;owned\\x07f\\nnext") and "k\\x1b[2J" in lines[2]
    assert len(lines) == 4  # one line per row, whatever the title holds
