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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medrecipe.config import PrepareConfig
from medrecipe.images import ImageStore
from medrecipe.prepare.balance import balance
from medrecipe.prepare.decontaminate import find_exact_short, normalize_texts
from medrecipe.prepare.dedup import base_sha, exact_matches
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


def _text_only(table: pa.Table) -> np.ndarray:
    return (pc.fill_null(pc.list_value_length(table.column("images")), 0)
            .to_numpy(zero_copy_only=False) == 0)


def _dup_keys(table: pa.Table) -> list[bytes]:
    """Per row, a 16-byte digest of its normalised question, options and images (the same
    normalisation as `duplicate_of`)."""
    import hashlib

    if table.num_rows == 0:
        return []
    options = table.column("options").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(options), 0).to_numpy(zero_copy_only=False)
    flat = normalize_texts(pc.list_flatten(options))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    norm_options = pc.binary_join(pa.ListArray.from_arrays(offsets, flat.cast(pa.string())), "|")
    qs = normalize_texts(table.column("question")).to_pylist()
    imgs = [",".join(base_sha(r) for r in refs or ()) for refs in table.column("images").to_pylist()]
    return [hashlib.blake2b(f"{q}\x1f{o}\x1f{i}".encode(), digest_size=16).digest()
            for q, o, i in zip(qs, norm_options.to_pylist(), imgs, strict=True)]


@dataclass
class _Checks:
    """Indexes over the benchmark items, built once and queried batch by batch."""

    config: PrepareConfig
    bench: pa.Table
    store: ImageStore

    def __post_init__(self) -> None:
        from medrecipe.prepare.decontaminate import NgramIndex
        from medrecipe.prepare.dedup import NearIndex

        bench, dc, dd = self.bench, self.config.decontaminate, self.config.dedup_images
        sources = bench.column("source").to_pylist() if bench.num_rows else []
        names = list(dict.fromkeys(sources))
        self.ngram = self.near = None
        self.against: list[str] = []
        if dc.enabled and (dc.against or names):
            self.against = list(dc.against) or names
            texts = question_texts(bench).to_pylist() if bench.num_rows else []
            per_bench = {b: [t for t, s in zip(texts, sources, strict=True) if s == b]
                         for b in self.against}
            self.ngram = NgramIndex(per_bench, n=dc.n)
            bench_text_only = _text_only(bench) if bench.num_rows else np.zeros(0, bool)
            self.per_bench_short = {b: [t for t, s, k in zip(texts, sources, bench_text_only,
                                                              strict=True) if s == b and k]
                                    for b in self.against}
        self.image_targets: list[str] = []
        if dd.enabled and bench.num_rows:
            self.image_targets = dd.against if dd.against is not None else names
            images = bench.column("images").to_pylist()
            self.bench_refs = {b: [r for j, s in enumerate(sources) if s == b for r in images[j]]
                               for b in self.image_targets}
            if dd.near_duplicates:
                self.near = NearIndex(self.bench_refs, self.store, dd.hamming_threshold)


def prepare_stream(batches: Callable[[], Iterable[pa.Table]], bench: pa.Table,
                   config: PrepareConfig, store: ImageStore, *,
                   emit_items: Callable[[pa.Table], None],
                   emit_flags: Callable[[pa.Table], None],
                   emit_quarantine: Callable[[list[QuarantineRow]], None],
                   ) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    """The preparation steps over training items read batch by batch (see module docstring).

    `batches()` must yield the same batches each time it is called: it is read twice. The
    first pass runs the per-row checks against the benchmark indexes (built once) and keeps
    only small per-row facts (id, source, answer, a 16-byte duplicate key, flags); the
    global steps (first copy of each duplicate, class balancing) are decided from those;
    the second pass resizes the images of the kept rows and emits items, flags and
    quarantine rows in input order. Returns (counts, details) as PrepareResult has them.
    """
    dc, dd = config.decontaminate, config.dedup_images
    checks = _Checks(config, bench, store)
    ids: list[str] = []
    sources: list[str] = []
    answers: list[str] = []
    tasks: list[str] = []
    removed: dict[int, tuple[str, str]] = {}
    flag_parts: dict[str, list[np.ndarray]] = {}
    dup_key: dict[int, bytes] = {}
    details: dict[str, Any] = {}
    flagged = {b: 0 for b in checks.against}
    exact_short = {b: 0 for b in checks.against}
    near_info: dict[str, Any] = {"rows": 0, "hashed": 0, "unreadable": 0, "examples": []}

    def remove(row: int, reason: str, detail: str) -> None:
        removed.setdefault(row, (reason, detail))

    def add_flag(name: str, values: np.ndarray) -> None:
        flag_parts.setdefault(name, []).append(values)

    # ---- pass 1: per-row checks, and the facts the global steps need
    offset = 0
    for batch in batches():
        n = batch.num_rows
        if n == 0:
            continue
        b_ids = batch.column("id").to_pylist()
        ids += b_ids
        sources += batch.column("source").to_pylist()
        answers += batch.column("answer").to_pylist()
        tasks += batch.column("task").to_pylist()
        images = batch.column("images").to_pylist()
        if checks.ngram is not None:
            texts = question_texts(batch)
            ov = checks.ngram.query(texts)
            for j, b in enumerate(ov.benchmarks):
                add_flag(f"ngram:{b}", ov.matches[:, j])
                flagged[b] += int(ov.matches[:, j].sum())
            for i in np.flatnonzero(ov.flags):
                names = ov.benchmarks_of(int(i))
                remove(offset + int(i), f"contaminated:{names[0]}",
                       f"shares a {dc.n}-word sequence with {', '.join(names)}: "
                       f"\"{ov.evidence[i]}\"")
            text_only = _text_only(batch)
            ex = find_exact_short([t if k else None for t, k in
                                   zip(texts.to_pylist(), text_only, strict=True)],
                                  checks.per_bench_short, n=dc.n)
            for j, b in enumerate(ex.benchmarks):
                add_flag(f"exact:{b}", ex.matches[:, j])
                exact_short[b] += int(ex.matches[:, j].sum())
            for i in np.flatnonzero(ex.flags):
                names = ex.benchmarks_of(int(i))
                remove(offset + int(i), f"benchmark_exact:{names[0]}",
                       f"same text as a question of {', '.join(names)} (under {dc.n} words): "
                       f"\"{ex.evidence[i]}\"")
        if checks.image_targets:
            exact = exact_matches(images, checks.bench_refs)
            for b in checks.image_targets:
                add_flag(f"image:{b}", np.array([b in hit for hit in exact], dtype=bool))
            for i, hit in enumerate(exact):
                if hit:
                    remove(offset + i, "image_in_benchmark",
                           f"an image is byte-identical to one in {', '.join(hit)}")
            if checks.near is not None:
                near = checks.near.query(images)
                near_info["rows"] += len(near.rows)
                for r, m in near.rows.items():
                    if len(near_info["examples"]) < 20:
                        near_info["examples"].append(
                            {"item": b_ids[r], "image": m[0].train_ref,
                             "benchmark": m[0].benchmark, "bench_image": m[0].bench_ref,
                             "distance": m[0].distance})
                for b in checks.image_targets:
                    add_flag(f"near_image:{b}", np.array(
                        [any(m.benchmark == b for m in near.rows.get(i, ())) for i in range(n)],
                        dtype=bool))
                if dd.remove_near_duplicates:
                    for i, matches in near.rows.items():
                        m = matches[0]
                        remove(offset + i, "near_duplicate_image",
                               f"an image is within {m.distance} bits (dHash) of one in "
                               f"{m.benchmark}")
        if dc.collapse_duplicates:
            alive = [i for i in range(n) if offset + i not in removed]
            if alive:
                keys = _dup_keys(batch.take(pa.array(alive)))
                dup_key.update((offset + i, k) for i, k in zip(alive, keys, strict=True))
        offset += n
    total = offset
    if checks.ngram is not None:
        details["decontaminate"] = {"against": checks.against, "n": dc.n, "flagged": flagged,
                                    "exact_short": exact_short}
    if checks.near is not None:
        details["near_duplicates"] = {
            "rows": near_info["rows"], "hashed": checks.near.hashed,
            "unreadable": checks.near.unreadable, "threshold": dd.hamming_threshold,
            "removed": dd.remove_near_duplicates, "examples": near_info["examples"]}

    # ---- global: the first copy of each duplicate question stays
    dup_of: dict[int, int] = {}
    if dc.collapse_duplicates and total:
        first_of: dict[bytes, int] = {}
        for i in sorted(dup_key):
            f = first_of.setdefault(dup_key[i], i)
            if f != i:
                dup_of[i] = f
                differs = (f" (its answer is {answers[f]!r}, this one says {answers[i]!r})"
                           if answers[f] != answers[i] else "")
                remove(i, "duplicate_question", f"same question as {ids[f]}{differs}")
        details["duplicates"] = len(dup_of)
    dup_key.clear()

    # ---- global: class balancing over the kept rows (sampling, not defects: not quarantined)
    kept_rows = [i for i in range(total) if i not in removed]
    small = pa.table({"id": pa.array([ids[i] for i in kept_rows], pa.string()),
                      "source": pa.array([sources[i] for i in kept_rows], pa.string()),
                      "task": pa.array([tasks[i] for i in kept_rows], pa.string()),
                      "answer": pa.array([answers[i] for i in kept_rows], pa.string()),
                      "__row": pa.array(kept_rows, pa.int64())})
    small, balance_report = balance(small, config.balance)
    if balance_report:
        details["balance"] = balance_report
    survivors = set(small.column("__row").to_pylist())
    balanced_out = {i for i in kept_rows if i not in survivors}
    del small

    # ---- pass 2: resize the kept rows' images; emit items, flags and quarantine rows
    flags = {k: np.concatenate(v) for k, v in flag_parts.items()}
    resize_seen: dict[str, str] = {}  # original sha -> resized ref, across batches
    resize_errors: dict[str, str] = {}
    resized = 0
    counts: dict[str, dict[str, int]] = {}
    offset = 0
    for batch in batches():
        n = batch.num_rows
        if n == 0:
            continue
        rows = range(offset, offset + n)
        keep = np.array([i not in removed and i not in balanced_out for i in rows], dtype=bool)
        kept = batch.filter(pa.array(keep))
        kept_at = [i for i in rows if keep[i - offset]]
        if config.resize.enabled and kept.num_rows:
            kept_images = kept.column("images").to_pylist()
            todo = [r for refs in kept_images for r in refs
                    if base_sha(r) not in resize_seen and base_sha(r) not in resize_errors]
            rep = resize_all(todo, store, config.resize)
            resize_seen.update(rep.mapping)
            resize_errors.update(rep.errors)
            resized += rep.resized
            ok, new_images, new_meta = [], [], []
            for k, (refs, meta) in enumerate(zip(kept_images, kept.column("meta").to_pylist(),
                                                 strict=True)):
                bad = [r for r in refs if base_sha(r) in resize_errors]
                if bad:
                    remove(kept_at[k], "image_resize_failed", resize_errors[base_sha(bad[0])])
                ok.append(not bad)
                new = [resize_seen.get(base_sha(r), r) for r in refs]
                if new != refs:
                    m = json.loads(meta) if meta else {}
                    m.setdefault("original_images", refs)
                    meta = json.dumps(m, ensure_ascii=False, sort_keys=True, default=str)
                new_images.append(new)
                new_meta.append(meta)
            kept = kept.set_column(kept.schema.get_field_index("images"),
                                   kept.schema.field("images"),
                                   pa.array(new_images, type=pa.list_(pa.string())))
            kept = kept.set_column(kept.schema.get_field_index("meta"), kept.schema.field("meta"),
                                   pa.array(new_meta, type=pa.string()))
            kept = kept.filter(pa.array(ok))
        if kept.num_rows:
            emit_items(kept)
        gone = [i for i in rows if i in removed]
        local = [i - offset for i in gone]
        emit_quarantine([QuarantineRow(stage="prepare", source=sources[i], row=i, item_id=ids[i],
                                       reason=removed[i][0], detail=removed[i][1], raw=raw)
                         for i, raw in zip(gone, _raws(batch, local), strict=True)])
        for i in gone:
            counts.setdefault(sources[i], {}).setdefault(removed[i][0], 0)
            counts[sources[i]][removed[i][0]] += 1
        for i in rows:
            if i in balanced_out:
                counts.setdefault(sources[i], {}).setdefault("balanced_out", 0)
                counts[sources[i]]["balanced_out"] += 1
        emit_flags(pa.table({
            "source": pa.array(sources[offset:offset + n], pa.string()),
            "id": pa.array(ids[offset:offset + n], pa.string()),
            **{k: pa.array(v[offset:offset + n], pa.bool_()) for k, v in flags.items()},
            "duplicate_of": pa.array([ids[dup_of[i]] if i in dup_of else None for i in rows],
                                     pa.string()),
            "removed": pa.array([removed[i][0] if i in removed else
                                 ("balanced_out" if i in balanced_out else None) for i in rows],
                                pa.string()),
        }))
        offset += n
    if config.resize.enabled:
        details["resize"] = {"images": len(resize_seen) + len(resize_errors), "resized": resized,
                             "failed": len(resize_errors)}
    return counts, details


def prepare_flags_schema(bench: pa.Table, config: PrepareConfig) -> pa.Schema:
    """Columns of the flags table for these benchmark items and settings (in emitted order)."""
    sources = bench.column("source").to_pylist() if bench.num_rows else []
    names = list(dict.fromkeys(sources))
    dc, dd = config.decontaminate, config.dedup_images
    cols: list[str] = []
    if dc.enabled and (dc.against or names):
        against = list(dc.against) or names
        cols += [f"ngram:{b}" for b in against] + [f"exact:{b}" for b in against]
    if dd.enabled and bench.num_rows:
        targets = dd.against if dd.against is not None else names
        cols += [f"image:{b}" for b in targets]
        if dd.near_duplicates:
            cols += [f"near_image:{b}" for b in targets]
    return pa.schema([("source", pa.string()), ("id", pa.string())]
                     + [(c, pa.bool_()) for c in cols]
                     + [("duplicate_of", pa.string()), ("removed", pa.string())])


def prepare(train: pa.Table, bench: pa.Table, config: PrepareConfig,
            store: ImageStore) -> PrepareResult:
    """Run the enabled preparation steps over training items (see module docstring)."""
    items: list[pa.Table] = []
    flags: list[pa.Table] = []
    quarantine: list[QuarantineRow] = []
    counts, details = prepare_stream(lambda: [train], bench, config, store,
                                     emit_items=items.append, emit_flags=flags.append,
                                     emit_quarantine=quarantine.extend)
    kept = pa.concat_tables(items) if items else train.schema.empty_table()
    flag_table = pa.concat_tables(flags) if flags else pa.table(
        {"source": pa.array([], pa.string()), "id": pa.array([], pa.string()),
         "duplicate_of": pa.array([], pa.string()), "removed": pa.array([], pa.string())})
    return PrepareResult(kept, flag_table, quarantine, counts, details)


__all__ = ["PrepareResult", "duplicate_of", "prepare", "prepare_stream", "question_texts",
           "question_views"]
