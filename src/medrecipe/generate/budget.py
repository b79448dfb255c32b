"""A spending cap shared by several engine runs (the shards of a stage, the steps of a recipe)."""

from __future__ import annotations


class Budget:
    """What is left of a cap after the runs so far; None everywhere means no cap.

    Runs in one process share the object, so each may spend what the earlier ones left.
    Shards that run in parallel each get a pickled copy, so with `parallel_shards` every
    copy offers an equal share of the cap instead, which keeps the total under it without a
    shared counter.
    """

    def __init__(self, total: float | None = None, parallel_shards: int = 0):
        self.total = total
        self.left = total
        self.share = total / parallel_shards if total is not None and parallel_shards else None

    def remaining(self) -> float | None:
        """The cap for the next run."""
        if self.total is None:
            return None
        return self.share if self.share is not None else max(0.0, self.left or 0.0)

    def spent(self, usd: float) -> None:
        """Record what a run spent."""
        if self.left is not None:
            self.left -= usd
