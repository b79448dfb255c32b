"""Run statistics: what each stage produced, read from whatever exists in a run directory.

Every part is optional: a stage that has not run yet gives ``None`` for its section, so
the report and `medrecipe inspect` work on a run at any point.

Definitions used throughout:

* unparsed: a verdict whose generation did not fail and finished its thinking, but from
  which no answer was extracted (``answer is None``);
* unterminated: a verdict with ``terminated == False`` (a thinking block never closed);
  counted apart from unparsed, so correct + wrong + unparsed + unterminated + failed
  covers every response;
* ungradable: ``correct is None`` (unparsed, failed, or nothing to compare);
* acceptance rate: accepted (selected) traces / generated traces, per source or teacher.

Memory (see docs/report.md): the tables are streamed in batches of the columns each
statistic needs (`report.scan`), shard by shard. Counts are exact and take memory per
distinct value, not per row. The two length distributions (completion tokens of answered
requests, characters of accepted targets) are kept exactly as one int32 per row, 4 bytes:
32 MB for 8 M generations, so percentiles and box plots are the exact ones. Example cards
come from a bounded per-group sample (`report.sample`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medrecipe.report.sample import TopK
from medrecipe.report.scan import (
    RunFiles,
    SourceIndex,
    batches,
    locate,
    relabel,
    truthy,
    value_counts,
)
from medrecipe.store import Run

S, I64, F64, B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
ITEM_COLUMNS = {"id": S, "source": S, "split": S, "task": S, "modality": S, "anatomy": S,
                "images": pa.list_(S)}
GEN_COLUMNS = {"key": S, "item_id": S, "source": S, "teacher": S, "finish_reason": S,
               "completion_tokens": I64, "prompt_tokens": I64, "cost_usd": F64, "error": S}
VERDICT_COLUMNS = {"key": S, "item_id": S, "source": S, "teacher": S, "answer": S, "method": S,
                   "terminated": B, "correct": B, "invalid": S}
SELECTED_COLUMNS = {"id": S, "item_id": S, "source": S, "teacher": S, "target": S}
QUARANTINE_COLUMNS = {"stage": S, "source": S, "reason": S}
VERDICT_COUNTS = ("total", "correct", "wrong", "unparsed", "invalid", "unterminated", "failed",
                  "ungradable")


def _counts(counter: Counter, none_label: str = "(unknown)") -> dict[str, int]:
    c = relabel(counter, none_label)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def describe(values: list[float] | np.ndarray) -> dict[str, float] | None:
    """n, mean, median, p90, max of a list of numbers (None when empty)."""
    if isinstance(values, np.ndarray):
        arr = values  # integer arrays give the same figures as their float copies
    else:
        arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return None
    return {"n": int(arr.size), "mean": round(float(arr.mean()), 2),
            "median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)),
            "max": float(arr.max())}


def _a(t: pa.Table, name: str) -> pa.Array:
    return t.column(name).combine_chunks()


def _np(a: pa.Array) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


class Lengths:
    """Integer values per group, kept as compact numpy chunks (4 bytes a value)."""

    def __init__(self) -> None:
        self._chunks: dict[str, list[np.ndarray]] = defaultdict(list)

    def add(self, groups: pa.Array, values: pa.Array) -> None:
        for g in pc.unique(groups).to_pylist():
            part = values.filter(pc.equal(groups, g)).to_numpy(zero_copy_only=False)
            if part.size and (part.max() > np.iinfo(np.int32).max
                              or part.min() < np.iinfo(np.int32).min):
                self._chunks[g].append(part.astype(np.int64))
            elif part.size:
                self._chunks[g].append(part.astype(np.int32))

    def arrays(self) -> dict[str, np.ndarray]:
        """{group: every value in scan order}, groups sorted (chunks joined once, in place)."""
        for g, c in self._chunks.items():
            if len(c) > 1:
                self._chunks[g] = [np.concatenate(c)]
        return {g: c[0] for g, c in sorted(self._chunks.items())}


def _sum_by(groups: pa.Array, flags: dict[str, pa.Array], into: dict[str, Counter]) -> None:
    t = pa.table({"g": groups, **{k: pc.cast(v, I64) for k, v in flags.items()}})
    for row in t.group_by("g").aggregate([(k, "sum") for k in flags]).to_pylist():
        c = into[row.pop("g")]
        for k in flags:
            c[k] += row[f"{k}_sum"] or 0


@dataclass
class RunScan:
    """Everything the report draws from one streamed pass over a run directory."""

    files: RunFiles
    stats: dict[str, Any]
    token_lengths: dict[str, np.ndarray] = field(default_factory=dict)  # answered requests
    target_chars: dict[str, np.ndarray] = field(default_factory=dict)  # accepted targets
    accepted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by source
    rejected: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by reason


class _Scanner:
    """Streams one run directory group by group (shard by shard) into counters."""

    def __init__(self, files: RunFiles, examples: int):
        self.f = files
        self.items: dict[str, Counter] = defaultdict(Counter)
        self.n_items = self.with_images = 0
        self.gen: dict[str, Any] = {"total": 0, "failed": 0, "prompt": 0, "completion": 0,
                                    "cost": 0, "by_source": Counter(), "by_teacher": Counter(),
                                    "finish": Counter(), "errors": Counter()}
        self.tokens = Lengths()
        self.ver_all: Counter = Counter()
        self.ver_source: dict[str, Counter] = defaultdict(Counter)
        self.ver_teacher: dict[str, Counter] = defaultdict(Counter)
        self.methods: Counter = Counter()
        self.sel = {"train": 0, "val": 0, "questions": 0}
        self.per_question_hist: Counter = Counter()
        self.acc_source: Counter = Counter()
        self.acc_teacher: Counter = Counter()
        self.chars = Lengths()
        self.accepted = TopK(examples)
        self.rejected = TopK(examples)

    def run(self) -> None:
        join = bool(self.f.generations or self.f.verdicts)
        for group in self.f.groups():
            index = self._items(group.get("items", []), keep_index=join)
            failed = self._generations(group.get("generations", []), index)
            self._verdicts(group.get("verdicts", []), index, failed)
            self._selected(group.get("train", []), group.get("val", []))
            # The allocator keeps freed batch buffers for reuse; hand them back per shard so
            # the peak stays at one shard's batches.
            pa.default_memory_pool().release_unused()

    # -- items
    def _items(self, files: list[Path], keep_index: bool) -> SourceIndex:
        parts = []
        for t in batches(files, ITEM_COLUMNS):
            self.n_items += t.num_rows
            for c in ("source", "task", "modality", "anatomy", "split"):
                self.items[c].update(value_counts(t.column(c)))
            sizes = pc.fill_null(pc.list_value_length(_a(t, "images")), 0)
            self.with_images += pc.sum(pc.greater(sizes, 0)).as_py() or 0
            if keep_index:
                parts.append((_a(t, "id"), _a(t, "source")))
        return SourceIndex.of(parts)

    # -- generations
    def _generations(self, files: list[Path], index: SourceIndex) -> pa.Array:
        g = self.gen
        failed_keys = []
        for t in batches(files, GEN_COLUMNS):
            src = index.resolve(_a(t, "item_id"),
                                _a(t, "source"))
            teacher = pc.fill_null(_a(t, "teacher"), "")
            err = truthy(_a(t, "error"))
            g["total"] += t.num_rows
            g["by_source"].update(value_counts(src))
            g["by_teacher"].update(value_counts(teacher))
            g["finish"].update(value_counts(_a(t, "finish_reason")))
            g["failed"] += pc.sum(err).as_py() or 0
            for e in _a(t, "error").filter(err).to_pylist():
                g["errors"][str(e).split(":")[0][:60]] += 1
            failed_keys.extend(_a(t, "key").filter(err).to_pylist())
            g["prompt"] += pc.sum(_a(t, "prompt_tokens")).as_py() or 0
            g["completion"] += pc.sum(_a(t, "completion_tokens")).as_py() or 0
            # One float at a time, in row order: the same total as summing the whole column.
            for c in pc.fill_null(_a(t, "cost_usd"), 0.0).to_numpy().tolist():
                g["cost"] += c
            tokens = _a(t, "completion_tokens")
            answered = pc.and_(pc.invert(err), pc.is_valid(tokens))
            self.tokens.add(src.filter(answered), tokens.filter(answered))
        return pa.array(failed_keys, S)

    # -- verdicts
    def _verdicts(self, files: list[Path], index: SourceIndex, failed_keys: pa.Array) -> None:
        for t in batches(files, VERDICT_COLUMNS):
            src = index.resolve(_a(t, "item_id"),
                                _a(t, "source"))
            teacher = pc.fill_null(_a(t, "teacher"), "")
            correct = _a(t, "correct")
            term = _a(t, "terminated")
            failed = pc.is_in(_a(t, "key"), value_set=failed_keys)
            unterminated = pc.fill_null(pc.equal(term, False), False)
            flags = {
                "total": pa.array(np.ones(t.num_rows, bool)),
                "correct": pc.fill_null(pc.equal(correct, True), False),
                "wrong": pc.fill_null(pc.equal(correct, False), False),
                "unparsed": pc.and_(pc.is_null(_a(t, "answer")),
                                    pc.invert(pc.or_(failed, unterminated))),
                "invalid": truthy(_a(t, "invalid")),
                "unterminated": unterminated,
                "failed": failed,
                "ungradable": pc.is_null(correct),
            }
            for k, v in flags.items():
                self.ver_all[k] += pc.sum(pc.cast(v, I64)).as_py() or 0
            _sum_by(src, flags, self.ver_source)
            _sum_by(teacher, flags, self.ver_teacher)
            self.methods.update(value_counts(_a(t, "method")))
            if self.rejected.k:
                self._offer_rejected(t, src, teacher, flags)

    def _offer_rejected(self, t: pa.Table, src: pa.Array, teacher: pa.Array,
                        flags: dict[str, pa.Array]) -> None:
        keep = pc.invert(pc.and_(flags["correct"], pc.invert(flags["unterminated"])))
        reason = np.select(
            [_np(flags[k]) for k in ("failed", "unterminated", "unparsed", "wrong")],
            ["failed request", "unterminated", "unparsed", "wrong answer"], "not gradable")
        idx = np.flatnonzero(_np(keep))
        if not idx.size:
            return
        take = pa.array(idx)
        cols = {"key": _a(t, "key").take(take).to_pylist(),
                "item_id": _a(t, "item_id").take(take).to_pylist(),
                "source": src.take(take).to_pylist(), "teacher": teacher.take(take).to_pylist(),
                "method": _a(t, "method").take(take).to_pylist(),
                "answer": _a(t, "answer").take(take).to_pylist()}
        reasons = reason[idx].tolist()
        self.rejected.offer(reasons, cols["key"],
                            lambda i: {**{k: v[i] for k, v in cols.items()}, "reason": reasons[i]})

    # -- selected traces
    def _selected(self, train: list[Path], val: list[Path]) -> None:
        per_question: Counter = Counter()
        for split, files in (("train", train), ("val", val)):
            for t in batches(files, SELECTED_COLUMNS):
                self.sel[split] += t.num_rows
                per_question.update(value_counts(_a(t, "item_id")))
                src = _a(t, "source")
                self.acc_source.update(value_counts(src))
                self.acc_teacher.update(value_counts(pc.fill_null(_a(t, "teacher"), "")))
                self.chars.add(src, pc.fill_null(pc.utf8_length(_a(t, "target")), 0)
                               )
                if self.accepted.k:
                    cols = {k: t.column(k).to_pylist() for k in ("id", "item_id", "source")}
                    self.accepted.offer(cols["source"], cols["id"],
                                        lambda i, c=cols: {k: v[i] for k, v in c.items()})
        # Every trace of a question is in the same shard, so this group saw all of them.
        self.per_question_hist.update(Counter(per_question.values()))
        self.sel["questions"] += len(per_question)

    # -- sections
    def sections(self) -> dict[str, Any]:
        f, g = self.f, self.gen
        out: dict[str, Any] = {}
        out["items"] = None if f.items is None else {
            "total": self.n_items,
            **{f"by_{c}": _counts(self.items[c])
               for c in ("source", "task", "modality", "anatomy", "split")},
            "with_images": self.with_images,
        }
        out["generations"] = None if f.generations is None else {
            "total": g["total"], "failed": g["failed"],
            "by_source": dict(sorted(g["by_source"].items())),
            "by_teacher": dict(sorted(g["by_teacher"].items())),
            "finish_reason": _counts(g["finish"]),
            "error_kinds": _counts(g["errors"]),
            "cost_usd": round(float(g["cost"]), 6),
            "prompt_tokens": int(g["prompt"]), "completion_tokens": int(g["completion"]),
            "completion_tokens_by_source": {s: describe(v)
                                            for s, v in self.tokens.arrays().items()},
        }
        out["verdicts"] = None if f.verdicts is None else {
            **_verdict_summary(self.ver_all),
            "by_method": _counts(self.methods, "none"),
            "by_source": {k: _verdict_summary(v) for k, v in sorted(self.ver_source.items())},
            "by_teacher": {k: _verdict_summary(v) for k, v in sorted(self.ver_teacher.items())},
        }
        if f.train is None and f.val is None:
            out["selected"] = None
        else:
            # Without generations, acceptance is measured against verdicts.
            base_src, base_teacher = g["by_source"], g["by_teacher"]
            if not base_src and f.verdicts is not None:
                base_src = Counter({k: v["total"] for k, v in self.ver_source.items()})
                base_teacher = Counter({k: v["total"] for k, v in self.ver_teacher.items()})
            acc_s, acc_t = self.acc_source, self.acc_teacher
            out["selected"] = {
                "train": self.sel["train"], "val": self.sel["val"],
                "questions": self.sel["questions"],
                "by_source": dict(sorted(acc_s.items())),
                "by_teacher": dict(sorted(acc_t.items())),
                "traces_per_question": {str(k): v
                                        for k, v in sorted(self.per_question_hist.items())},
                "acceptance_by_source": {s: _rate(acc_s.get(s, 0), n)
                                         for s, n in sorted(base_src.items())},
                "acceptance_by_teacher": {s: _rate(acc_t.get(s, 0), n)
                                          for s, n in sorted(base_teacher.items())},
                "target_chars_by_source": {s: describe(v)
                                           for s, v in self.chars.arrays().items()},
            }
        return out


def _verdict_summary(c: Counter) -> dict[str, Any]:
    out = {k: int(c[k]) for k in VERDICT_COUNTS}
    out["accuracy"] = _rate(c["correct"], c["correct"] + c["wrong"])
    out["unparsed_rate"] = _rate(c["unparsed"], c["total"])
    out["unterminated_rate"] = _rate(c["unterminated"], c["total"])
    return out


def _quarantine(files: list[Path] | None) -> dict[str, Any] | None:
    if files is None:
        return None
    total = 0
    stages, sources, reasons = Counter(), Counter(), Counter()
    for t in batches(files, QUARANTINE_COLUMNS):
        total += t.num_rows
        stages.update(value_counts(_a(t, "stage")))
        sources.update(value_counts(_a(t, "source")))
        reasons.update(zip(_a(t, "stage").to_pylist(), _a(t, "reason").to_pylist(),
                           strict=True))
    return {"total": total, "by_stage": _counts(stages),
            "by_reason": _counts(Counter({f"{s}: {r}": n for (s, r), n in reasons.items()})),
            "by_source": _counts(sources)}


def _run_recipe(root: Path) -> dict[str, Any]:
    """The recipe a run was made with (its recipe.yaml, after overrides), or {}."""
    import yaml

    try:
        data = yaml.safe_load((root / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def generation_checks(root: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Length-cut responses and questions with identical samples, per teacher, with the
    warnings the generate stage gives for them (thresholds: the run's `generate.warn`).

    None when the generate stage has not recorded them (not run yet, or a run made by a
    medrecipe before these checks).
    """
    from pydantic import ValidationError

    from medrecipe.config import GenerateWarnings, TeacherConfig
    from medrecipe.generate.checks import CHECK_COUNTS, check_warnings

    rec = (manifest.get("stages") or {}).get("generate") or {}
    checks = (rec.get("extra") or {}).get("output_checks")
    if not checks:
        return None
    recipe = _run_recipe(root)
    gen = recipe.get("generate") if isinstance(recipe.get("generate"), dict) else {}
    try:
        warn = GenerateWarnings.model_validate(gen.get("warn") or {})
    except ValidationError:
        warn = GenerateWarnings()
    teachers: dict[str, TeacherConfig] = {}
    for name, t in (recipe.get("teachers") or {}).items():
        try:
            teachers[name] = TeacherConfig.model_validate(t)
        except ValidationError:
            continue
    n = int(gen.get("n") or 0)

    def rates(c: dict[str, Any]) -> dict[str, Any]:
        out = {k: int(c.get(k, 0)) for k in CHECK_COUNTS}
        out["length_cut_rate"] = _rate(out["length_cut"], out["responses"])
        out["identical_rate"] = _rate(out["identical_items"], out["sampled_items"])
        return out

    return {**rates(checks), "n": n,
            "thresholds": {"length_cut": warn.length_cut,
                           "identical_samples": warn.identical_samples},
            "by_teacher": {t: rates(c) for t, c in sorted((checks.get("by_teacher")
                                                            or {}).items())},
            "warnings": check_warnings(checks, warn, n, teachers)}


def scan_run(run: Run | str | Path, examples: int = 0) -> RunScan:
    """Statistics, length distributions and (with examples > 0) example candidates of a
    run directory, from one streamed pass over its tables."""
    files = locate(run)
    m = files.manifest
    stats: dict[str, Any] = {
        "run": str(files.root),
        "recipe_name": m.get("recipe_name"),
        "recipe_hash": m.get("recipe_hash"),
        "medrecipe_version": m.get("medrecipe_version"),
        "stages": {name: {"complete": rec.get("complete", True), "rows": rec.get("rows", {}),
                          "seconds": rec.get("seconds")}
                   for name, rec in (m.get("stages") or {}).items()},
        "available": {k: getattr(files, k) is not None
                      for k in ("items", "generations", "verdicts", "train", "val", "quarantine")},
    }
    scanner = _Scanner(files, examples)
    scanner.run()
    sections = scanner.sections()
    stats.update({k: sections[k] for k in ("items", "generations", "verdicts", "selected")})
    sel_stage = (m.get("stages") or {}).get("select") or {}
    stats["select_stats"] = (sel_stage.get("extra") or {}).get("stats")
    stats["quarantine"] = _quarantine(files.quarantine)
    return RunScan(files=files, stats=json.loads(json.dumps(stats, default=str)),
                   token_lengths=scanner.tokens.arrays() if files.generations else {},
                   target_chars=scanner.chars.arrays(),
                   accepted=scanner.accepted.groups(), rejected=scanner.rejected.groups())


def summary_stats(run: Run | str | Path) -> dict[str, Any]:
    """Summary statistics of a run directory, for inspect and reports (streamed)."""
    return scan_run(run).stats
