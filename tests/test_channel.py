"""Unit: the host channel against the real agent code, served on a host socket."""

import os
import socket
import threading
import time

import pytest

from pytest_fuselab.guest import agent as guest_agent
from pytest_fuselab.vm.channel import Channel
from pytest_fuselab.errors import GuestError, GuestLost, GuestTimeout
import json
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from pytest_fuselab.vm.channel import MAX_LINE, RECV_SIZE


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


class FakeSocket:
    """A connected socket whose peer sends `stream`'s chunks, then closes; records what it got."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self.chunks = iter(stream)
        self.sent = b""
        self.received = 0
        self.done = threading.Event()

    def recv(self, size: int) -> bytes:
        chunk: bytes = next(self.chunks, b"")
        self.received += len(chunk)
        if not chunk:
            self.done.set()
        return chunk

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


def endless_line(total: int, size: int = RECV_SIZE) -> Iterator[bytes]:
    """Fresh chunks without a newline (each a new object, as recv would return), `total` bytes."""
    for _ in range(total // size):
        yield b"x" * size


def attached(stream: Iterable[bytes], max_line: int = MAX_LINE) -> tuple[Channel, FakeSocket]:
    channel, sock = Channel(Path("/nonexistent/agent.sock"), max_line=max_line), FakeSocket(stream)
    channel.attach(sock)  # type: ignore[arg-type]
    return channel, sock


def wait_lost(channel: Channel, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while channel.lost is None:
        assert time.monotonic() < deadline, "the channel never gave up on the guest"
        time.sleep(0.01)
    return channel.lost


def test_an_endless_line_is_a_lost_guest_with_bounded_memory() -> None:
    tracemalloc.start()
    try:
        channel, sock = attached(endless_line(4 * MAX_LINE))
        why = wait_lost(channel)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "longer than 64 MiB" in why and "lost" in why
    assert sock.received <= MAX_LINE + 2 * RECV_SIZE  # it stopped reading at the limit
    assert peak < MAX_LINE + 8 * RECV_SIZE, f"the host held {peak >> 20} MiB"
    with pytest.raises(GuestLost, match="longer than 64 MiB"):
        channel.request("ping", wait=1)


def test_a_waiting_request_learns_of_the_overflow() -> None:
    gate = threading.Event()

    def stream() -> Iterator[bytes]:
        gate.wait(5)
        yield from endless_line(64 * 4096, 4096)

    channel, _ = attached(stream(), max_line=16 * 4096)
    result: list[BaseException] = []

    def ask() -> None:
        try:
            channel.request("ping", wait=10)
        except BaseException as exc:
            result.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.1)
    gate.set()
    asker.join(10)
    assert len(result) == 1 and isinstance(result[0], GuestLost)
    assert "longer than 65536 bytes" in str(result[0])


def test_a_line_at_the_limit_is_still_read() -> None:
    channel = Channel(Path("/nonexistent/agent.sock"), max_line=1 << 16)
    rid = f"{channel._prefix}-1"
    reply = json.dumps({"id": rid, "ok": True, "data": ""}).encode()
    line = reply[:-1] + b" " * ((1 << 16) - len(reply)) + b"}"
    assert len(line) == 1 << 16
    pieces = [line[i:i + 1000] for i in range(0, len(line), 1000)] + [b"\n"]

    def stream() -> Iterator[bytes]:
        time.sleep(0.2)  # after the request is registered
        yield from pieces

    sock = FakeSocket(stream())
    channel.attach(sock)  # type: ignore[arg-type]
    assert channel.request("ping", wait=5)["ok"] is True


def test_many_empty_and_garbage_lines_take_linear_time() -> None:
    chunks = [b"\n" * RECV_SIZE] * 16 + [b"[1]\n" * (RECV_SIZE // 4)] + [b"[" * 100_000 + b"\n"]
    start = time.monotonic()
    channel, sock = attached(chunks)
    assert sock.done.wait(10)
    why = wait_lost(channel)
    assert "closed" in why  # garbage was dropped, the reader survived to the end of the stream
    assert time.monotonic() - start < 5
