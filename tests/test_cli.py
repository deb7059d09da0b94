"""The `fuselab` command against bad input: options named as typed, bounded numbers, clean one-line errors."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_fuselab.cli import main
from pytest_fuselab.cli import execute
from pytest_fuselab.cli.options import respell
from pytest_fuselab.errors import SettingError

cli_main = importlib.import_module("pytest_fuselab.cli.main")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FUSELAB_MEMORY", "FUSELAB_KERNEL", "FUSELAB_MODULES", "FUSELAB_STACK", "FUSELAB_CPUS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # `fuselab run` makes its results directory here


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `fuselab ARGV`, expect argparse to refuse it with status 2, return stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv", [
    ["doctor", "--no-probe"], ["exec", "true"], ["shell"], ["bench"], ["run", "x.py"], ["repro", "missing.img"],
])
def test_setting_errors_name_the_option_as_this_cli_spells_it(argv: list[str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--memory", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "fuselab: error: memory from --memory = '0': must be a positive whole number\n"


def test_setting_errors_from_the_environment_name_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FUSELAB_CPUS", "-1")
    assert main(["exec", "true"]) == 2
    assert "cpus from FUSELAB_CPUS = '-1'" in capsys.readouterr().err


def test_bisect_run_names_the_option_as_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "Makefile").write_text("all:\n")
    assert main(["bisect-run", "--tree", str(tmp_path), "--accel", "xen", "x.py"]) == 125
    out = capsys.readouterr().out
    assert "accel from --accel = 'xen'" in out and "--fuselab-accel" not in out


def test_lab_errors_raised_later_are_respelled_too(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    class Refusing:
        def __init__(self, *args: object) -> None:
            raise SettingError("modules /x given without a kernel: set --fuselab-kernel too")

    monkeypatch.setattr(execute, "Lab", Refusing)
    assert main(["exec", "true"]) == 2
    assert capsys.readouterr().err == "fuselab: error: modules /x given without a kernel: set --kernel too\n"


def test_respell_leaves_what_this_command_does_not_take() -> None:
    args = argparse.Namespace(memory=None)
    message = "memory from --fuselab-memory; cpus from --fuselab-cpus; corpus from --fuselab-corpus; --fuselab-memoryx"
    assert respell(message, args) == ("memory from --memory; cpus from --fuselab-cpus; corpus from --fuselab-corpus; "
                                      "--fuselab-memoryx")
    assert respell(message, argparse.Namespace()) == message


@pytest.mark.parametrize("argv,needle", [
    (["repro", "--size-limit", "-1", "x.img"], "argument --size-limit: -1 is out of range: give 1 to 1048576"),
    (["repro", "--size-limit", "99999999999999999999", "x.img"], "argument --size-limit: 99999999999999999999 is out"),
    (["repro", "--size-limit", "1" * 5000, "x.img"], "is not a whole number"),
    (["repro", "--size-limit", "lots", "x.img"], "argument --size-limit: 'lots' is not a whole number"),
    (["repro", "--repeat", "0", "x.img"], "argument --repeat: 0 is out of range"),
    (["repro", "--guests", "100000", "x.img"], "argument --guests: 100000 is out of range"),
    (["repro", "--json", "/nonexistent/dir/v.json", "x.img"], "argument --json: /nonexistent/dir/v.json: cannot write"),
    (["exec", "--timeout", "nan", "true"], "argument --timeout: nan is out of range"),
    (["exec", "--timeout", "-5", "true"], "argument --timeout: -5 is out of range"),
    (["exec", "--timeout", "1e999", "true"], "argument --timeout: 1e999 is out of range"),
    (["bench", "--runs", "0"], "argument --runs: 0 is out of range"),
    (["corpus", "generate", "d", "--count", "0"], "argument --count: 0 is out of range"),
    (["kernel", "build", ".", "--jobs", "0"], "argument -j/--jobs: 0 is out of range"),
    (["kernel", "build", ".", "--nice", "99"], "argument --nice: 99 is out of range: give -20 to 19"),
    (["kernel", "build", "/nonexistent"], "argument tree: /nonexistent: no such file or directory"),
    (["kernel", "check", "/nonexistent"], "argument kernel: /nonexistent: no such file or directory"),
    (["kernel", "check", ".", "--modules", "/nonexistent"], "argument --modules: /nonexistent: no such file"),
])
def test_bad_numbers_and_paths_are_usage_errors(argv: list[str], needle: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert needle in usage_error(argv, capsys)


def test_kernel_check_of_a_file_that_is_no_kernel_is_one_clean_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a kernel\n")
    assert main(["kernel", "check", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fuselab: error: ") and "bzImage" in err and err.count("\n") == 1


def test_options_a_command_does_not_take_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unrecognized arguments: --memory 1" in usage_error(["setup", "--memory", "1"], capsys)


def options_of(command: str) -> set[str]:
    """The long options the `fuselab` command `command` takes."""
    sub = next(a for a in cli_main.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {flag for action in sub.choices[command]._actions for flag in action.option_strings}


def test_budget_and_hosts_are_offered_only_where_they_do_something(capsys: pytest.CaptureFixture[str]) -> None:
    judging, spreading = {"repro", "bench", "run", "bisect-run"}, {"run", "repro", "bench"}
    for command in ("repro", "bench", "run", "bisect-run", "exec", "shell", "doctor"):
        took = options_of(command)
        assert ("--budget" in took, "--hosts" in took) == (command in judging, command in spreading), command
        assert "--memory" in took  # the other settings stay everywhere
    assert "unrecognized arguments: --budget" in usage_error(["exec", "--budget", "5", "true"], capsys)
    assert "unrecognized arguments: --hosts h.toml" in usage_error(["doctor", "--hosts", "h.toml"], capsys)


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli_main.HANDLERS, "setup", interrupted)
    assert main(["setup"]) == 130
    assert capsys.readouterr().err == "fuselab: interrupted\n"


@pytest.mark.parametrize("argv", [[], *([name] for name in [*cli_main.HANDLERS, "run"]),
                                  ["kernel", "build"], ["kernel", "check"]])
def test_every_help_works(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: fuselab")


def test_main_is_the_entry_point_and_python_m_works() -> None:
    assert main is cli_main.main
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "bisect-run" in out.stdout


@pytest.mark.parametrize("argv", [["run", "--results", "{file}/results"], ["corpus", "generate", "{file}/corpus"]])
def test_a_path_that_cannot_be_written_is_one_clean_line(argv: list[str], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("")
    assert main([a.replace("{file}", str(blocker)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err == (f"fuselab: error: {blocker}/{argv[-1].split('/')[-1]}: Not a directory; a part of the path "
                   "is a file, not a directory: choose another path\n")


def test_oserrors_name_the_path_escaped_and_say_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    def full(args: argparse.Namespace) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/x/\x1b[2Jy")

    monkeypatch.setitem(cli_main.HANDLERS, "setup", full)
    assert main(["setup"]) == 2
    assert capsys.readouterr().err == ("fuselab: error: /x/\\x1b[2Jy: No space left on device; its filesystem is "
                                       "full: free some space or choose a path on a larger one\n")


def test_oserrors_without_a_path_are_bugs_and_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise ConnectionResetError("peer")

    monkeypatch.setitem(cli_main.HANDLERS, "setup", broken)
    with pytest.raises(ConnectionResetError):
        main(["setup"])


def test_lab_errors_are_printed_with_control_characters_escaped(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    def refusing(args: argparse.Namespace) -> int:
        raise SettingError("input /tmp/\x1b]0;owned\x07.syz: line 3: bad")

    monkeypatch.setitem(cli_main.HANDLERS, "setup", refusing)
    assert main(["setup"]) == 2
    assert capsys.readouterr().err == "fuselab: error: input /tmp/\\x1b]0;owned\\x07.syz: line 3: bad\n"


def test_bisect_line_escapes_what_it_did_not_write() -> None:
    from pytest_fuselab.cli.bisect import BAD, Step

    line = Step(BAD, "1 failed: t.py::test_\x1b[2J", ["WARNING in \x1b]0;x\x07f"]).line("abc1234 subj\x1b[1m", 3)
    assert "\x1b" not in line and "\x07" not in line and "\n" not in line
    assert line.startswith("abc1234 subj\\x1b[1m  bad ")


def test_machine_error_shows_a_command_that_runs_as_is() -> None:
    import shlex

    from pytest_fuselab.errors import MachineError

    argv = ["qemu-system-x86_64", "-drive", "file=/tmp/my dir/root,,x.qcow2,format=qcow2", "-m", "1024"]
    text = str(MachineError("QEMU exited", argv))
    command = text.split("QEMU command: ", 1)[1].splitlines()[0]
    assert shlex.split(command) == argv
