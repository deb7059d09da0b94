"""Many images judged by several guests side by side (containment.ImageRunner each), verdicts said as they come."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from pytest_fuselab.judge.containment import ImageRunner, Watch
from pytest_fuselab.judge.verdict import Key, Verdict, item_names, name_of
from pytest_fuselab.lab import Lab
from pytest_fuselab.reproducers import Extracted


def judge_images(lab: Lab, workdir: Path, items: Iterable[Extracted], drivers: list[str], guests: int = 1,
                 said: Callable[[Verdict], None] | None = None, budget: float | None = None,
                 watch: Watch | None = None, names: dict[Key, str] | None = None) -> list[Verdict]:
    """Every item through `drivers`, spread over `guests` guests running side by side, each taking
    the next item when it is free (so `items` may be lazy: each guest holds its image and the next,
    plugged ahead); each image's verdicts go to `said` as they come (one thread at a time), and all
    are returned in the order of `items`.  `names`: verdict.item_names (made here for a list)."""
    if names is None and isinstance(items, list):
        names = item_names(items)
    runners = [ImageRunner(lab, workdir / f"runner{i}", budget=budget, watch=watch) for i in range(guests)]
    source, taking = enumerate(items), threading.Lock()
    results, lock = dict[int, list[Verdict]](), threading.Lock()

    def take() -> tuple[int, Extracted] | None:
        with taking:  # one thread reads (extracts) the inputs at a time
            return next(source, None)

    def work(runner: ImageRunner, current: tuple[int, Extracted] | None) -> None:
        try:
            while current is not None and not runner.stopped:
                after = take()
                i, item = current
                verdicts = runner.judge_item(item, drivers, None if after is None else after[1], name_of(names, item))
                with lock:
                    if runner.stopped:
                        return
                    results[i] = verdicts
                    for v in verdicts if said else []:
                        said(v)  # type: ignore[misc]
                current = after
        finally:
            runner.close()

    firsts = [take() for _ in runners]  # one image each before any guest takes a second one ahead
    pool = concurrent.futures.ThreadPoolExecutor(guests)
    try:
        for future in [pool.submit(work, r, first) for r, first in zip(runners, firsts, strict=True)]:
            future.result()
    except BaseException:  # interrupted, or one runner failed: stop the others before waiting for them
        with lock:
            for runner in runners:
                runner.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [v for i in sorted(results) for v in results[i]]
