"""Unit: settings come from CLI > env > ini > default, and bad values name their source."""

import pytest

from pytest_fuselab.errors import SettingError
from pytest_fuselab.settings import resolve


def test_defaults():
    s = resolve({}, {}, env={})
    assert (s.image, s.accel, s.memory, s.cpus, s.keep) == ("sid", "auto", 1024, 2, "failed")
    assert set(s.sources.values()) == {"default"}


def test_precedence_cli_env_ini():
    env = {"FUSELAB_MEMORY": "768", "FUSELAB_CPUS": "3"}
    s = resolve({"memory": "512"}, {"memory": "2048", "cpus": "4", "keep": "all"}, env=env)
    assert (s.memory, s.cpus, s.keep) == (512, 3, "all")
    assert s.sources["memory"] == "--fuselab-memory"
    assert s.sources["cpus"] == "FUSELAB_CPUS"
    assert s.sources["keep"] == "ini fuselab_keep"


@pytest.mark.parametrize("cli,env,needle", [
    ({"accel": "xen"}, {}, "accel from --fuselab-accel = 'xen': must be one of auto, kvm, tcg"),
    ({}, {"FUSELAB_MEMORY": "lots"}, "memory from FUSELAB_MEMORY = 'lots'"),
    ({"cpus": "0"}, {}, "cpus from --fuselab-cpus = '0': must be a positive whole number"),
    ({"keep": "some"}, {}, "keep from --fuselab-keep"),
])
def test_bad_values_name_their_source(cli, env, needle):
    with pytest.raises(SettingError) as info:
        resolve(cli, {}, env=env)
    assert needle in str(info.value)


def test_kernel_must_exist_and_be_a_bzimage(tmp_path):
    with pytest.raises(SettingError, match="no kernel image at"):
        resolve({"kernel": str(tmp_path / "missing")}, {}, env={})
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF" + b"\0" * 1024)
    with pytest.raises(SettingError, match="not an x86 bzImage"):
        resolve({"kernel": str(vmlinux)}, {}, env={})
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 100)
    assert resolve({"kernel": str(bz)}, {}, env={}).kernel == bz


def test_suppress_lines():
    s = resolve({}, {"suppress": ["^WARNING in foo", "  ", "bar"]}, env={})
    assert s.suppress == ("^WARNING in foo", "bar")


def test_per_run_options_are_parsed_once(tmp_path):
    s = resolve({"fuse_conf": "user_allow_other , mount_max =  3"}, {}, env={})
    assert s.fuse_conf == "user_allow_other,mount_max=3" and resolve({}, {}, env={}).fuse_conf is None
    assert resolve({}, {"corpus": str(tmp_path)}, env={}).corpus == tmp_path.resolve()
    with pytest.raises(SettingError, match="corpus from FUSELAB_CORPUS = .*no corpus directory at"):
        resolve({}, {}, env={"FUSELAB_CORPUS": str(tmp_path / "missing")})
