"""Many images judged by several guests side by side (containment.ImageRunner each), verdicts said as they come."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path

from pytest_fuselab.judge.containment import ImageRunner, Watch, with_next
from pytest_fuselab.judge.verdict import Verdict, item_names
from pytest_fuselab.lab import Lab
from pytest_fuselab.reproducers import Extracted


def judge_images(lab: Lab, workdir: Path, items: list[Extracted], drivers: list[str], guests: int = 1,
                 said: Callable[[Verdict], None] | None = None, budget: float | None = None,
                 watch: Watch | None = None) -> list[Verdict]:
    """Every item through `drivers`, spread over `guests` guests running side by side; each image's
    verdicts go to `said` as they come (one thread at a time), and all are returned in the order of `items`."""
    runners = [ImageRunner(lab, workdir / f"runner{i}", budget=budget, watch=watch) for i in range(guests)]
    shares = [list(range(len(items)))[i::guests] for i in range(guests)]
    names, results, lock = item_names(items), dict[int, list[Verdict]](), threading.Lock()

    def work(runner: ImageRunner, share: list[int]) -> None:
        try:
            for i, after in with_next(share):
                verdicts = runner.judge_item(items[i], drivers, None if after is None else items[after],
                                             names[id(items[i])])
                with lock:
                    if runner.stopped:
                        return
                    results[i] = verdicts
                    for v in verdicts if said else []:
                        said(v)  # type: ignore[misc]
        finally:
            runner.close()

    pool = concurrent.futures.ThreadPoolExecutor(guests)
    try:
        for future in [pool.submit(work, r, share) for r, share in zip(runners, shares, strict=True)]:
            future.result()
    except BaseException:  # interrupted, or one runner failed: stop the others before waiting for them
        with lock:
            for runner in runners:
                runner.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [v for i in range(len(items)) for v in results[i]]
