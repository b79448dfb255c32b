"""The local executor: shards one after another in this process, or in a process pool."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from medrecipe.executors import ShardFn, ShardJob, ShardOutcome


class LocalExecutor:
    """`workers=1`: in-process, in shard order. More: a pool of fresh (spawned) processes."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))
        self.parallel = self.workers > 1
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: ShardFn, jobs: Sequence[ShardJob]) -> Iterator[ShardOutcome]:
        if not self.parallel or len(jobs) <= 1:
            for job in jobs:
                yield fn(job)
            return
        if self._pool is None:
            # Spawned, not forked: the driver holds event loops, SQLite handles and locks.
            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        pending = {self._pool.submit(fn, job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            for f in pending:
                f.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
