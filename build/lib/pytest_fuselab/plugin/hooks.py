"""The pytest plugin: options with ini twins, fixtures, guest health verdicts, the summary."""

from __future__ import annotations

import json
import shlex
import signal
from typing import Any
from collections.abc import Generator

import pytest

from pytest_fuselab.plugin import report
from pytest_fuselab.errors import SettingError
from pytest_fuselab.plugin.fixtures import (  # noqa: F401  (importing registers them)
    _fuselab_module_guest,
    fuselab_disk,
    fuselab_guest,
    fuselab_guest_pair,
    fuselab_lab,
    fuselab_module_guest,
    fuselab_shared_disk,
)
from pytest_fuselab.plugin.keys import GUESTS_KEY, LAB_KEY, OUTCOME_KEY, SETTINGS_KEY
from pytest_fuselab.vm.machine import tail
from pytest_fuselab.settings import OPTIONS, resolve
from pytest_fuselab.judge.health import check
from pytest_fuselab.text import printable


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fuselab", "pytest-fuselab: real guests for filesystem tests")
    for opt in OPTIONS:
        text = f"{opt.help} (env {opt.env}, ini {opt.ini}; default: {opt.default or 'none'})"
        group.addoption(opt.flag, dest=opt.ini, metavar=opt.metavar, default=None, help=text)
        if opt.name == "suppress":
            parser.addini(opt.ini, text, type="linelist", default=[])
        else:
            parser.addini(opt.ini, text, type="string", default="")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    from pytest_fuselab.hosts import distribute

    distribute.configure(config)  # --fuselab-hosts: xdist workers over SSH (nothing on workers, nothing without)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuselab_guest: the test runs in a real QEMU guest (set automatically)")
    config.addinivalue_line("markers", "fuselab_splat_ok: the test expects kernel splats; they do not fail it")
    cli = {opt.name: config.getoption(opt.ini) for opt in OPTIONS}
    ini = {opt.name: config.getini(opt.ini) for opt in OPTIONS}
    try:
        config.stash[SETTINGS_KEY] = resolve(cli, ini)
    except SettingError as exc:
        raise pytest.UsageError(f"pytest-fuselab: {exc}") from None
    config.pluginmanager.register(Summary(), "fuselab-summary")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)  # so fixtures finalise and guests stop


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[SETTINGS_KEY]
    from pytest_fuselab.cache import cache_dir
    lines = [f"fuselab: {settings.describe()}", f"fuselab: cache {cache_dir()}"]
    changed = [f"{k} from {v}" for k, v in settings.sources.items() if v != "default"]
    if changed:
        lines.append("fuselab: set by " + ", ".join(changed))
    from pytest_fuselab.capabilities import header_lines
    return lines + header_lines(settings)


PAIR_GROUP = "fuselab-guest-pair"  # xdist_group of tests that need two guests at once


@pytest.hookimpl(tryfirst=True)  # before xdist's (on workers) turns xdist_group marks into the nodeid suffix
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if {"fuselab_guest", "fuselab_guest_pair", "fuselab_module_guest"} & fixtures:
            item.add_marker(pytest.mark.fuselab_guest)
        if {"fuselab_guest_pair", "fuselab_shared_disk"} & fixtures and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(PAIR_GROUP))  # --dist loadgroup: one worker runs them in turn


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    rep = yield
    guests = item.stash.get(GUESTS_KEY, [])
    if rep.when == "call" and guests:
        _judge(item, rep, guests)
    if rep.failed:
        item.stash[OUTCOME_KEY] = True
    return rep


def _judge(item: pytest.Item, rep: pytest.TestReport, guests: list[Any]) -> None:
    """Fail a test whose guest splatted, died or went silent, and attach the evidence."""
    settings = item.config.stash[SETTINGS_KEY]
    splat_ok = item.get_closest_marker("fuselab_splat_ok") is not None
    titles: list[str] = []
    for guest in guests:
        health = check(guest, 0, settings.suppress)
        titles += health.titles()
        if health.damaged and not splat_ok and rep.passed:
            rep.outcome = "failed"
            rep.longrepr = f"the test passed, but its guest did not survive it:\n{printable(health.explain())}"
        elif health.damaged and rep.failed:
            rep.sections.append(("fuselab guest health", printable(health.explain())))
        if rep.failed or settings.keep == "all":
            _keep_artifacts(guest, rep)
    lab = item.config.stash.get(LAB_KEY, None)
    accel = f"{lab.accel.accel} ({lab.accel.reason})" if lab is not None else None
    rep.user_properties.append(("fuselab", json.dumps({"splats": titles, "accel": accel})))


def _keep_artifacts(guest: Any, rep: pytest.TestReport) -> None:
    rundir = guest.rundir
    rep.user_properties.append(("fuselab_artifacts", str(rundir)))  # a --fuselab-hosts controller copies it back
    (rundir / "qemu-command.txt").write_text(shlex.join(guest.machine.argv) + "\n")
    if guest.machine.is_running() and not guest.channel.lost:
        try:
            (rundir / "dmesg.txt").write_text(guest.run("dmesg", timeout=15, check=False).stdout)
        except Exception as exc:  # the guest may be beyond answering
            (rundir / "dmesg.txt").write_text(f"dmesg unavailable: {exc}\n")
    if rep.failed:
        rep.sections.append(("fuselab console (last lines)", printable(tail(guest.paths.console, 25))))
        rep.sections.append(("fuselab artifacts", printable(f"console, QEMU command and dmesg kept in {rundir}\n"
                                                            f"QEMU: {shlex.join(guest.machine.argv)}")))


class Summary:
    """Collects guest test outcomes (on the xdist controller too) and prints the table."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.accel: str | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and report.passed:
            return
        if report.when == "teardown" and any(r["nodeid"] == report.nodeid for r in self.results):
            return
        props = dict(report.user_properties)
        if "fuselab" not in props and "fuselab_guest" not in report.keywords:
            return
        extra = json.loads(str(props.get("fuselab", "{}")))
        self.accel = extra.get("accel") or self.accel
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        notes = extra.get("splats", []) + ([str(report.wasxfail)] if hasattr(report, "wasxfail") else [])
        self.results.append({"nodeid": report.nodeid, "outcome": outcome, "when": report.when,
                             "seconds": report.duration, "splats": notes})

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if hasattr(config, "workerinput") or not self.results:
            return
        terminalreporter.write_sep("=", "fuselab summary")
        for line in report.table(self.results, self.accel):
            terminalreporter.write_line(line)
