"""Splits by article: train, GRPO hold-out and benchmark, with no article in two splits.

Sub-figures of one figure, and figures of one article, share findings and wording, so a
split by item would leak the benchmark into training. Every traced item is keyed by its
article (`meta.article_id`; an item whose record has none is its own article, keyed by
its record id), and whole articles are assigned:

1. Articles are ordered by ``sha256(seed, article id)``.
2. The benchmark, then the GRPO hold-out, is filled first-fit in that order: an article
   goes to the first of them whose remaining room (in items) it fits; a target is a number
   of items or a share of all traced items (rounded).
3. Every other article is training data.

A split therefore never exceeds its target, and reaches it exactly unless the remaining
articles are all too large (the report shows the sizes reached). The assignment depends on
the seed and on which articles exist, not on row order.

The benchmark split is also written as a self-contained items file (`write_benchmark`):
`<folder>/<name>.jsonl` in the generic adapter's Item fields with images copied next to it,
so an OctoMed recipe can name it as a `role: benchmark` source (its prepare stage then
decontaminates questions and drops byte-identical images against it) and an evaluation
recipe can score traces on it (`meta.reference_trace`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medrecipe.images import ImageStore
from medrecipe.schema import Item

SPLITS: tuple[str, ...] = ("train", "grpo", "benchmark")
HELD_OUT: tuple[str, ...] = ("benchmark", "grpo")  # filled in this order


def article_of(item: Item) -> str:
    """The article an item comes from (its record id when the record names no article)."""
    meta = item.meta or {}
    if meta.get("article_id"):
        return str(meta["article_id"])
    return f"record:{meta.get('record_id') or item.id}"


def target_items(share: int | float, total: int) -> int:
    """Items a split should hold: a count as given (at most `total`), or a share of `total`."""
    if isinstance(share, int):
        return min(share, total)
    return min(total, int(round(share * total)))


def _order(seed: int, article: str) -> tuple[int, str]:
    digest = hashlib.sha256(f"{seed}\x1farticle:{article}".encode()).digest()
    return int.from_bytes(digest[:8], "big"), article


def assign_articles(sizes: Mapping[str, int], targets: Mapping[str, int], seed: int = 0
                    ) -> dict[str, str]:
    """Split of every article: first-fit into the held-out splits in seeded order."""
    room = {s: int(targets.get(s, 0)) for s in HELD_OUT}
    out: dict[str, str] = {}
    for article in sorted(sizes, key=lambda a: _order(seed, a)):
        n = sizes[article]
        out[article] = next((s for s in HELD_OUT if 0 < n <= room[s]), "train")
        if out[article] != "train":
            room[out[article]] -= n
    return out


def split_items(items: Iterable[Item], benchmark: int | float, grpo: int | float, seed: int = 0
                ) -> tuple[dict[str, list[Item]], dict[str, str], dict[str, int]]:
    """Items per split, the split of each article and the target sizes used."""
    items = list(items)
    sizes = Counter(article_of(it) for it in items)
    targets = {"benchmark": target_items(benchmark, len(items)),
               "grpo": target_items(grpo, len(items))}
    # The GRPO target is what is left after the benchmark, never more.
    targets["grpo"] = min(targets["grpo"], len(items) - targets["benchmark"])
    by_article = assign_articles(sizes, targets, seed)
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for it in items:
        split = by_article[article_of(it)]
        out[split].append(it.model_copy(update={"split": split}))
    return out, by_article, targets


def articles_in_two_splits(split_of_item: Mapping[str, str], article_of_item: Mapping[str, str]
                           ) -> dict[str, set[str]]:
    """Articles whose items landed in more than one split (empty when the split is clean)."""
    seen: dict[str, set[str]] = {}
    for item_id, split in split_of_item.items():
        seen.setdefault(article_of_item[item_id], set()).add(split)
    return {a: s for a, s in seen.items() if len(s) > 1}


# --------------------------------------------------------------------------- benchmark file


def benchmark_row(item: Item, image_files: list[str]) -> dict[str, Any]:
    """One line of the benchmark items file (generic adapter field names)."""
    return {"id": item.id, "task": item.task, "split": "test", "question": item.question,
            "options": list(item.options), "answer": item.answer, "images": image_files,
            "modality": item.modality, "anatomy": item.anatomy,
            "meta": {**(item.meta or {}), "curated_item_id": item.id}}


def write_benchmark(items: Iterable[Item], images: ImageStore, folder: str | Path, name: str
                    ) -> Path:
    """Write <folder>/<name>.jsonl with its images under <folder>/images/; returns the file.

    The folder is staged beside itself and swapped in whole, so a reader never sees half a
    benchmark.
    """
    out = Path(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "images").mkdir(parents=True)
    try:
        with open(stage / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for it in items:
                files = []
                for ref in it.images:
                    src = images.path(ref)
                    dest = f"images/{src.name}"
                    if not (stage / dest).exists():
                        shutil.copyfile(src, stage / dest)
                    files.append(dest)
                f.write(json.dumps(benchmark_row(it, files), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out / f"{name}.jsonl"
