"""The prepare stage: collapse duplicates, decontaminate, drop benchmark images, balance, resize.

    result = prepare(train_items, bench_items, recipe.prepare, image_store)

Input and output tables are ITEM_SCHEMA. Removed rows become quarantine rows with the
reason and the benchmark named; `flags` has one row per input training item and a boolean
column per benchmark and check (`ngram:<bench>`, `image:<bench>`, `near_image:<bench>`), so
a user can see what matched even where nothing was removed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from medrecipe.config import PrepareConfig
from medrecipe.images import ImageStore
from medrecipe.prepare.balance import balance
from medrecipe.prepare.decontaminate import find_overlaps, normalize_text
from medrecipe.prepare.dedup import exact_matches, near_matches
from medrecipe.prepare.resize import resize_all
from medrecipe.schema import QuarantineRow, raw_json


@dataclass
class PrepareResult:
    """Kept items, per-item flags, quarantined rows and counts removed per source and reason."""

    items: pa.Table
    flags: pa.Table
    quarantine: list[QuarantineRow] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def question_views(table: pa.Table) -> list[list[str]]:
    """Per row: the question stem, and the stem followed by its options."""
    qs = table.column("question").to_pylist()
    opts = table.column("options").to_pylist()
    return [[q, q + "\n" + "\n".join(o)] if o else [q] for q, o in zip(qs, opts, strict=True)]


def _by_source(table: pa.Table) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(table.column("source").to_pylist()):
        out[s].append(i)
    return out


def prepare(train: pa.Table, bench: pa.Table, config: PrepareConfig,
            store: ImageStore) -> PrepareResult:
    """Run the enabled preparation steps over training items (see module docstring)."""
    n = train.num_rows
    ids = train.column("id").to_pylist()
    sources = train.column("source").to_pylist()
    images = train.column("images").to_pylist()
    removed: dict[int, tuple[str, str]] = {}  # row -> (reason, detail); first reason wins
    flag_cols: dict[str, np.ndarray] = {}
    details: dict[str, Any] = {}

    def remove(row: int, reason: str, detail: str) -> None:
        removed.setdefault(row, (reason, detail))

    # 1. Exact duplicates of a normalised question (same options and images) collapse to one.
    dc = config.decontaminate
    if dc.collapse_duplicates and n:
        first: dict[str, int] = {}
        views = question_views(train)
        for i in range(n):
            key = json.dumps([normalize_text(views[i][-1]), sorted(images[i])])
            if key in first:
                remove(i, "duplicate_question", f"same question as {ids[first[key]]}")
            else:
                first[key] = i

    # 2. n-gram decontamination against the named benchmarks.
    bench_sources = bench.column("source").to_pylist() if bench.num_rows else []
    if dc.enabled and dc.against and n:
        bench_views = question_views(bench)
        per_bench = {b: [bench_views[j] for j, s in enumerate(bench_sources) if s == b]
                     for b in dc.against}
        ov = find_overlaps(question_views(train), per_bench, n=dc.n)
        for j, b in enumerate(ov.benchmarks):
            flag_cols[f"ngram:{b}"] = ov.matches[:, j]
        for i in np.flatnonzero(ov.flags):
            names = ov.benchmarks_of(int(i))
            remove(int(i), f"contaminated:{names[0]}",
                   f"shares a {dc.n}-gram with {', '.join(names)}: \"{ov.evidence[i]}\"")

    # 3. Training images that are benchmark images.
    dd = config.dedup_images
    if dd.enabled and bench.num_rows and n:
        targets = dd.against if dd.against is not None else sorted(set(bench_sources))
        bench_images = bench.column("images").to_pylist()
        bench_refs = {b: [r for j, s in enumerate(bench_sources) if s == b for r in bench_images[j]]
                      for b in targets}
        exact = exact_matches(images, bench_refs)
        for b in targets:
            flag_cols[f"image:{b}"] = np.array([b in hit for hit in exact], dtype=bool)
        for i, hit in enumerate(exact):
            if hit:
                remove(i, "image_in_benchmark", f"an image is byte-identical to one in {', '.join(hit)}")
        if dd.near_duplicates:
            near = near_matches(images, bench_refs, store, dd.hamming_threshold)
            details["near_duplicates"] = {
                "rows": len(near.rows), "hashed": near.hashed, "unreadable": near.unreadable,
                "examples": [{"item": ids[r], "benchmark": m[0].benchmark, "distance": m[0].distance}
                             for r, m in list(near.rows.items())[:20]]}
            for b in targets:
                flag_cols[f"near_image:{b}"] = np.array(
                    [any(m.benchmark == b for m in near.rows.get(i, ())) for i in range(n)], dtype=bool)
            if dd.remove_near_duplicates:
                for i, matches in near.rows.items():
                    m = min(matches, key=lambda x: x.distance)
                    remove(i, "near_duplicate_image",
                           f"an image is within {m.distance} bits (dHash) of one in {m.benchmark}")

    keep_mask = np.ones(n, dtype=bool)
    for i in removed:
        keep_mask[i] = False
    kept = train.filter(pa.array(keep_mask))

    # 4. Class balancing (rows dropped here are sampling, not defects: counted, not quarantined).
    kept, balance_report = balance(kept, config.balance)
    if balance_report:
        details["balance"] = balance_report

    # 5. Smart resize of every kept image, stored once per (hash, size).
    if config.resize.enabled and kept.num_rows:
        kept_images = kept.column("images").to_pylist()
        rep = resize_all((r for refs in kept_images for r in refs), store, config.resize)
        details["resize"] = {"images": len(rep.mapping) + len(rep.errors), "resized": rep.resized,
                             "failed": len(rep.errors)}
        ok = []
        new_images = []
        kept_ids = kept.column("id").to_pylist()
        row_of = {item_id: i for i, item_id in enumerate(ids)}
        for k, refs in enumerate(kept_images):
            bad = [r for r in refs if r.partition("@")[0] in rep.errors]
            if bad:
                remove(row_of[kept_ids[k]], "image_resize_failed", rep.errors[bad[0].partition("@")[0]])
                ok.append(False)
                new_images.append(refs)
            else:
                ok.append(True)
                new_images.append([rep.mapping[r.partition("@")[0]] for r in refs])
        kept = kept.set_column(kept.schema.get_field_index("images"), "images",
                               pa.array(new_images, type=pa.list_(pa.string())))
        kept = kept.filter(pa.array(ok))

    quarantine = [QuarantineRow(stage="prepare", source=sources[i], row=i, item_id=ids[i],
                                reason=reason, detail=detail, raw=raw_json({"id": ids[i]}))
                  for i, (reason, detail) in sorted(removed.items())]
    counts: dict[str, dict[str, int]] = {}
    for q in quarantine:
        counts.setdefault(q.source, {}).setdefault(q.reason, 0)
        counts[q.source][q.reason] += 1
    for src, rep_ in balance_report.items():
        dropped = sum(rep_["before"].values()) - sum(rep_["after"].values())
        if dropped:
            counts.setdefault(src, {})["balanced_out"] = dropped
    flags = pa.table({"id": pa.array(ids, pa.string()),
                      **{k: pa.array(v, pa.bool_()) for k, v in flag_cols.items()}})
    return PrepareResult(kept, flags, quarantine, counts, details)


__all__ = ["PrepareResult", "prepare", "question_views"]
