"""Unit: untrusted text made safe for a terminal, names made safe for paths."""

from __future__ import annotations

import time

import pytest

from pytest_fuselab.build import recipe
from pytest_fuselab.errors import ImageError
from pytest_fuselab.text import name_problem, printable


@pytest.mark.parametrize("raw, shown", [
    ("plain title: WARNING in f", "plain title: WARNING in f"),
    ("\x1b]0;owned\x07title", "\\x1b]0;owned\\x07title"),  # sets the window title
    ("\x1b[2J\x1b[Hclear", "\\x1b[2J\\x1b[Hclear"),
    ("a\rb", "a\\rb"),  # overwrites the line
    ("\x9b31m", "\\x9b31m"),  # the one-character CSI
    ("\x7f", "\\x7f"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),  # right-to-left override
    ("caf\xe9 \u4e2d\u6587 \U0001f600", "caf\xe9 \u4e2d\u6587 \U0001f600"),  # printable text stays
    ("name\udcff.img", "name\\xff.img"),  # an undecodable byte of a file name
])
def test_printable_escapes_what_a_terminal_would_obey(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    printable(raw).encode("utf-8")  # a UTF-8 terminal can take it


def test_lines_and_tabs_are_kept_unless_one_line_is_asked_for() -> None:
    assert printable("a\n\tb") == "a\n\tb"
    assert printable("a\n\tb", lines=False) == "a\\n\\tb"


def test_printable_is_linear() -> None:
    start = time.monotonic()
    assert len(printable("\x1b" * 2_000_000)) == 8_000_000
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("name", ["sid", "sid+mine", "libfuse-3.17_rc1", "A.b", "_x", "x" * 64])
def test_safe_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize("name, why", [
    ("../../../tmp/x", "may hold only"), ("a/b", "may hold only"), (".hidden", "must start with"),
    ("-rf", "must start with"), ("", "must not be empty"), ("x" * 65, "at most 64"), ("a b", "may hold only"),
    ("a\x1bb", "may hold only"), ("\u0430bc", "may hold only"), (5, "must be a string, not int"),
])
def test_unsafe_names(name: object, why: str) -> None:
    problem = name_problem(name)
    assert problem is not None and why in problem and "\x1b" not in problem


def test_recipe_names_are_checked(tmp_path):
    fields = 'suite = "sid"\npackages = []\nkernel_package = "k"\ninitramfs_modules = []\n'
    (tmp_path / "r.toml").write_text('name = "../../x"\n' + fields)
    with pytest.raises(ImageError, match=r"r.toml: name '../../x' may hold only"):
        recipe.load(str(tmp_path / "r.toml"))
    (tmp_path / "r.toml").write_text('name = "ok-1.2"\n' + fields)
    assert recipe.load(str(tmp_path / "r.toml")).name == "ok-1.2"
