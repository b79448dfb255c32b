"""Class balancing of classification sources by stratified sampling (deterministic per seed)."""

from __future__ import annotations

import hashlib
from collections import defaultdict

import pyarrow as pa

from medrecipe.config import BalanceConfig


def _order_key(seed: int, item_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{item_id}".encode()).digest()


def balance(items: pa.Table, config: BalanceConfig) -> tuple[pa.Table, dict[str, dict]]:
    """Down-sample each balanced source to `per_class` rows per class (or to its rarest class).

    The class of a row is its answer (a letter: options of a classification source are the
    classes in a fixed order). Rows are chosen by a hash of (seed, item id), so the same seed
    keeps the same rows whatever the input order. Returns the kept table and, per source,
    {"before": {class: n}, "after": {class: n}}.
    """
    if not config.enabled or items.num_rows == 0:
        return items, {}
    ids = items.column("id").to_pylist()
    sources = items.column("source").to_pylist()
    tasks = items.column("task").to_pylist()
    answers = items.column("answer").to_pylist()
    chosen_sources = set(config.sources) if config.sources is not None else {
        s for s, t in zip(sources, tasks, strict=True) if t == "mm_classification"}
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (s, a) in enumerate(zip(sources, answers, strict=True)):
        if s in chosen_sources:
            groups[s][a].append(i)
    keep = [True] * items.num_rows
    report: dict[str, dict] = {}
    for src, classes in groups.items():
        target = min(len(v) for v in classes.values()) if config.per_class == "equal" \
            else int(config.per_class)
        after = {}
        for cls, rows in classes.items():
            rows.sort(key=lambda i: _order_key(config.seed, ids[i]))
            for i in rows[target:]:
                keep[i] = False
            after[cls] = min(len(rows), target)
        report[src] = {"before": {c: len(r) for c, r in sorted(classes.items())},
                       "after": dict(sorted(after.items())), "per_class": target}
    return items.filter(pa.array(keep)), report
