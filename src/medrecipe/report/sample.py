"""Bounded, deterministic samples of rows for the report's example cards.

A row's place is the SHA-256 of its key, so the sample is the same however the table is
split into shards and batches, and the same as sorting every row by that hash and taking
the first ones: `TopK` keeps, per group, the k rows with the lowest hashes (ties in the
order rows were offered), never more. `round_robin` then spreads the cards over groups.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from typing import Any


def order_key(value: str) -> bytes:
    """Where a key sorts in a sample (its SHA-256; same order as the hex digest)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class TopK:
    """Per group, the k rows whose keys hash lowest; memory is k rows per group."""

    def __init__(self, k: int):
        self.k = max(0, k)
        self._groups: dict[str, list[tuple[bytes, int, Any]]] = {}
        self._seen = 0

    def offer(self, groups: Sequence[str], keys: Sequence[str],
              row: Callable[[int], Any]) -> None:
        """Consider rows i = 0.. with their group and key; `row(i)` builds a kept row."""
        if self.k == 0:
            self._seen += len(keys)
            return
        for i, (g, key) in enumerate(zip(groups, keys, strict=True)):
            entry = (order_key(key), self._seen + i)
            kept = self._groups.setdefault(g, [])
            if len(kept) == self.k and entry >= kept[-1][:2]:
                continue
            bisect.insort(kept, (*entry, row(i)), key=lambda e: e[:2])
            if len(kept) > self.k:
                kept.pop()
        self._seen += len(keys)

    def groups(self) -> dict[str, list[Any]]:
        """{group: kept rows in hash order}."""
        return {g: [e[2] for e in kept] for g, kept in self._groups.items()}


def round_robin(groups: dict[str, list[Any]], n: int) -> list[Any]:
    """Up to n rows taking one from each group in turn (groups in sorted order)."""
    out: list[Any] = []
    queues = {k: list(v) for k, v in sorted(groups.items())}
    while len(out) < n and any(queues.values()):
        for k in queues:
            if queues[k] and len(out) < n:
                out.append(queues[k].pop(0))
    return out
