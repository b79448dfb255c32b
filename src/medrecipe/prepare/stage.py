"""The prepare stage: decontaminate, drop benchmark images, collapse duplicates, balance, resize.

    result = prepare(train_items, bench_items, recipe.prepare, image_store)

Input and output item tables are ITEM_SCHEMA. In order:

1. **n-gram decontamination** (`decontaminate`): a training question that shares a word
   n-gram (default 16) with a benchmark question is removed, reason
   ``contaminated:<benchmark>`` (the first benchmark it overlaps; the detail names all of
   them and quotes one shared n-gram). Texts are compared as the question followed by its
   options; the stem's n-grams are a prefix of those, so both the stem and the question
   with its options are checked. ``against`` names the benchmark sources; left empty, every
   benchmark source of the recipe is used. A text-only question (no images) whose question
   and options together are shorter than n words has no n-gram, so it is compared whole
   instead: the same normalised text as a text-only benchmark question removes it, reason
   ``benchmark_exact:<benchmark>`` (flag column ``exact:<benchmark>``). Items with images are
   left to the image checks, since template questions ("What tissue is shown?") repeat
   across images by design.
2. **Benchmark images** (`dedup_images`): a training item with an image whose bytes equal a
   benchmark image is removed (``image_in_benchmark``). With ``near_duplicates``, images
   within ``hamming_threshold`` dHash bits are flagged and reported; with
   ``remove_near_duplicates`` also removed (``near_duplicate_image``).
3. **Duplicate questions** (`decontaminate.collapse_duplicates`): items with the same
   normalised question, options and images collapse to the first in input order (recipe
   source order, then row order); the others are removed (``duplicate_question``).
4. **Class balancing** (`balance`): rows sampled out are counted (``balanced_out``), not
   quarantined.
5. **Smart resize** (`resize`): every kept image is resized once per (content hash, size);
   items point at the resized refs and keep the originals in ``meta["original_images"]``.
   An image that cannot be decoded removes its item (``image_resize_failed``).

`flags` has one row per input training item: ``source``, ``id``, a boolean column per
benchmark and check (``ngram:<bench>``, ``image:<bench>``, ``near_image:<bench>``),
``duplicate_of`` (the id of the kept copy) and ``removed`` (the reason, or null when kept),
so a user can see what matched even where nothing was removed. `counts` is
{source: {reason: rows removed}} for the manifest and ``medrecipe inspect``; `details` holds
the rest (per-benchmark flag counts, near-duplicate examples, class counts, resize counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medrecipe.config import PrepareConfig
from medrecipe.images import ImageStore
from medrecipe.prepare.balance import balance
from medrecipe.prepare.decontaminate import find_exact_short, find_overlaps, normalize_texts
from medrecipe.prepare.dedup import base_sha, exact_matches, near_matches
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


def question_texts(table: pa.Table) -> pa.ChunkedArray:
    """Per row: the question followed by its options, separated by spaces."""
    opts = pc.binary_join(table.column("options"), " ")
    return pc.binary_join_element_wise(table.column("question"), opts, " ")


def question_views(table: pa.Table) -> list[list[str]]:
    """Per row: the question stem, and the stem followed by its options."""
    qs = table.column("question").to_pylist()
    opts = table.column("options").to_pylist()
    return [[q, q + "\n" + "\n".join(o)] if o else [q] for q, o in zip(qs, opts, strict=True)]


def duplicate_of(table: pa.Table) -> np.ndarray:
    """Per row, the index of the first row with the same normalised question, options and
    images (the row itself when it is the first)."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, np.int64)
    options = table.column("options").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(options), 0).to_numpy(zero_copy_only=False)
    flat = normalize_texts(pc.list_flatten(options))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    # Normalised text holds only word characters and spaces, so "|" separates options safely.
    norm_options = pc.binary_join(pa.ListArray.from_arrays(offsets, flat.cast(pa.string())), "|")
    images = [",".join(base_sha(r) for r in refs or ()) for refs in table.column("images").to_pylist()]
    keys = pa.table({"q": normalize_texts(table.column("question")), "o": norm_options,
                     "i": pa.array(images, pa.string()), "row": pa.array(np.arange(n))})
    firsts = keys.group_by(["q", "o", "i"], use_threads=False).aggregate([("row", "min")])
    joined = keys.join(firsts, ["q", "o", "i"], use_threads=False)
    out = np.empty(n, np.int64)
    out[joined.column("row").to_numpy()] = joined.column("row_min").to_numpy()
    return out


_RAW_COLUMNS = ["id", "source", "question", "options", "answer", "images"]


def _raws(table: pa.Table, rows: list[int]) -> list[str]:
    """JSON of the given rows (truncated) for the quarantine table, converted in one go."""
    if not rows:
        return []
    return [raw_json(r) for r in table.select(_RAW_COLUMNS).take(pa.array(rows)).to_pylist()]


def prepare(train: pa.Table, bench: pa.Table, config: PrepareConfig,
            store: ImageStore) -> PrepareResult:
    """Run the enabled preparation steps over training items (see module docstring)."""
    n = train.num_rows
    ids = train.column("id").to_pylist()
    sources = train.column("source").to_pylist()
    images = train.column("images").to_pylist()
    removed: dict[int, tuple[str, str]] = {}  # row -> (reason, detail); the first reason wins
    flag_cols: dict[str, np.ndarray] = {}
    details: dict[str, Any] = {}
    bench_sources = bench.column("source").to_pylist() if bench.num_rows else []
    bench_names = list(dict.fromkeys(bench_sources))

    def remove(row: int, reason: str, detail: str) -> None:
        removed.setdefault(row, (reason, detail))

    # 1. n-gram decontamination.
    dc = config.decontaminate
    if dc.enabled and n and (dc.against or bench_names):
        against = list(dc.against) or bench_names
        texts = question_texts(bench).to_pylist() if bench.num_rows else []
        per_bench = {b: [t for t, s in zip(texts, bench_sources, strict=True) if s == b] for b in against}
        ov = find_overlaps(question_texts(train), per_bench, n=dc.n)
        for j, b in enumerate(ov.benchmarks):
            flag_cols[f"ngram:{b}"] = ov.matches[:, j]
        for i in np.flatnonzero(ov.flags):
            names = ov.benchmarks_of(int(i))
            remove(int(i), f"contaminated:{names[0]}",
                   f"shares a {dc.n}-word sequence with {', '.join(names)}: \"{ov.evidence[i]}\"")
        # Short text-only questions: exact match on the normalised question + options.
        def text_only(table: pa.Table) -> np.ndarray:
            return (pc.fill_null(pc.list_value_length(table.column("images")), 0)
                    .to_numpy(zero_copy_only=False) == 0)

        bench_text_only = text_only(bench) if bench.num_rows else np.zeros(0, bool)
        per_bench_short = {b: [t for t, s, k in zip(texts, bench_sources, bench_text_only, strict=True)
                               if s == b and k] for b in against}
        train_texts = question_texts(train).to_pylist()
        train_text_only = text_only(train)
        ex = find_exact_short([t if k else None for t, k in zip(train_texts, train_text_only, strict=True)],
                              per_bench_short, n=dc.n)
        for j, b in enumerate(ex.benchmarks):
            flag_cols[f"exact:{b}"] = ex.matches[:, j]
        for i in np.flatnonzero(ex.flags):
            names = ex.benchmarks_of(int(i))
            remove(int(i), f"benchmark_exact:{names[0]}",
                   f"same text as a question of {', '.join(names)} (under {dc.n} words): \"{ex.evidence[i]}\"")
        details["decontaminate"] = {"against": against, "n": dc.n,
                                    "flagged": {b: int(ov.matches[:, j].sum())
                                                for j, b in enumerate(ov.benchmarks)},
                                    "exact_short": {b: int(ex.matches[:, j].sum())
                                                    for j, b in enumerate(ex.benchmarks)}}

    # 2. Training images that are benchmark images.
    dd = config.dedup_images
    if dd.enabled and bench.num_rows and n:
        targets = dd.against if dd.against is not None else bench_names
        bench_images = bench.column("images").to_pylist()
        bench_refs = {b: [r for j, s in enumerate(bench_sources) if s == b for r in bench_images[j]]
                      for b in targets}
        exact = exact_matches(images, bench_refs)
        for b in targets:
            flag_cols[f"image:{b}"] = np.array([b in hit for hit in exact], dtype=bool)
        for i, hit in enumerate(exact):
            if hit:
                remove(i, "image_in_benchmark",
                       f"an image is byte-identical to one in {', '.join(hit)}")
        if dd.near_duplicates:
            near = near_matches(images, bench_refs, store, dd.hamming_threshold)
            details["near_duplicates"] = {
                "rows": len(near.rows), "hashed": near.hashed, "unreadable": near.unreadable,
                "threshold": dd.hamming_threshold, "removed": dd.remove_near_duplicates,
                "examples": [{"item": ids[r], "image": m[0].train_ref, "benchmark": m[0].benchmark,
                              "bench_image": m[0].bench_ref, "distance": m[0].distance}
                             for r, m in list(near.rows.items())[:20]]}
            for b in targets:
                flag_cols[f"near_image:{b}"] = np.array(
                    [any(m.benchmark == b for m in near.rows.get(i, ())) for i in range(n)], dtype=bool)
            if dd.remove_near_duplicates:
                for i, matches in near.rows.items():
                    m = matches[0]
                    remove(i, "near_duplicate_image",
                           f"an image is within {m.distance} bits (dHash) of one in {m.benchmark}")

    # 3. Exact duplicates of a normalised question (same options and images) collapse to one.
    dup_of = np.full(n, -1, np.int64)
    if dc.collapse_duplicates and n:
        alive = np.array([i not in removed for i in range(n)], dtype=bool)
        rows = np.flatnonzero(alive)
        first = rows[duplicate_of(train.take(pa.array(rows)))]
        answers = train.column("answer").to_pylist()
        for i, f in zip(rows.tolist(), first.tolist(), strict=True):
            if f != i:
                dup_of[i] = f
                differs = (f" (its answer is {answers[f]!r}, this one says {answers[i]!r})"
                           if answers[f] != answers[i] else "")
                remove(i, "duplicate_question", f"same question as {ids[f]}{differs}")
        details["duplicates"] = int((dup_of >= 0).sum())

    keep_mask = np.ones(n, dtype=bool)
    keep_mask[list(removed)] = False
    kept_rows = np.flatnonzero(keep_mask)
    kept = train.take(pa.array(kept_rows))

    # 4. Class balancing (rows dropped here are sampling, not defects: counted, not quarantined).
    kept, balance_report = balance(kept.append_column("__row", pa.array(kept_rows)), config.balance)
    row_of_kept = kept.column("__row").to_numpy()
    kept = kept.drop_columns(["__row"])
    if balance_report:
        details["balance"] = balance_report
    balanced_out = sorted(set(kept_rows.tolist()) - set(row_of_kept.tolist()))

    # 5. Smart resize of every kept image, stored once per (hash, size).
    if config.resize.enabled and kept.num_rows:
        kept_images = kept.column("images").to_pylist()
        rep = resize_all((r for refs in kept_images for r in refs), store, config.resize)
        details["resize"] = {"images": len(rep.mapping) + len(rep.errors), "resized": rep.resized,
                             "failed": len(rep.errors)}
        ok, new_images, new_meta = [], [], []
        for k, (refs, meta) in enumerate(zip(kept_images, kept.column("meta").to_pylist(), strict=True)):
            bad = [r for r in refs if base_sha(r) in rep.errors]
            if bad:
                remove(int(row_of_kept[k]), "image_resize_failed", rep.errors[base_sha(bad[0])])
            ok.append(not bad)
            new = [rep.mapping.get(base_sha(r), r) for r in refs]
            if new != refs:
                m = json.loads(meta) if meta else {}
                m.setdefault("original_images", refs)
                meta = json.dumps(m, ensure_ascii=False, sort_keys=True, default=str)
            new_images.append(new)
            new_meta.append(meta)
        kept = kept.set_column(kept.schema.get_field_index("images"), kept.schema.field("images"),
                               pa.array(new_images, type=pa.list_(pa.string())))
        kept = kept.set_column(kept.schema.get_field_index("meta"), kept.schema.field("meta"),
                               pa.array(new_meta, type=pa.string()))
        kept = kept.filter(pa.array(ok))

    gone = sorted(removed)
    quarantine = [QuarantineRow(stage="prepare", source=sources[i], row=i, item_id=ids[i],
                                reason=removed[i][0], detail=removed[i][1], raw=raw)
                  for i, raw in zip(gone, _raws(train, gone), strict=True)]
    counts: dict[str, dict[str, int]] = {}
    for q in quarantine:
        counts.setdefault(q.source, {}).setdefault(q.reason, 0)
        counts[q.source][q.reason] += 1
    for i in balanced_out:
        counts.setdefault(sources[i], {}).setdefault("balanced_out", 0)
        counts[sources[i]]["balanced_out"] += 1
    reason_col = [removed[i][0] if i in removed else None for i in range(n)]
    for i in balanced_out:
        reason_col[i] = "balanced_out"
    flags = pa.table({
        "source": pa.array(sources, pa.string()), "id": pa.array(ids, pa.string()),
        **{k: pa.array(v, pa.bool_()) for k, v in flag_cols.items()},
        "duplicate_of": pa.array([ids[f] if f >= 0 else None for f in dup_of.tolist()], pa.string()),
        "removed": pa.array(reason_col, pa.string()),
    })
    return PrepareResult(kept, flags, quarantine, counts, details)


__all__ = ["PrepareResult", "duplicate_of", "prepare", "question_texts", "question_views"]
