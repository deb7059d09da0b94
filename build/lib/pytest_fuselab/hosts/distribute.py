"""`--fuselab-hosts`: pytest-xdist workers over SSH on every host, one per guest slot (the controller's side).

xdist does the scheduling (`--dist loadgroup`) and the transport (execnet gateways, `--tx ssh=...`, its rsync of
the test tree); this module only chooses the workers, and turns what xdist reports about lost workers into the
lab's words: an item in flight on a lost host is run once more elsewhere, else it is a lab error, never a failure.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_fuselab.errors import SettingError
from pytest_fuselab.hosts import artifacts, config as hosts_config, ssh
from pytest_fuselab.hosts.ssh import Reach
from pytest_fuselab.settings import resolve

RSYNC_IGNORES = ["fuselab-results", "__pycache__", "*.egg-info", "*.qcow2", "*.raw", "build", "dist"]
LAB_ERROR = "fuselab lab error (not a test failure): "


def spec(reach: Reach, ssh_config: Path) -> str:
    """The execnet gateway of one worker on this host: its Python, directory and environment."""
    host = reach.host
    env = {**host.env(), "FUSELAB_HOST": host.name}
    parts = [f"ssh={host.ssh}", f"ssh_config={ssh_config}", f"python={host.venv_python}", f"chdir={host.workdir}/run"]
    return "//".join(parts + [f"env:{k}={v}" for k, v in env.items()])


def usable(reaches: list[Reach]) -> tuple[list[Reach], list[tuple[str, str]]]:
    """The hosts a run can use, and (host, why) for the others."""
    live, skipped = [], []
    for reach in reaches:
        if reach.problem:
            skipped.append((reach.host.name, f"unreachable: {reach.problem}"))
        elif not reach.ready:
            skipped.append((reach.host.name, "not set up: run `fuselab hosts setup HOSTS_TOML`"))
        else:
            live.append(reach)
    return live, skipped


def _worker_args(config: pytest.Config) -> tuple[str, ...]:
    """The invocation's arguments as xdist passes them to workers: paths absolute (it re-roots them), loadgroup."""
    root, args = config.rootpath, []
    for arg in config.invocation_params.args:
        path = Path(str(arg).split("::")[0])
        try:
            exists = not str(arg).startswith("-") and path.exists()
        except OSError:
            exists = False
        if exists and not path.is_absolute() and (config.invocation_params.dir / path).resolve().is_relative_to(root):
            arg = str((config.invocation_params.dir / path).resolve()) + str(arg)[len(str(path)):]
        args.append(str(arg))
    return (*args, "--dist=loadgroup")


def configure(config: pytest.Config) -> None:
    """On the controller of a run with --fuselab-hosts: probe the hosts, give xdist the workers and register HostsRun."""
    if hasattr(config, "workerinput"):
        return
    try:
        chosen = resolve({"hosts": config.getoption("fuselab_hosts")}, {"hosts": config.getini("fuselab_hosts")},
                         only={"hosts"}).hosts
        if chosen is None:
            return
        hosts = hosts_config.load(chosen)
    except SettingError as exc:
        raise pytest.UsageError(f"pytest-fuselab: {exc}") from None
    if config.option.numprocesses or config.option.tx:
        raise pytest.UsageError("pytest-fuselab: --fuselab-hosts chooses the xdist workers itself: drop -n/--tx")
    live, skipped = usable(ssh.probe_all(hosts))
    for name, why in skipped:
        print(f"fuselab: host {name} skipped: {why}", file=sys.stderr, flush=True)
    if not live:
        raise pytest.UsageError(f"pytest-fuselab: no usable host in {hosts.path}: "
                                + "; ".join(f"{n}: {w}" for n, w in skipped))
    cfg = ssh.ssh_config(hosts)
    config.option.tx = [spec(r, cfg) for r in live for _ in range(r.guests)]
    config.option.dist = "loadgroup"
    config.option.rsyncdir = [*config.option.rsyncdir, str(config.rootpath)]  # xdist sends the test tree
    warnings = config.known_args_namespace.pythonwarnings or []
    config.known_args_namespace.pythonwarnings = [*warnings, "ignore:The --rsyncdir:DeprecationWarning"]
    config.option.rsyncignore = [*config.option.rsyncignore, *RSYNC_IGNORES]
    config.invocation_params = dataclasses.replace(config.invocation_params, args=_worker_args(config))
    xml = getattr(config.option, "xmlpath", None)
    results = Path(xml).parent if xml else config.invocation_params.dir / "fuselab-results"
    config.pluginmanager.register(HostsRun(hosts, live, skipped, results), "fuselab-hosts")


def host_of(node: Any) -> str:
    """The hosts.toml name of an xdist worker's host."""
    env = getattr(getattr(getattr(node, "gateway", None), "spec", None), "env", {}) or {}
    return str(env.get("FUSELAB_HOST", "?"))


class HostsRun:
    """The controller's plugin: lost hosts, re-runs, lab errors, every item accounted for, artifacts copied back."""

    def __init__(self, hosts: hosts_config.HostsFile, live: list[Reach], skipped: list[tuple[str, str]],
                 results: Path) -> None:
        self.hosts, self.skipped = hosts, skipped
        self.reaches = {r.host.name: r for r in live}
        self.lost: dict[str, str] = {}  # host -> why
        self.rerun: dict[str, str] = {}  # nodeid -> host it was lost on
        self.reported: set[str] = set()
        self.lab_errors: list[str] = []
        self.copier = artifacts.Copier(hosts, {r.host.name: r.host for r in live}, results)
        self.session: Any = None
        self.config: pytest.Config | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.config = session.config
        self.session = session.config.pluginmanager.get_plugin("dsession")
        if self.session is not None:
            clone = self.session._clone_node  # xdist replaces a crashed worker on the same spec

            def replace_unless_lost(node: Any) -> Any:
                try:
                    return clone(node)
                except Exception as exc:  # execnet.HostNotFound, EOFError, OSError: the host is gone
                    self.lost.setdefault(host_of(node), f"could not start a new worker there: {exc}")
                    return None

            self.session._clone_node = replace_unless_lost

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        if error and error != "keyboard-interrupt":
            self.lost.setdefault(host_of(node), str(error))

    @pytest.hookimpl(tryfirst=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> bool:
        host = host_of(getattr(report, "node", None))
        live = [n for n in getattr(sched, "nodes", []) if not n.shutting_down]
        if crashitem not in self.rerun and live:
            self.rerun[crashitem] = host
            report.outcome = "rerun"  # type: ignore[assignment]
            report.longrepr = f"fuselab: host {host} was lost while running this test; running it again elsewhere"
            return True
        why = (f"lost twice (on {self.rerun[crashitem]}, then on {host})" if crashitem in self.rerun
               else f"host {host} was lost while running it and no other host was left")
        report.when = "setup"  # pytest counts a failed setup as an error
        report.longrepr = LAB_ERROR + why
        self.lab_errors.append(crashitem)
        _drop_pending(sched, crashitem, everything=not live)
        return True

    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
        if _is_rerun(report):
            return "rerun", "R", ("RERUN", {"yellow": True})
        return None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        if not _is_rerun(report):
            self.reported.add(report.nodeid)
            self.copier.note(report, host_of(getattr(report, "node", None)))
        result = yield
        if _is_rerun(report) and self.config is not None:
            artifacts.forget_junit_case(self.config, report)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        sched = getattr(self.session, "sched", None)
        collection = getattr(sched, "collection", None) or []
        for nodeid in collection:
            if nodeid not in self.reported:
                rep = _lab_error(nodeid, "not run: the hosts that could run it were lost ("
                                 + "; ".join(f"{h}: {w}" for h, w in self.lost.items()) + ")")
                self.lab_errors.append(nodeid)
                session.config.hook.pytest_runtest_logreport(report=rep)
        if self.lab_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.copier.wait()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.write_sep("=", "fuselab hosts")
        for name, reach in self.reaches.items():
            state = f"LOST: {_short(self.lost[name])}" if name in self.lost else "ok"
            tr.write_line(f"{name}: {reach.guests} worker(s), {state}")
        for name, why in self.skipped:
            tr.write_line(f"{name}: skipped at the start: {why}")
        for nodeid, host in self.rerun.items():
            tr.write_line(f"re-run after losing {host}: {nodeid}")
        for nodeid in self.lab_errors:
            tr.write_line(f"lab error: {nodeid}")
        for line in self.copier.summary():
            tr.write_line(line)


def _is_rerun(report: pytest.TestReport) -> bool:
    return str(report.outcome) == "rerun"


def _short(text: str) -> str:
    return re.sub(r"\s+", " ", text)[:160]


def _lab_error(nodeid: str, why: str) -> pytest.TestReport:
    fspath = nodeid.split("::")[0]
    return pytest.TestReport(nodeid=nodeid, location=(fspath, None, fspath), keywords={}, outcome="failed",
                             longrepr=LAB_ERROR + why, when="setup")


def _drop_pending(sched: Any, nodeid: str, everything: bool) -> None:
    """Take `nodeid` (or, with no worker left to take them, everything) out of xdist's queue of work."""
    queue = getattr(sched, "workqueue", None)
    if queue is None:
        return
    for scope in list(queue):
        queue[scope].pop(nodeid, None)
        if everything or not queue[scope]:
            del queue[scope]
