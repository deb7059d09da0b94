"""Real guests through the plugin (pytester): a panic or a kernel WARNING fails its test with
the splat's title and evidence, artifacts are kept, and the next test gets a working guest."""

import re

import pytest

pytestmark = pytest.mark.guest

INNER = '''
def test_1_panics(fuselab_guest):
    fuselab_guest.run("echo c > /proc/sysrq-trigger")

def test_2_warns_but_passes_its_body(fuselab_guest):
    # A WARNING record in the guest kernel's log, exactly as the console shows a WARN_ON().
    fuselab_guest.run("echo '<4>WARNING: CPU: 1 PID: 77 at fs/fuse/inode.c:1234 fuse_fill_super+0x1f/0x90 [fuse]' > /dev/kmsg")
    fuselab_guest.run("echo '<4>---[ end trace 0000000000000000 ]---' > /dev/kmsg")

def test_3_next_guest_works(fuselab_guest):
    assert fuselab_guest.run("echo ok").stdout == "ok\\n"
    assert "Trigger a crash" not in fuselab_guest.run("dmesg").stdout
'''


def test_splats_fail_tests_and_the_next_test_gets_a_fresh_guest(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*test_1_panics FAILED*", "*test_2_warns_but_passes_its_body FAILED*",
                                 "*test_3_next_guest_works PASSED*"])
    assert "kernel splat: kernel panic: sysrq triggered crash" in out
    assert "the test passed, but its guest did not survive it:" in out
    assert "kernel splat: WARNING in fuse_fill_super" in out
    result.stdout.fnmatch_lines(["*test_inner.py::test_1_panics*FAIL*kernel panic: sysrq triggered crash*",
                                 "*test_inner.py::test_2_warns_but_passes_its_body*FAIL*WARNING in fuse_fill_super*"])
    kept = re.findall(r"console, QEMU command and dmesg kept in (\S+)", out)
    assert len(kept) == 2
    from pathlib import Path
    for directory in map(Path, kept):
        assert "Kernel panic" in (directory / "console.log").read_text() or \
            "WARNING: CPU: 1 PID: 77" in (directory / "console.log").read_text()
        assert (directory / "qemu-command.txt").read_text().startswith("qemu-system-x86_64 ")
    warn_dir = Path(kept[1])
    assert "fuse_fill_super" in (warn_dir / "dmesg.txt").read_text()


def test_expected_splats_can_be_allowed(pytester):
    pytester.makepyfile(test_allowed='''
import pytest

@pytest.mark.fuselab_splat_ok
def test_allowed(fuselab_guest):
    fuselab_guest.run("echo '<4>WARNING: CPU: 0 PID: 1 at x.c:1 known_issue+0x0/0x1' > /dev/kmsg")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_allowed*PASS*WARNING in known_issue*"])


def test_suppressed_titles_do_not_fail(pytester):
    pytester.makeini("[pytest]\nfuselab_suppress =\n    ^WARNING in known_issue$\n")
    pytester.makepyfile(test_sup='''
def test_sup(fuselab_guest):
    fuselab_guest.run("echo '<4>WARNING: CPU: 0 PID: 1 at x.c:1 known_issue+0x0/0x1' > /dev/kmsg")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_guest_that_stops_answering_fails_its_test(pytester):
    pytester.makepyfile(test_frozen='''
def test_frozen(fuselab_guest):
    fuselab_guest.run("sleep 0.5; pkill -STOP -f fuselab-agent", timeout=2)
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*GuestTimeout: the guest did not answer 'run' within 12 s*",
                                 "*guest stopped answering (no reply to a ping within 10 s)*"])


def test_a_task_left_in_d_state_fails_its_test(pytester):
    """A reader stuck in a FUSE request (stallfs hangs its read) is a task in D state."""
    pytester.makepyfile(test_stuck='''
def test_stuck(fuselab_guest):
    g = fuselab_guest
    g.run("mkdir -p /mnt/s /run/st && nohup python3 -m pytest_fuselab.guest.stallfs /mnt/s --state /run/st --fault read:1:hang >/dev/null 2>&1 &")
    g.run("for i in $(seq 200); do [ -e /run/st/mounted ] && break; sleep 0.05; done; echo data > /mnt/s/f")
    g.run("nohup cat /mnt/s/f >/dev/null 2>&1 &")
    g.run("for i in $(seq 200); do [ -e /run/st/reached-read-1 ] && break; sleep 0.05; done")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tasks still in uninterruptible sleep (D) after 5 s: cat*"])
