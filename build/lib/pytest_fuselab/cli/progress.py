"""Progress of a long run: one live line on a terminal (done/total, the current input and what is
being done, elapsed time, rate, time left), plain lines when the output is a log (CI)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from pytest_fuselab.text import printable

CLEAR = "\r\x1b[K"  # back to the start of the line, and erase it


def duration(seconds: float) -> str:
    """12s, 4m05s, 1h02m."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """`total` images, each `per` verdicts; `status` says what is being done, `verdict` counts one,
    `say` prints a line without tearing the live one."""

    def __init__(self, total: int, per: int = 1, stream: TextIO | None = None, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, tick: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.total, self.per, self.verdicts, self.current = total, max(1, per), 0, ""
        self.clock, self.start = clock, clock()
        self.lock = threading.RLock()
        self.drawn = False
        self.stopped = threading.Event()
        if self.live and tick > 0:
            threading.Thread(target=self._tick, args=(tick,), daemon=True).start()

    @property
    def done(self) -> int:
        return self.verdicts // self.per

    def line(self) -> str:
        """[3/20] f_a/image.gz: 4 drivers · 1m12s · 2.5/min · about 6m left"""
        elapsed = self.clock() - self.start
        parts = [f"[{self.done}/{self.total}] {self.current or 'starting'}", duration(elapsed)]
        if self.done and elapsed > 0:
            rate = self.done / elapsed * 60
            parts.append(f"{rate:.1f} images/min")
            parts.append(f"about {duration((self.total - self.done) / rate * 60)} left")
        return printable(" · ".join(parts), lines=False)

    def _draw(self) -> None:
        if self.live and not self.stopped.is_set():
            self.stream.write(CLEAR + self.line())
            self.stream.flush()
            self.drawn = True

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write(CLEAR)
            self.stream.flush()
            self.drawn = False

    def _tick(self, every: float) -> None:
        while not self.stopped.wait(every):
            with self.lock:
                self._draw()

    def status(self, image: str, what: str) -> None:
        """Now judging `image`: `what` (e.g. "4 drivers", "fuse2fs alone")."""
        with self.lock:
            self.current = f"{image}: {what}"
            if self.live:
                self._draw()
            else:
                print(f"fuselab: {self.line()}", file=self.stream, flush=True)

    def verdict(self) -> None:
        with self.lock:
            self.verdicts += 1
            self._draw()

    def say(self, text: str, stream: TextIO | None = None) -> None:
        """Print `text` (already made printable) as a line of its own, then the live line again."""
        with self.lock:
            self._clear()
            print(text, file=stream or sys.stdout, flush=True)
            self._draw()

    def message(self, text: str) -> None:
        """A lab progress message (Lab's `progress`), on the progress stream."""
        self.say(printable(f"fuselab: {text}", lines=False), self.stream)

    def close(self) -> None:
        with self.lock:
            self._clear()
            self.stopped.set()
