"""Unit: the host channel against the real agent code, served on a host socket."""

import os
import socket
import threading
import time

import pytest

from pytest_fuselab.guest import agent as guest_agent
from pytest_fuselab.vm.channel import Channel
from pytest_fuselab.errors import GuestError, GuestLost, GuestTimeout


def serve(path, handler):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def accept():
        conn, _ = server.accept()
        handler(conn)

    threading.Thread(target=accept, daemon=True).start()
    return server


@pytest.fixture
def agent(tmp_path, monkeypatch):
    """A Channel connected to the real agent loop running in a thread on the host."""
    monkeypatch.setattr(guest_agent, "WORK_DIR", str(tmp_path))
    conns = []

    def run_agent(conn):
        conns.append(conn)
        guest_agent.Agent(conn.fileno()).serve()

    serve(tmp_path / "agent.sock", run_agent)
    channel = Channel(tmp_path / "agent.sock")
    channel.connect(timeout=5)
    yield channel
    channel.close()


def test_run_returns_status_and_output(agent):
    reply = agent.request("run", wait=10, sh="echo out; echo err >&2; exit 3", timeout=5)
    assert reply["status"] == 3
    assert reply["timed_out"] is False


def test_command_timeout_kills_the_process_group(agent):
    start = time.monotonic()
    reply = agent.request("run", wait=10, sh="sleep 30 & sleep 30", timeout=0.5)
    assert reply["timed_out"] is True
    assert time.monotonic() - start < 5


def test_a_daemon_keeping_stdout_open_does_not_block(agent):
    start = time.monotonic()
    reply = agent.request("run", wait=10, sh="(sleep 5 &) ; echo started", timeout=4)
    assert reply["status"] == 0 and not reply["timed_out"]
    assert time.monotonic() - start < 3


def test_requests_overlap(agent):
    results = {}

    def slow():
        results["slow"] = agent.request("run", wait=10, sh="sleep 1; echo slow", timeout=5)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.1)
    start = time.monotonic()
    agent.request("run", wait=10, sh="echo fast", timeout=5)
    assert time.monotonic() - start < 0.9
    t.join()
    assert results["slow"]["status"] == 0


def test_put_and_get_round_trip(agent, tmp_path):
    import base64
    data = os.urandom(100_000)
    agent.request("put", wait=10, path=str(tmp_path / "f"), data=base64.b64encode(data).decode(), mode=0o600)
    assert (tmp_path / "f").read_bytes() == data
    assert oct((tmp_path / "f").stat().st_mode & 0o777) == "0o600"
    got = agent.request("get", wait=10, path=str(tmp_path / "f"))
    assert base64.b64decode(got["data"]) == data


def test_agent_errors_come_back_as_guest_errors(agent, tmp_path):
    with pytest.raises(GuestError, match="FileNotFoundError"):
        agent.request("get", wait=10, path=str(tmp_path / "nope"))


def test_stale_replies_are_dropped_and_silence_times_out(tmp_path):
    def stale_then_silent(conn):
        conn.sendall(b'{"id": "old-1", "ok": true}\nnot json\n')
        time.sleep(5)

    serve(tmp_path / "s.sock", stale_then_silent)
    channel = Channel(tmp_path / "s.sock")
    channel.connect(timeout=5)
    with pytest.raises(GuestTimeout, match="within 0 s"):
        channel.request("ping", wait=0.3)


def test_closed_channel_is_a_lost_guest(tmp_path):
    serve(tmp_path / "c.sock", lambda conn: conn.close())
    channel = Channel(tmp_path / "c.sock")
    channel.connect(timeout=5)
    with pytest.raises(GuestLost, match="closed"):
        channel.request("ping", wait=5)


def test_the_agent_reports_tasks_stuck_in_d_state(agent, monkeypatch):
    """The host's health check asks the agent (guest/tasks.py in-process): no process started for it."""
    from pytest_fuselab.guest.protocol import HealthFacts

    monkeypatch.setattr(guest_agent.tasks, "d_state_tasks", lambda: {"cat[7]"})
    reply = agent.request("tasks", wait=10, grace=0.2)
    assert HealthFacts.from_json({k: v for k, v in reply.items() if k not in ("id", "ok")}).stuck == ["cat[7]"]
