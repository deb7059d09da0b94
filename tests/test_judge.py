"""The guest's judge (guest/judge.py, steps.py, kmsg.py): its steps on the host (unit), and batches
of drivers in real guests: a splat is blamed on the driver that caused it, step deadlines hold."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_fuselab.guest import course, kmsg, stalls, steps
from pytest_fuselab.guest.protocol import DriverRecord, DriverSpec
from pytest_fuselab.judge import containment
from pytest_fuselab.judge.drivers import DRIVERS, Driver
from pytest_fuselab.reproducers import extract


def tree(root: Path) -> Path:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"x" * 70000)
    (root / "d" / "e" / "g").write_text("g")
    (root / "link").symlink_to("d/f")
    with contextlib.suppress(OSError):  # user xattrs where the filesystem has them (walked either way)
        os.setxattr(root / "d" / "f", "user.fuselab", b"1")
    return root


def test_walk_visits_entries_files_links_and_xattrs(tmp_path, capsys):
    assert steps.walk(str(tree(tmp_path))) == 0
    assert "walked 5 entries, read 2 files, 0 errors" in capsys.readouterr().out


def test_walk_reports_the_first_error_with_its_errno(tmp_path, monkeypatch):
    top = tree(tmp_path)
    real = os.lstat

    def lstat(path, *args, **kwargs):
        if str(path).endswith("/e"):
            raise OSError(errno.EUCLEAN, "Structure needs cleaning")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(steps.os, "lstat", lstat)
    with pytest.raises(steps.StepFailed) as failed:
        steps.walk(str(top))
    assert failed.value.errno == "EUCLEAN"
    assert str(failed.value) == f"stat {top}/d/e: EUCLEAN (Structure needs cleaning)"


def test_modify_leaves_nothing_behind(tmp_path):
    assert steps.modify(str(tmp_path)) == 0
    assert list(tmp_path.iterdir()) == []


def test_step_in_a_child_records_errno_status_and_words(tmp_path, monkeypatch):
    def refuse(*paths):
        raise OSError(errno.EROFS, "Read-only file system", paths[0])

    monkeypatch.setattr(steps.os, "rename", refuse)
    step = steps.in_child("modify", 10, None, steps.modify, str(tmp_path))
    assert (step.status, step.errno) == (1, "EROFS")
    assert "judge: modify: rename .fl-new: EROFS (Read-only file system)" in step.said
    shell = steps.in_child("unmount", 10, None, steps.run_shell, "echo busy >&2; exit 32")
    assert (shell.status, shell.errno, shell.said) == (32, "", "busy")


@pytest.mark.parametrize("runner", ["in_child", "command_step"])
def test_commands_run_without_a_shell_and_umount_is_the_system_call(tmp_path, runner):
    def step(name, command):
        if runner == "in_child":
            return steps.in_child(name, 10, None, steps.run, command)
        return steps.command_step(name, 10, None, command)  # spawned, or in a child for umount

    argv = step("fsck", ["sh", "-c", "echo $0 >&2; exit 4", "direct"])
    assert (argv.status, argv.said) == (4, "direct")
    missing = step("fsck", ["/nonexistent/e2fsck", "-fn"])
    assert (missing.status, missing.errno) == (1, "ENOENT")
    assert "cannot run /nonexistent/e2fsck: ENOENT" in missing.said
    not_mounted = step("unmount", ["umount", str(tmp_path)])
    assert not_mounted.status == 1 and not_mounted.errno in ("EINVAL", "EPERM")  # EPERM when not root
    assert f"umount {tmp_path}: " in not_mounted.said


def test_a_service_instances_fate_is_read_from_systemds_words():
    journal = ("Started fuse4fs@0-312-0.service - fuse4fs.\n"
               "fuse4fs@0-312-0.service: Main process exited, code=dumped, status=11/SEGV\n"
               "fuse4fs@0-312-0.service: Failed with result 'core-dump'.\n")
    assert course.unit_fate(journal) == "killed by SIGSEGV (core dumped)"
    assert course.unit_fate("x: Main process exited, code=exited, status=1/FAILURE\n") == "exit status 1"
    assert course.unit_fate("fuse4fs@1-2-0.service: Deactivated successfully.\n") == "exit status 0"
    assert course.unit_fate("Started fuse4fs@1-2-0.service\n") == ""


def test_a_step_past_its_deadline_is_killed():
    step = steps.in_child("walk", 0.5, None, steps.run_shell, "sleep 30")
    assert step.status == -1 and step.seconds < 5
    assert "no result within 0.5 s (killed)" in step.said
    spawned = steps.command_step("fsck", 0.5, None, ["sh", "-c", "sleep 30 & sleep 30"])
    assert spawned.status == -1 and spawned.seconds < 5  # its whole session is killed
    assert "no result within 0.5 s (killed)" in spawned.said


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_a_users_step_runs_as_that_user():
    step = steps.in_child("walk", 10, "nobody", steps.run_shell, "id -un")
    assert (step.status, step.said) == (0, "nobody")


def test_the_walk_tells_its_counts_and_a_refusal_its_first_meaningful_words(tmp_path):
    told: dict[str, object] = {}
    step = steps.in_child("walk", 10, None, steps.walk, str(tree(tmp_path)), told=told)
    assert step.status == 0 and (told["entries"], told["files"], told["walk_errors"]) == (5, 2, 0)
    refusal = ("fuse2fs: Warning: fuse2fs does not support using the journal.\n"
               "There may be file system corruption or data loss if\nthe file system is not gracefully unmounted.\n"
               "quotas not supported.\nMount failed due to unrecognized options.\n"
               "fuseserver: fuse2fs ended before mounting: exit status 3\n")
    assert steps.first_words(refusal) == "quotas not supported."
    assert steps.first_words("mount: /mnt/k: fsconfig() failed: Structure needs cleaning.\n"
                             "       dmesg(1) may have more information after failed mount system call.\n") == \
        "mount: /mnt/k: fsconfig() failed: Structure needs cleaning."


def test_systemd_runs_own_words_are_never_a_refusal():
    said = ("Running as unit: fuselab-fs-x-1.service; invocation ID: 0f3c\n"
            "fuse2fs: Warning: fuse2fs does not support using the journal.\n"
            "quotas not supported.\nMount failed due to unrecognized options.\n"
            "Finished with result: exit-code\nMain processes terminated with: code=exited, status=3/NOTIMPLEMENTED\n"
            "Service runtime: 120ms\nCPU time consumed: 80ms\n"
            "fuseserver: fuse2fs ended before mounting: exit status 3\n")
    assert steps.first_words(said) == "quotas not supported."
    assert steps.first_words("Running as unit: u.service; invocation ID: 1\nFinished with result: signal\n") == ""


def test_a_kept_server_left_behind_after_its_mount_is_killed_and_said_so(tmp_path, monkeypatch):
    """A server whose mount is gone but which still runs is SIGKILLed through the pid its keeper wrote;
    its keeper then writes its fate, and the record says the lab killed it."""
    fate = str(tmp_path / "servers" / "m.json")
    (tmp_path / "m").mkdir()
    spec = spec_for(tmp_path, ["sh", "true"], fate=fate)
    assert course.kill_left_behind(spec) == ""  # no keeper, no server: nothing to kill
    code = ("import sys; from pytest_fuselab.guest import fuseserver; fuseserver.prepare(sys.argv[1]); "
            "fuseserver.keep(sys.argv[1], ['sleep', '600'])")
    keeper = subprocess.Popen([sys.executable, "-c", code, fate])
    try:
        assert course.wait_for_fate(f"{fate}.pid", 10)
        monkeypatch.setattr(stalls, "servers", lambda device: [])  # none serves /dev/null: the keeper's child
        assert course.server_fate(spec) == course.KILLED
        assert keeper.wait(10) == 0 and course.fate_of(fate) == "killed by SIGKILL"
        assert course.kill_left_behind(spec) == ""  # it has its fate now
    finally:
        keeper.kill()


def spec_for(tmp_path: Path, mount: list[str], **kw: object) -> DriverSpec:
    return DriverSpec(name="k", device="/dev/null", mountpoint=str(tmp_path / "m"), mount=mount,
                      unmount=["true"], **kw)  # type: ignore[arg-type]


def test_a_refused_mount_says_so_with_its_words_and_status(tmp_path):
    spec = spec_for(tmp_path, ["sh", "echo 'Warning: x' >&2; echo 'quotas not supported.' >&2; exit 3"],
                    checker=["true"])
    record = course.judge_driver(spec, {"mount": 10, "walk": 10, "modify": 10, "unmount": 10, "fsck": 10})
    assert (record.reached, record.refusal) == ("refused", "quotas not supported. (exit status 3)")
    assert [s.name for s in record.steps] == ["mount"]


def test_a_read_only_filesystem_is_walked_not_modified_and_no_checker_is_said(tmp_path):
    spec = spec_for(tmp_path, ["sh", "true"], readonly=True, fstype="iso9660")
    record = course.judge_driver(spec, {"mount": 10, "walk": 10, "modify": 10, "unmount": 10, "fsck": 10})
    assert [s.name for s in record.steps] == ["mount", "walk", "unmount", "fsck"]
    assert record.steps[-1].said == "judge: no checker for iso9660" and record.reached == "unmounted"
    assert record.entries == 0 and record.walk_errors == 0


def test_the_budget_stops_a_course_and_records_each_step_not_run(tmp_path):
    spec = spec_for(tmp_path, ["sh", "true"], checker=["sh", "-c", "sleep 30", "checker"])
    record = course.judge_driver(spec, {"mount": 10, "walk": 10, "modify": 10, "unmount": 10, "fsck": 60},
                                 until=time.monotonic() + 3)
    assert [(s.name, s.status) for s in record.steps][-1] == ("fsck", -1)
    assert "budget ran out" in record.steps[-1].said and record.reached == "unmounted"
    late = course.judge_driver(spec, {s: 10 for s in course.REACH}, until=time.monotonic() - 1)
    assert [(s.name, s.status) for s in late.steps] == [(n, -1) for n in course.REACH] and late.reached == ""


def test_a_step_that_stalls_on_a_fuse_connection_has_it_aborted(monkeypatch):
    """The watch: no progress for `stall` seconds, requests waiting, the server not in D state."""
    aborted = []
    monkeypatch.setattr(stalls, "fuse_connection", lambda mountpoint: 41)
    monkeypatch.setattr(stalls, "waiting", lambda connection: 1)
    monkeypatch.setattr(stalls, "servers", lambda device: [])
    monkeypatch.setattr(stalls, "abort", lambda connection: aborted.append(connection) or True)
    monkeypatch.setattr(stalls, "TICK", 0.2)
    monkeypatch.setattr(steps, "TICK", 0.2)
    watch = stalls.Watch("walk", "/mnt/x", "/dev/null", 1.0)
    step = steps.in_child("walk", 20, None, steps.run_shell, "sleep 4", watch=watch)
    assert aborted == [41] and watch.hung == "server hung during walk (connection aborted)"
    assert step.status == 0  # the step itself goes on (a real one fails at once: ECONNABORTED)


def test_a_task_spinning_in_one_system_call_at_the_deadline_is_a_livelock(monkeypatch):
    stat = iter([("spin", "R", 5, 100), ("spin", "R", 5, 350)])
    monkeypatch.setattr(stalls, "fuse_connection", lambda mountpoint: None)
    monkeypatch.setattr(stalls, "family", lambda pid: [pid])
    monkeypatch.setattr(stalls, "task_stat", lambda pid: next(stat))
    monkeypatch.setattr(stalls, "_read", lambda path: "[<0>] ext4_readdir+0x1/0x2\n" if path.endswith("stack")
                        else "217 0x3 0x0\n")
    monkeypatch.setattr(stalls.time, "sleep", lambda seconds: None)
    watch = stalls.Watch("walk", "/mnt/x", "/dev/null", 12)
    watch.overdue(77)
    assert watch.livelock.startswith("spin[77] never returned from system call 217 during walk (R state, not D)")
    assert "ext4_readdir" in watch.livelock
    record = DriverRecord(name="kernel", livelock=watch.livelock)
    assert [s.title for s in containment.livelocked(record)] == ["livelock in ext4_readdir"]


def test_kernel_log_records_read_like_the_console():
    line = kmsg.console_line("4,812,12345678,-;WARNING: CPU: 1 PID: 7 at fs/x.c:1 f+0x1/0x2\n SUBSYSTEM=x\n")
    assert line == "[   12.345678] WARNING: CPU: 1 PID: 7 at fs/x.c:1 f+0x1/0x2"
    assert kmsg.console_line("6,1,5,-;a\\x0ab") == "[    0.000005] a\nb"


def test_driver_specs_carry_what_the_judge_runs():
    spec = DRIVERS["fuse2fs-user"].judge_spec("/dev/vdb", "/mnt/hostile-fuse2fs-user")
    assert spec.mount == ["start", "/run/fuselab/servers/mnt-hostile-fuse2fs-user.json", "/mnt/hostile-fuse2fs-user",
                             "fuse2fs", "-f", "/dev/vdb", "/mnt/hostile-fuse2fs-user", "-o", "fakeroot"]
    assert (spec.user, spec.unmount) == ("fuselab", ["fusermount3", "-u", "/mnt/hostile-fuse2fs-user"])
    kernel = DRIVERS["kernel"].judge_spec("/dev/vdc", "/mnt/k", "errors=continue")
    assert kernel.mount == ["exec", "mount", "-i", "-t", "ext4", "-o", "errors=continue", "/dev/vdc", "/mnt/k"]
    assert kernel.unmount == ["umount", "/mnt/k"] and kernel.fate is None
    assert (kernel.checker, spec.checker, kernel.readonly) == (["e2fsck", "-fn"], ["e2fsck", "-fn"], False)
    assert DRIVERS["fuse2fs-sandbox"].judge_spec("/dev/vdd", "/mnt/s").mount[0] == "sandbox"
    assert DriverSpec.from_json(spec.to_json()) == spec  # what the judge receives is what was built


# -- real guests -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Warner(Driver):
    """Kernel ext4, but its mount also logs a WARNING, as a kernel bug hit while mounting would."""

    def judge_spec(self, device: str, mountpoint: str, options: str = "", fstype: str = "") -> DriverSpec:
        spec = super().judge_spec(device, mountpoint, options, fstype)
        warn = ("echo '<4>WARNING: CPU: 0 PID: 1 at fs/ext4/super.c:1 ext4_fill_super+0x1/0x2' > /dev/kmsg && "
                "echo '<4>---[ end trace 0000000000000000 ]---' > /dev/kmsg")
        spec.mount = ["sh", f"{warn} && {shlex.join(spec.mount[1:])}"]
        return spec


@dataclasses.dataclass(frozen=True)
class Sleeper(Driver):
    """fuse2fs with a process sitting in the mount, so that it cannot be unmounted."""

    def judge_spec(self, device: str, mountpoint: str, options: str = "", fstype: str = "") -> DriverSpec:
        spec = super().judge_spec(device, mountpoint, options, fstype)
        spec.mount = ["sh", f"python3 -S -m pytest_fuselab.guest.fuseserver start --fate {spec.fate} "
                               f"--mountpoint {mountpoint} -- fuse2fs -f {device} {mountpoint} && "
                               f"(cd {mountpoint} && setsid sleep 600 </dev/null >/dev/null 2>&1 &)"]
        return spec


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "good.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", str(path), "8M"], check=True)
    return extract(path)[0]


@pytest.fixture
def lab(tmp_path):
    from pytest_fuselab.lab import Lab
    from pytest_fuselab.settings import resolve

    return Lab(resolve(), tmp_path / "lab", progress=lambda message: print(message, file=sys.stderr))


@pytest.mark.guest
@pytest.mark.parametrize("together", [True, False], ids=["together", "one-by-one"])
def test_a_splat_is_blamed_on_its_driver_and_the_rest_judged_on_a_fresh_guest(lab, image, tmp_path, monkeypatch,
                                                                              together):
    """Together, a splat leaves every driver of the batch to be judged alone; one by one, the
    driver that splatted keeps its verdict and those after it move to a fresh guest."""
    monkeypatch.setitem(DRIVERS, "warner", Warner("warner", "ext4"))
    runner = containment.ImageRunner(lab, tmp_path / "run", together=together)
    try:
        first = runner._fresh_guest(3)
        verdicts = runner.judge_item(image, ["warner", "fuse2fs", "kernel"])
        assert runner.guest is not first  # the batch stopped at the splat; the rest ran elsewhere
    finally:
        runner.close()
    by = {v.driver: v for v in verdicts}
    assert by["warner"].verdict == "finding"
    assert by["warner"].splats == ["WARNING in ext4_fill_super"]
    assert [s.name for s in by["warner"].steps] == ["mount", "walk", "modify", "unmount", "fsck"]
    assert (by["fuse2fs"].verdict, by["fuse2fs"].splats, by["fuse2fs"].server) == ("contained", [], "exit status 0")
    assert (by["kernel"].verdict, by["kernel"].splats) == ("clean", [])


@pytest.mark.guest
def test_a_mount_that_cannot_be_removed_is_a_breach(lab, image, tmp_path, monkeypatch):
    monkeypatch.setitem(containment.DEADLINES, "unmount", 3)
    driver = Sleeper("sleeper", "fuse.ext4")
    guest = lab.guest()
    try:
        v = containment.judge(guest, tmp_path / "disk.raw", "good.img#0", image, driver)
    finally:
        guest.shutdown()
    by_name = {s.name: s for s in v.steps}
    assert by_name["mount"].status == 0 and by_name["walk"].status == 0
    assert by_name["unmount"].status != 0 and "busy" in by_name["unmount"].said, by_name["unmount"]  # a cwd in there
    assert v.stuck_mount and v.verdict == "breach"  # a mount that cannot be removed is a breach


@pytest.mark.guest
def test_the_next_images_disk_is_plugged_while_a_batch_is_judged(lab, image, tmp_path, monkeypatch):
    """The next image's disk goes in while the batch runs and is used by the next batch; after a
    splat the guest is replaced and the disk plugged ahead into it is dropped, not used."""
    monkeypatch.setitem(DRIVERS, "warner", Warner("warner", "ext4"))
    second = extract(shutil.copy(image.source, tmp_path / "second.img"))[0]
    third = extract(shutil.copy(image.source, tmp_path / "third.img"))[0]
    runner = containment.ImageRunner(lab, tmp_path / "run")
    try:
        first_verdicts = runner.judge_item(image, ["kernel", "fuse2fs"], after=second)
        guest = runner.guest
        assert runner.ahead is not None and runner.ahead[0] is second
        ahead = runner.ahead[2]
        assert guest.disks[0] in guest.unplugging or ahead is guest.disks[0]  # the first image's disk: unplugged
        second_verdicts = runner.judge_item(second, ["kernel", "fuse2fs"], after=third)
        assert runner.guest is guest and not ahead.host_path.exists()  # the disk plugged ahead served, then went
        assert ahead in guest.unplugging or ahead not in guest.disks
        hurt = runner.judge_item(third, ["warner", "fuse2fs"], after=second)
        assert runner.guest is not guest and runner.ahead is not None and runner.ahead[1] is guest
        dropped = runner.ahead[2]
        again = runner.judge_item(second, ["kernel", "fuse2fs"])
        assert dropped not in runner.guest.disks and not dropped.host_path.exists()  # not taken
    finally:
        runner.close()
    for v in first_verdicts + second_verdicts + again:
        assert v.verdict in ("clean", "contained"), v
    assert [v.verdict for v in hurt] == ["finding", "contained"]
