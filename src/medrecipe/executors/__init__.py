"""How a sharded stage's shards run: in this process (default), a process pool, or Ray.

A stage hands the executor one picklable function and one `ShardJob` per shard still to do;
the function reads its input shards from the run directory and writes its output shards
there (atomically), and returns a small `ShardOutcome` (row counts, stats). The executor
only decides where the function runs: every executor runs the same function on the same
shard, so outputs are identical whichever one ran them. Only the driver (the process that
called the stage) writes the manifest, after each shard comes back, so a stage stopped
midway resumes from its last complete shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Executor", "ShardFn", "ShardJob", "ShardOutcome", "make_executor"]


@dataclass
class ShardJob:
    """One shard of one stage: where the run lives and what the stage needs (picklable)."""

    stage: str
    shard: int
    n_shards: int
    run_root: str
    payload: Any = None


@dataclass
class ShardOutcome:
    """What a shard function reports back to the driver."""

    shard: int
    rows: dict[str, int] = field(default_factory=dict)
    complete: bool = True  # False: stopped early (budget, failed requests); redone next run
    stats: dict[str, Any] = field(default_factory=dict)


ShardFn = Callable[[ShardJob], ShardOutcome]


class Executor(Protocol):
    """Runs shard functions and yields their outcomes as they complete."""

    name: str
    parallel: bool  # more than one shard at a time (the budget is then shared out)

    def map(self, fn: ShardFn, jobs: Sequence[ShardJob]) -> Iterator[ShardOutcome]:
        """Run fn on every job; yield outcomes in completion order."""
        ...

    def close(self) -> None:
        """Release workers."""
        ...


def make_executor(config: Any) -> Executor:
    """The executor a recipe's `executor` section asks for."""
    kind = getattr(config, "kind", "local")
    if kind == "ray":
        from medrecipe.executors.ray import RayExecutor

        return RayExecutor(address=config.address, num_cpus=config.num_cpus,
                           max_retries=config.max_retries, cpus_per_shard=config.cpus_per_shard)
    from medrecipe.executors.local import LocalExecutor

    return LocalExecutor(workers=getattr(config, "workers", 1))
