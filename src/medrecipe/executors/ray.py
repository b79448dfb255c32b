"""The Ray executor: each shard of a stage is a Ray task, on an existing cluster or a local one.

`ray.init(address=...)` connects to a running cluster (`address: auto` or `ray://host:10001`);
without an address a local instance is started with `num_cpus`. A shard task that dies
(its worker process killed, a node lost) is retried by Ray up to `max_retries` times; a
retried shard starts over from its inputs and writes its output shard atomically, so no
row appears twice, and its request cache (one SQLite file per shard) already holds every
answer that arrived before the failure, so only requests in flight are paid again.

Every node needs medrecipe importable and the run directory (and image store) on a shared
file system at the same path; the driver writes the manifest, workers only their shards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from medrecipe.errors import UserError
from medrecipe.executors import ShardFn, ShardJob, ShardOutcome


class RayExecutor:
    """Runs shard functions as Ray tasks and yields outcomes as they finish."""

    name = "ray"
    parallel = True

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = 3, cpus_per_shard: float = 1.0):
        try:
            import ray
        except ImportError:
            raise UserError("executor: ray needs the `ray` package: pip install 'medrecipe[ray]'"
                            ) from None
        self._ray = ray
        self.max_retries = max_retries
        self.cpus_per_shard = cpus_per_shard
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address:
                kwargs["address"] = address
            elif num_cpus:
                kwargs["num_cpus"] = num_cpus
            ray.init(**kwargs)
            self._started = True
        self._remote: dict[Any, Any] = {}

    def map(self, fn: ShardFn, jobs: Sequence[ShardJob]) -> Iterator[ShardOutcome]:
        ray = self._ray
        remote = self._remote.get(fn)
        if remote is None:
            # Retries on worker death only: an exception in the stage is a real error and
            # re-running it would not help.
            remote = ray.remote(num_cpus=self.cpus_per_shard, max_retries=self.max_retries)(fn)
            self._remote[fn] = remote
        refs = [remote.remote(job) for job in jobs]
        try:
            while refs:
                done, refs = ray.wait(refs, num_returns=1)
                yield ray.get(done[0])
        finally:
            for r in refs:
                ray.cancel(r, force=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
