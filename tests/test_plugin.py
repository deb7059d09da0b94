"""Plugin (pytester): options, ini twins, environment, header and errors, without guests."""

import pytest


def test_header_shows_effective_settings_and_their_sources(pytester, monkeypatch):
    monkeypatch.setenv("FUSELAB_CPUS", "3")
    pytester.makeini("[pytest]\nfuselab_memory = 768\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--fuselab-keep=all")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "fuselab: image=sid, kernel=-, accel=auto, memory=768, cpus=3, keep=all*",
        "fuselab: set by *memory from ini fuselab_memory*cpus from FUSELAB_CPUS*keep from --fuselab-keep*",
    ])


def test_bad_setting_is_a_usage_error_naming_its_source(pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--fuselab-accel=hyperv")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*accel from --fuselab-accel = 'hyperv': must be one of auto, kvm, tcg*"])


def test_bad_kernel_path_is_named(pytester, tmp_path):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(f"--fuselab-kernel={tmp_path}/bzImage")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*kernel from --fuselab-kernel*no kernel image at {tmp_path}/bzImage*"])


def test_every_option_has_an_ini_twin_in_help(pytester):
    result = pytester.runpytest("--help")
    for name in ("image", "kernel", "accel", "memory", "cpus", "keep", "boot-timeout", "watchdog"):
        result.stdout.fnmatch_lines([f"*--fuselab-{name}=*"])
    result.stdout.fnmatch_lines(["*fuselab_keep (string):*"])


def test_guest_tests_are_marked(pytester):
    pytester.makepyfile("def test_a(fuselab_guest):\n    pass\ndef test_b():\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q", "-m", "fuselab_guest")
    result.stdout.fnmatch_lines(["*test_a*", "*1/2 tests collected (1 deselected)*"])
