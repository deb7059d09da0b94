"""Unit: the host channel does not trust the guest: bounded lines, bounded memory, linear time."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from pytest_fuselab.errors import GuestLost
from pytest_fuselab.vm.channel import MAX_LINE, RECV_SIZE, Channel


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
