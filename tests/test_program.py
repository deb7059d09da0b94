"""Running a reproducer's own program (judge/program): compile flags, modes, fired-k-of-N, and real guests."""

from __future__ import annotations

import shutil
import struct
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_fuselab.errors import GuestLost, InputError, SettingError
from pytest_fuselab.judge import program
from pytest_fuselab.judge.program import build, runner
from pytest_fuselab.judge.program.runner import Run
from pytest_fuselab.vm.channel import Result

REPRO = Path(__file__).parent / "data" / "repro"
HEADER = ("# {Threaded:true Repeat:true RepeatTimes:0 Procs:8 Slowdown:1 Sandbox:namespace Leak:false "
          "NetInjection:true UseTmpDir:true HandleSegv:true}\n")
JSON_HEADER = '# {"threaded":false,"repeat":false,"procs":2,"slowdown":1,"sandbox":"none","sandbox_arg":0}\n'
HAS_GCC = shutil.which("gcc") is not None and Path("/usr/lib/x86_64-linux-gnu/libc.a").exists()


# -- compiling ---------------------------------------------------------------------------------

def test_gcc_flags_are_syzkallers_static_ones(tmp_path: Path) -> None:
    argv = build.gcc_argv(Path("repro.c"), tmp_path / "repro")
    assert argv[:3] == ["gcc", "-o", str(tmp_path / "repro")] and argv[-1] == "repro.c"
    for flag in ("-static", "-pthread", "-O2", "-m64", "-DGOOS_linux=1", "-DGOARCH_amd64=1", "-w"):
        assert flag in argv


@pytest.mark.skipif(not HAS_GCC, reason="needs gcc and a static libc on the host (`fuselab setup`)")
def test_a_c_reproducer_compiles_static_and_is_never_made_executable(tmp_path: Path) -> None:
    out = build.compile_c(REPRO / "quiet.c", tmp_path / "repro")
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF"
    phoff, = struct.unpack_from("<Q", data, 32)
    size, count = struct.unpack_from("<HH", data, 54)
    kinds = [struct.unpack_from("<I", data, phoff + i * size)[0] for i in range(count)]
    assert 3 not in kinds  # no PT_INTERP: static, runs in any guest
    assert out.stat().st_mode & 0o111 == 0


@pytest.mark.skipif(not HAS_GCC, reason="needs gcc and a static libc on the host (`fuselab setup`)")
def test_a_compile_error_names_the_file_and_the_compilers_words(tmp_path: Path) -> None:
    bad = tmp_path / "broken.c"
    bad.write_text("int main(void) { return nosuchthing; }\n")
    with pytest.raises(InputError) as info:
        build.compile_c(bad, tmp_path / "repro")
    text = str(info.value)
    assert text.startswith(f"{bad}: does not compile (status 1: gcc -o ")
    assert "nosuchthing" in text and "error" in text
    assert not (tmp_path / "repro").exists()


@pytest.mark.skipif(not HAS_GCC, reason="needs gcc on the host")
def test_a_compiler_past_its_time_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"quiet.c: the compiler took more than 0 s"):
        build.compile_c(REPRO / "quiet.c", tmp_path / "repro", seconds=0.001)


def test_no_compiler_is_a_host_error_that_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"no-such-cc not found: .*fuselab setup.*gcc and libc6-dev"):
        build.compile_c(REPRO / "quiet.c", tmp_path / "repro", compiler="no-such-cc")


# -- syz-execprog ------------------------------------------------------------------------------

def test_execprog_follows_the_programs_header() -> None:
    argv = build.execprog_argv(HEADER + "r0 = openat(0x0, 0x0, 0x0, 0x0)\n")
    assert argv == ["./syz-execprog", "-executor=./syz-executor", "-repeat=0", "-procs=8", "-sandbox=namespace",
                    "-threaded=true", "prog.syz"]
    argv = build.execprog_argv(JSON_HEADER)
    assert argv[2:6] == ["-repeat=1", "-procs=2", "-sandbox=none", "-threaded=false"]


def test_execprog_without_a_header_runs_once_in_one_process_without_sandbox() -> None:
    assert build.execprog_argv("openat(0x0, 0x0, 0x0, 0x0)\n")[2:6] == [
        "-repeat=1", "-procs=1", "-sandbox=none", "-threaded=true"]
    assert build.execprog_argv("# {Procs:100000 Sandbox:$(reboot)}\n")[3:5] == ["-procs=1", "-sandbox=none"]


def test_a_syzkaller_build_needs_both_binaries(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin" / "linux_amd64"
    bin_dir.mkdir(parents=True)
    (bin_dir / "syz-execprog").write_bytes(b"")
    with pytest.raises(InputError, match=r"no syz-executor in .*make TARGETOS=linux TARGETARCH=amd64"):
        build.syzkaller_binaries(tmp_path)
    (bin_dir / "syz-executor").write_bytes(b"")
    assert build.syzkaller_binaries(tmp_path) == (bin_dir / "syz-execprog", bin_dir / "syz-executor")


# -- modes -------------------------------------------------------------------------------------

def test_mode_both_runs_a_c_reproducers_program_and_judges_its_image() -> None:
    [squash] = program.plan([REPRO / "squashfs_segments.c"], "both", syzkaller=False)
    assert (squash.program, squash.image, squash.note) == ("c", True, "")
    assert squash.line("squashfs_segments.c") == "squashfs_segments.c  mode: program+image"
    [quiet] = program.plan([REPRO / "quiet.c"], "both", syzkaller=False)
    assert (quiet.program, quiet.image) == ("c", False)
    assert quiet.line("quiet.c") == "quiet.c  mode: program (no syz_mount_image in it: no image to judge)"


def test_a_syz_program_without_syzkaller_is_judged_by_its_image_and_says_so() -> None:
    syz = REPRO / "syz_mount_image_ext4_40.syz"
    [item] = program.plan([syz], "both", syzkaller=False)
    assert (item.program, item.image) == (None, True)
    assert "program not run: a .syz program needs --syzkaller DIR; image mode only" in item.line("x")
    [item] = program.plan([syz], "both", syzkaller=True)
    assert (item.program, item.image) == ("syz", True)
    with pytest.raises(SettingError, match=r"runs only through syz-execprog: give --syzkaller DIR"):
        program.plan([syz], "program", syzkaller=False)


def test_an_image_gets_image_mode_and_cannot_be_run(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    image.write_bytes(b"\0" * 1024)
    [item] = program.plan([image], "both", syzkaller=False)
    assert (item.program, item.image, item.line("fs.img")) == (None, True, "fs.img  mode: image")
    with pytest.raises(SettingError, match=r"fs.img: not a program .*use --mode image or both"):
        program.plan([image], "program", syzkaller=False)
    [item] = program.plan([REPRO / "quiet.c"], "image", syzkaller=False)
    assert (item.program, item.image) == (None, False)
    with pytest.raises(SettingError, match="--mode 'all'"):
        program.plan([image], "all", syzkaller=False)


def test_a_directorys_programs_run_and_the_directory_goes_to_the_image_judge(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("a.c", "sub/b.c", "c.syz", ".hidden/d.c", "e.img"):
        (tmp_path / name).write_text("int main(void) { return 0; }\n")
    plans = program.plan([tmp_path], "both", syzkaller=False)
    assert [(p.path.relative_to(tmp_path).as_posix(), p.program, p.image) for p in plans] == [
        ("a.c", "c", False), ("sub/b.c", "c", False), (".", None, True)]
    assert [p.path.name for p in program.plan([tmp_path], "program", syzkaller=True)] == ["a.c", "c.syz", "b.c"]


def test_display_names_tell_files_of_the_same_name_apart() -> None:
    names = program.display_names([Path("a/repro.c"), Path("b/repro.c"), Path("c/other.c")])
    assert list(names.values()) == ["a/repro.c", "b/repro.c", "other.c"]


# -- fired k of N ------------------------------------------------------------------------------

def runs(*outcomes: tuple[str, list[str]]) -> list[Run]:
    return [Run("repro.c", i + 1, outcome, titles, "exited with status 0") for i, (outcome, titles) in enumerate(outcomes)]


def test_summary_counts_firings_and_distinct_titles() -> None:
    uaf = "KASAN: slab-use-after-free Read in f"
    done = runs(("fired", [uaf]), ("quiet", []), ("fired", [uaf, "WARNING in g"]), ("fired", [uaf]))
    assert runner.summary("repro.c", done) == ("repro.c  program: fired 3 of 4: KASAN: slab-use-after-free Read "
                                               "in f (3); WARNING in g (1)")
    assert runner.summary("repro.c", runs(("quiet", []), ("quiet", []), ("quiet", []))) == \
        "repro.c  program: fired 0 of 3"
    lost = runs(("quiet", []), ("error", []))
    lost[1].ended = "guest lost: QEMU exited"
    assert runner.summary("x.c", lost) == "x.c  program: fired 0 of 2  [1 lab error: guest lost: QEMU exited]"


def test_a_firing_is_a_finding_and_a_lost_guest_a_lab_error() -> None:
    assert program.Outcome([], runs(("quiet", []), ("fired", ["WARNING in f"]), ("error", []))).status == 1
    assert program.Outcome([], runs(("quiet", []), ("error", []))).status == program.LAB_ERROR
    assert program.Outcome([], runs(("quiet", []))).status == 0
    assert program.Outcome([], []).status == 0


@dataclass
class FakeSettings:
    keep: str = "failed"
    suppress: tuple[str, ...] = ()


@dataclass
class FakeGuest:
    """Plays one guest run: what the program's command does, and what the console shows."""

    console: str
    ends: str = "exit"  # exit | deadline | lost
    put_files: dict[str, int] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    down: bool = False

    def console_offset(self) -> int:
        return 0

    def console_text(self, since: int = 0) -> str:
        return self.console

    def put(self, path: str, data: object, mode: int = 0o644) -> None:
        self.put_files[path] = mode

    def run(self, cmd: str | list[str], timeout: float = 60, check: bool = True) -> Result:
        self.commands.append(cmd if isinstance(cmd, str) else " ".join(cmd))
        if isinstance(cmd, str) and "exec ./repro" in cmd:
            if self.ends == "lost":
                raise GuestLost("the guest's agent channel closed (QEMU exited?)")
            return Result(cmd, -9 if self.ends == "deadline" else 0, "", "", timeout, self.ends == "deadline")
        return Result(" ".join(cmd), 0, "kernel log\n" if "dmesg" in cmd else "output\n", "", 0.1)

    def shutdown(self) -> None:
        self.down = True


class FakeLab:
    def __init__(self, guests: list[FakeGuest], workdir: Path, keep: str = "failed") -> None:
        self.guests, self.workdir, self.settings = list(guests), workdir, FakeSettings(keep)

    def rundir(self, name: str) -> Path:
        return self.workdir / name

    def guest(self, rundir: Path) -> FakeGuest:
        return self.guests.pop(0)


WARNING = """[   12.000000] ------------[ cut here ]------------
[   12.000001] WARNING: CPU: 0 PID: 300 at fs/super.c:1 f+0x10/0x20
[   12.000002] RIP: 0010:f+0x10/0x20
[   12.000003] ---[ end trace 0000000000000000 ]---
"""


def test_runs_in_fresh_guests_are_judged_by_the_console_and_firings_kept(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "SETTLE", 0)
    guests = [FakeGuest(WARNING), FakeGuest("quiet\n", "deadline"), FakeGuest("", "lost"), FakeGuest(WARNING, "lost")]
    prog = runner.Program("repro.c", {"repro": tmp_path / "bin"}, ["./repro"], ("repro",), "C")
    said: list[str] = []
    done = runner.run_program(FakeLab(guests, tmp_path), prog, 4, 30, tmp_path / "results", say=said.append)  # type: ignore[arg-type]
    assert [(r.outcome, r.titles) for r in done] == [("fired", ["WARNING in f"]), ("quiet", []), ("error", []),
                                                     ("fired", ["WARNING in f"])]
    assert [r.ended for r in done][:3] == ["exited with status 0", "deadline (30 s)",
                                           "guest lost: the guest's agent channel closed (QEMU exited?)"]
    kept = tmp_path / "results" / "repro.c"
    assert sorted(p.name for p in kept.iterdir()) == ["run1", "run3", "run4"]  # firings and the lost guest
    assert (kept / "run1" / "console.txt").read_text() == WARNING
    assert (kept / "run1" / "dmesg.txt").read_text() == "kernel log\n"
    assert "fired; exited with status 0" in (kept / "run1" / "run.txt").read_text()
    assert said[0].startswith("repro.c run 1: fired: WARNING in f (exited with status 0, ")
    assert runner.summary("repro.c", done) == "repro.c  program: fired 2 of 4: WARNING in f (2)  [1 lab error: " \
        "guest lost: the guest's agent channel closed (QEMU exited?)]"
    assert all(g.down for g in guests) or not guests


def test_the_program_runs_as_root_in_its_scratch_directory_with_its_deadline(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "SETTLE", 0)
    guest = FakeGuest("")
    prog = runner.Program("x.c", {"repro": tmp_path / "bin", "prog.syz": tmp_path / "p"}, ["./repro"], ("repro",))
    runner.run_program(FakeLab([guest], tmp_path, keep="none"), prog, 1, 45, tmp_path / "r", say=lambda _: None)  # type: ignore[arg-type]
    assert guest.put_files == {f"{runner.SCRATCH}/repro": 0o755, f"{runner.SCRATCH}/prog.syz": 0o644}
    assert f"cd {runner.SCRATCH} && exec ./repro >output 2>&1 </dev/null" in guest.commands
    assert not (tmp_path / "r").exists()


# -- the command line --------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["--mode", "all"], "argument --mode: invalid choice: 'all'"),
    (["--deadline", "0"], "argument --deadline: 0 is out of range"),
    (["--syzkaller", "/nonexistent"], "argument --syzkaller: /nonexistent: no such file or directory"),
])
def test_repro_refuses_bad_program_options(argv: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "repro", *argv, "x.c"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr


@pytest.mark.skipif(not HAS_GCC, reason="needs gcc and a static libc on the host (`fuselab setup`)")
def test_repro_stops_on_a_compile_error_before_any_guest(tmp_path: Path) -> None:
    bad = tmp_path / "broken.c"
    bad.write_text("int main(void) { return nosuchthing; }\n")
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "repro", str(bad), "--accel", "tcg"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "broken.c  mode: program" in out.stdout
    assert f"fuselab: error: {bad}: does not compile" in out.stderr and "nosuchthing" in out.stderr


# -- real guests -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fired_and_quiet(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One `fuselab repro` of a program that fires and one that does not, two fresh guests each."""
    results = tmp_path_factory.mktemp("results")
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "repro", str(REPRO / "hung_task_fsfreeze.c"),
                          str(REPRO / "quiet.c"), "--repeat", "2", "--deadline", "40", "--results", str(results)],
                         capture_output=True, text=True, timeout=900)
    print(out.stdout, out.stderr)
    return out, results


@pytest.mark.guest
def test_a_c_reproducer_that_splats_is_reported_fired_k_of_n_with_its_title(fired_and_quiet) -> None:  # type: ignore[no-untyped-def]
    out, results = fired_and_quiet
    line = next(x for x in out.stdout.splitlines() if x.startswith("hung_task_fsfreeze.c  program:"))
    assert re.fullmatch(r"hung_task_fsfreeze.c  program: fired ([12]) of 2: INFO: task hung in \w+ \(\1\)", line), line
    assert out.returncode == 1, out.stdout + out.stderr  # a finding
    kept = sorted((results / "programs" / "hung_task_fsfreeze.c").iterdir())
    assert kept and all("blocked for more than" in (run / "console.txt").read_text() for run in kept)
    assert all("thawed" in (run / "output.txt").read_text() for run in kept)


@pytest.mark.guest
def test_a_c_reproducer_that_does_not_fire_is_fired_0_of_n(fired_and_quiet) -> None:  # type: ignore[no-untyped-def]
    out, results = fired_and_quiet
    assert "quiet.c  mode: program (no syz_mount_image in it: no image to judge)" in out.stdout
    assert "quiet.c  program: fired 0 of 2" in out.stdout.splitlines()
    assert not (results / "programs" / "quiet.c").exists()  # --keep failed: nothing kept of quiet runs


@pytest.mark.guest
def test_a_squashfs_c_reproducer_gets_kernel_verdicts_and_its_program_run(tmp_path: Path) -> None:
    verdicts = tmp_path / "v.jsonl"
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "repro", str(REPRO / "squashfs_segments.c"),
                          "--driver", "kernel", "--keep", "all", "--results", str(tmp_path), "--json", str(verdicts)],
                         capture_output=True, text=True, timeout=900)
    print(out.stdout, out.stderr)
    assert "squashfs_segments.c  mode: program+image" in out.stdout
    assert "squashfs_segments.c  program: fired 0 of 1" in out.stdout.splitlines()
    output = (tmp_path / "programs" / "squashfs_segments.c" / "run1" / "output.txt").read_text()
    assert "mount: 0" in output and "./file0/dir/hello: 19 bytes" in output  # it mounted and read the image
    [kernel] = [json.loads(line) for line in verdicts.read_text().splitlines()]  # and the image judge: its verdict
    assert (kernel["driver"], kernel["verdict"]) == ("kernel", "clean"), kernel
    assert {"mount": 0, "walk": 0}.items() <= {s["name"]: s["status"] for s in kernel["steps"]}.items(), kernel


FAKE_EXECPROG = r"""
#include <stdio.h>
int main(int argc, char** argv)
{
  char line[256];
  FILE* prog = fopen(argv[argc - 1], "r");
  for (int i = 0; i < argc; i++)
    printf("arg: %s\n", argv[i]);
  while (prog && fgets(line, sizeof(line), prog))
    printf("prog: %s", line);
  return 0;
}
"""


@pytest.mark.guest
@pytest.mark.skipif(not HAS_GCC, reason="needs gcc and a static libc on the host (`fuselab setup`)")
def test_a_syz_program_goes_to_syz_execprog_with_its_headers_flags(tmp_path: Path) -> None:
    """A stand-in syz-execprog (compiled here, run only in the guest) shows what the lab ran."""
    build_dir = tmp_path / "syzkaller" / "bin" / "linux_amd64"
    build_dir.mkdir(parents=True)
    (tmp_path / "fake.c").write_text(FAKE_EXECPROG)
    build.compile_c(tmp_path / "fake.c", build_dir / "syz-execprog")
    (build_dir / "syz-executor").write_bytes(b"#!/bin/sh\n")
    prog = tmp_path / "repro.syz"
    prog.write_text(HEADER.replace("Procs:8", "Procs:1") + "r0 = openat(0xffffffffffffff9c, 0x0, 0x0, 0x0)\n")
    out = subprocess.run([sys.executable, "-m", "pytest_fuselab.cli", "repro", str(prog), "--syzkaller",
                          str(tmp_path / "syzkaller"), "--keep", "all", "--results", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=900)
    print(out.stdout, out.stderr)
    assert "repro.syz  mode: program (no syz_mount_image in it: no image to judge)" in out.stdout
    assert "repro.syz  program: fired 0 of 1" in out.stdout.splitlines() and out.returncode == 0
    said = (tmp_path / "r" / "programs" / "repro.syz" / "run1" / "output.txt").read_text()
    assert "arg: -executor=./syz-executor\narg: -repeat=0\narg: -procs=1\narg: -sandbox=namespace\n" in said
    assert "prog: r0 = openat(" in said
