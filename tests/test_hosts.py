"""Runs over hosts for real: test hosts in network namespaces (own sshd, workdir, cache), ssh(1), xdist's gateways."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_fuselab.hosts.testhosts import SSHD, TestHosts

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "scenarios/test_ext4_roundtrip.py::test_ext4_roundtrip"
ITEMS = [f"{SCENARIO}[{p}]" for p in ("kernel-to-fuse2fs", "fuse2fs-to-kernel", "fuse2fs-to-fuse2fs-user")]
FUSELAB = [sys.executable, "-m", "pytest_fuselab.cli"]

pytestmark = [pytest.mark.skipif(os.geteuid() != 0 or not Path(SSHD).exists(),
                                 reason="test hosts need root, network namespaces and openssh-server"),
              pytest.mark.build]  # `fuselab hosts setup` builds wheels and ships the guest image to two hosts


@pytest.fixture(scope="module")
def lab_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHosts]:
    """Two test hosts, set up by `fuselab hosts setup` (the project's wheels and the guest image sent)."""
    with TestHosts(tmp_path_factory.mktemp("hosts"), count=2) as hosts:
        done = subprocess.run([*FUSELAB, "hosts", "setup", str(hosts.hosts_toml)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        yield hosts


def pytest_run(args: list[str], results: Path, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """A real pytest run of the scenarios from the project's root, JUnit XML in `results`."""
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-rfEs",
            f"--junitxml={results / 'junit.xml'}", "--fuselab-accel=tcg", *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def outcomes(junit: Path) -> dict[str, str]:
    """{test name: passed|failure|error|skipped} from a JUnit XML file; a name twice is an error."""
    found: dict[str, str] = {}
    for case in ET.parse(junit).iter("testcase"):
        name = case.get("name", "").split("@")[0]
        assert name not in found, f"{name} reported twice"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        found[name] = kinds[0] if kinds else "passed"
    return found


def test_check_lists_both_hosts_with_the_image(lab_hosts: TestHosts) -> None:
    done = subprocess.run([*FUSELAB, "hosts", "check", str(lab_hosts.hosts_toml)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {h.name for h in lab_hosts.hosts}
    assert all(" ok " in row and "TCG" in row and "sid-" in row for row in rows.values()), done.stdout


def test_unreachable_host_is_reported_and_skipped(lab_hosts: TestHosts, tmp_path: Path) -> None:
    with TestHosts(tmp_path / "dead", count=1, first=9) as dead:
        dead.hosts[0].kill()  # its namespace and address stay; nothing answers on port 22
        toml = tmp_path / "hosts.toml"
        toml.write_text(lab_hosts.hosts_toml.read_text() + f'\n[[host]]\nssh = "root@{dead.hosts[0].address}"\nname = "gone"\n')
        done = pytest_run([f"--fuselab-hosts={toml}", "tests/test_hosts_config.py"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "host gone skipped: unreachable" in done.stderr
    assert "gone: skipped at the start: unreachable" in done.stdout
    assert set(outcomes(tmp_path / "junit.xml").values()) == {"passed"}


@pytest.mark.guest
def test_scenario_over_two_hosts_matches_a_local_run(lab_hosts: TestHosts, tmp_path: Path) -> None:
    local = pytest_run(["-n", "2", *ITEMS[:2]], tmp_path / "local")
    remote = pytest_run([f"--fuselab-hosts={lab_hosts.hosts_toml}", *ITEMS[:2]], tmp_path / "hosts")
    assert remote.returncode == local.returncode, remote.stdout[-3000:]
    assert outcomes(tmp_path / "hosts" / "junit.xml") == outcomes(tmp_path / "local" / "junit.xml")
    assert "fuselab summary" in remote.stdout and f"{lab_hosts.hosts[0].name}: 1 worker(s), ok" in remote.stdout
    assert not lab_hosts.hosts[0].qemu_pids() and not lab_hosts.hosts[1].qemu_pids()


def judged(jsonl: Path) -> list[tuple[str, str, str]]:
    """(image, driver, verdict) of each JSON line of a `fuselab repro --json` file, sorted."""
    return sorted((v["image"], v["driver"], v["verdict"]) for v in map(json.loads, jsonl.read_text().splitlines()))


@pytest.mark.guest
def test_corpus_over_two_hosts_matches_a_local_run(lab_hosts: TestHosts, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    made = subprocess.run([*FUSELAB, "corpus", "generate", str(corpus), "--count", "3"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    images = sorted(str(p) for p in corpus.iterdir() if p.name != "manifest.jsonl")
    local = subprocess.run([*FUSELAB, "repro", *images, "--accel", "tcg", "--guests", "2",
                            "--json", str(tmp_path / "local.jsonl")], capture_output=True, text=True, timeout=900)
    remote = subprocess.run([*FUSELAB, "repro", *images, "--hosts", str(lab_hosts.hosts_toml),
                             "--json", str(tmp_path / "hosts.jsonl"), "--html", str(tmp_path / "hosts.html")],
                            capture_output=True, text=True, timeout=900)
    assert remote.returncode == local.returncode, remote.stdout[-3000:] + remote.stderr[-3000:]
    found = judged(tmp_path / "hosts.jsonl")
    assert len(found) == len({(i, d) for i, d, _ in found}) == len(judged(tmp_path / "local.jsonl")) > 0
    assert found == judged(tmp_path / "local.jsonl"), remote.stderr[-3000:]
    first, second = (h.name for h in lab_hosts.hosts)
    assert f"judging on {first} (1 slot), {second} (1 slot)" in remote.stderr
    assert f"fuselab hosts: {first}: 1 slot(s), ok" in remote.stderr and "verdicts:" in remote.stdout
    assert (tmp_path / "hosts.html").is_file()
    assert not lab_hosts.hosts[0].qemu_pids() and not lab_hosts.hosts[1].qemu_pids()


# Last: it kills a host of the module's fixture for good.
@pytest.mark.guest
def test_a_host_killed_mid_run_costs_only_its_items(lab_hosts: TestHosts, tmp_path: Path) -> None:
    victim = lab_hosts.hosts[0]
    killed: list[int] = []

    def kill_when_a_guest_runs() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            if victim.qemu_pids():
                time.sleep(3)
                killed.extend(victim.kill())
            time.sleep(0.5)

    killer = threading.Thread(target=kill_when_a_guest_runs)
    killer.start()
    done = pytest_run([f"--fuselab-hosts={lab_hosts.hosts_toml}", *ITEMS], tmp_path)
    killer.join()
    assert killed, f"no guest ever ran on {victim.name}"
    found = outcomes(tmp_path / "junit.xml")
    assert sorted(found) == sorted(item.split("::")[1] for item in ITEMS), done.stdout[-3000:]
    assert set(found.values()) <= {"passed", "error"}, done.stdout[-3000:]  # never a test failure
    assert f"{victim.name}: 1 worker(s), LOST" in done.stdout, done.stdout[-3000:]
    assert f"re-run after losing {victim.name}" in done.stdout or "lab error" in done.stdout
    assert not victim.qemu_pids()
