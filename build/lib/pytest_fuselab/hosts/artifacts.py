"""A failed test's guest artifacts (console, QEMU command, dmesg) copied from its host to the controller's results."""

from __future__ import annotations

import re
import shlex
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pytest_fuselab.hosts import ssh
from pytest_fuselab.hosts.config import Host, HostsFile

PROPERTY = "fuselab_artifacts"  # set by the worker: a guest's run directory on its host
COPIED = "fuselab_artifacts_copy"  # set by the controller: where it copies them


def copy_dir(hosts: HostsFile, host: Host, remote: str, local: Path, timeout: float = 120) -> str | None:
    """Copy a directory from `host` (ssh + tar); None, or why it failed."""
    local.mkdir(parents=True, exist_ok=True)
    argv = ["ssh", "-F", str(ssh.ssh_config(hosts)), host.ssh, f"tar -C {shlex.quote(remote)} -cf - ."]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as sender:
        untar = subprocess.run(["tar", "-C", str(local), "-xf", "-"], stdin=sender.stdout, capture_output=True,
                               timeout=timeout)
        error = sender.stderr.read().decode(errors="replace") if sender.stderr else ""
        sender.wait(timeout=timeout)
    if sender.returncode != 0 or untar.returncode != 0:
        return (error or untar.stderr.decode(errors="replace")).strip()[-300:] or "tar failed"
    return None


class Copier:
    """Notes failed tests' artifact directories from their reports and copies them once the test is torn down."""

    def __init__(self, hosts: HostsFile, hosts_by_name: dict[str, Host], results: Path) -> None:
        self.hosts, self.by_name, self.results = hosts, hosts_by_name, results
        self.pending: dict[str, list[tuple[str, str, Path]]] = {}
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.done: list[tuple[str, Path, Future[str | None]]] = []

    def note(self, report: pytest.TestReport, host: str) -> None:
        """Called for every report: a failed call names where its artifacts will be; its teardown copies them."""
        if report.failed and report.when == "call" and host in self.by_name:
            remote = [str(v) for k, v in report.user_properties if k == PROPERTY]
            if remote:
                self._plan(report, host, remote)
        elif report.when == "teardown" and report.nodeid in self.pending:
            for name, remote_dir, local in self.pending.pop(report.nodeid):
                future = self.pool.submit(copy_dir, self.hosts, self.by_name[name], remote_dir, local)
                self.done.append((report.nodeid, local, future))

    def _plan(self, report: pytest.TestReport, host: str, remote: list[str]) -> None:
        planned = []
        for remote_dir in remote:
            local = self.results / "artifacts" / host / re.sub(r"[^\w.-]+", "_", Path(remote_dir).name)
            planned.append((host, remote_dir, local))
            report.user_properties.append((COPIED, str(local)))
        self.pending[report.nodeid] = planned
        report.sections.append(("fuselab artifacts (controller)", "\n".join(
            f"copied from {h}:{r} to {loc}" for h, r, loc in planned)))

    def wait(self) -> None:
        """Wait for the copies still running (at the end of the session)."""
        self.pool.shutdown(wait=True)

    def summary(self) -> list[str]:
        lines = []
        for nodeid, local, future in self.done:
            problem = future.result() if future.done() else "not finished"
            lines.append(f"artifacts of {nodeid}: " + (str(local) if problem is None else f"NOT COPIED: {problem}"))
        return lines


def forget_junit_case(config: pytest.Config, report: pytest.TestReport) -> None:
    """Drop the empty <testcase> junitxml opened for a report it has no result for (xdist's report of a lost worker,
    re-run elsewhere): the item's one testcase is its re-run's."""
    from _pytest.junitxml import xml_key

    xml: Any = config.stash.get(xml_key, None)
    if xml is None:
        return
    opened = xml.node_reporter(report)  # the one it opened for this report (found by its own key)
    if opened.nodes:
        return  # it holds a result after all: keep it
    for key, reporter in list(xml.node_reporters.items()):
        if reporter is opened:
            del xml.node_reporters[key]
    if opened in xml.node_reporters_ordered:
        xml.node_reporters_ordered.remove(opened)
