"""Unit: kernel splat recognition and titles, on console samples."""

from pytest_fuselab.judge.splats import scan


def titles(text):
    return [s.title for s in scan(text)]


def test_warning_old_format(data):
    assert titles((data / "warning_old.txt").read_text()) == ["WARNING in fuse_abort_conn"]


def test_warning_new_format(data):
    assert titles((data / "warning_new.txt").read_text()) == ["WARNING in ext4_evict_inode"]


def test_kasan_title_names_access_and_function(data):
    [splat] = scan((data / "kasan.txt").read_text())
    assert splat.title == "KASAN: slab-use-after-free Read in ext4_xattr_ibody_get"
    assert "Read of size 4" in splat.excerpt


def test_hung_task_skips_scheduler_frames(data):
    assert titles((data / "hung.txt").read_text()) == ["INFO: task hung in request_wait_answer"]


def test_general_protection_fault_uses_rip(data):
    assert titles((data / "gpf.txt").read_text()) == ["general protection fault in fuse_request_end"]


def test_sysrq_panic(data):
    [splat] = scan((data / "panic_sysrq.txt").read_text())
    assert splat.title == "kernel panic: sysrq triggered crash"
    assert "sysrq_handle_crash" in splat.excerpt


def test_assorted_reports(data):
    assert titles((data / "misc.txt").read_text()) == [
        "VFS: Busy inodes after unmount of vdb",
        "UBSAN: shift-out-of-bounds in fs/ext4/super.c:4567:30",
        "INFO: rcu detected stall in ext4_mb_regular_allocator",
        "kernel BUG in jbd2_journal_dirty_metadata",
        "BUG: unable to handle kernel paging request in fuse_readpages_end",
    ]


def test_clean_boot_has_no_splats(data):
    assert scan((data / "clean_boot.txt").read_text()) == []


def test_suppression_by_title_regex(data):
    text = (data / "warning_old.txt").read_text() + (data / "kasan.txt").read_text()
    assert [s.title for s in scan(text, suppress=[r"^WARNING in fuse_"])] == [
        "KASAN: slab-use-after-free Read in ext4_xattr_ibody_get"]


def test_line_numbers_point_at_the_start(data):
    text = (data / "clean_boot.txt").read_text() + (data / "gpf.txt").read_text()
    [splat] = scan(text)
    assert text.splitlines()[splat.line - 1].endswith("SMP NOPTI")
