"""The report's statistics, plots and example picks as they were computed before issue 15,
from whole tables in memory: the reference the streamed report must equal on small runs.

Frozen copy of report/stats.py, the example pickers of report/html.py and make_plots of
report/plots.py at commit 1d30849, and of the curation cards of report/curate.py at 34d3fd0;
only imports and names were adjusted. Do not "fix" it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medrecipe.config import ReportConfig
from medrecipe.report.curate import MAX_PLOTTED, _card, _outcome, _question_view
from medrecipe.report.curate import _cut as _curate_cut
from medrecipe.report.html import ImageResolver, _cut, _item_view
from medrecipe.report.plots import _MPL, MAX_BARS, _figure, _save, bar, grouped_rates, histogram
from medrecipe.select import SELECTED_TRAIN, SELECTED_VAL
from medrecipe.store import Run

ITEM_COLUMNS = ["id", "source", "split", "task", "question", "options", "answer", "images",
                "modality", "anatomy"]
# Response texts are not loaded here (they can be gigabytes); see generation_texts.
GEN_COLUMNS = ["key", "item_id", "source", "teacher", "model", "sample_index",
               "finish_reason", "completion_tokens", "prompt_tokens", "cost_usd", "error"]


@dataclass
class RunTables:
    """The tables of a run directory; None where a stage has not written its output."""

    root: Path
    manifest: dict[str, Any]
    items: pa.Table | None = None
    generations: pa.Table | None = None
    verdicts: pa.Table | None = None
    train: pa.Table | None = None
    val: pa.Table | None = None
    quarantine: pa.Table | None = None

    @property
    def selected(self) -> pa.Table | None:
        parts = [t for t in (self.train, self.val) if t is not None]
        if not parts:
            return None
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _read(path: Path, columns: list[str] | None = None) -> pa.Table | None:
    """A Parquet file or a folder of shards (only the columns it has), or None."""
    from medrecipe.shards import iter_batches

    if not path.exists():
        return None
    parts = list(iter_batches(path, 65_536, columns))
    if parts:
        return pa.concat_tables(parts)
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files:
        return None
    schema = pq.read_schema(files[0])
    cols = [c for c in columns if c in schema.names] if columns else schema.names
    return schema.empty_table().select(cols)


def load_run_tables(run: Run | str | Path) -> RunTables:
    """Read the tables present in a run directory (items fall back to ingest/*.parquet)."""
    if not isinstance(run, Run):
        run = Run(run, create=False)
    root = run.root
    items = _read(run.path("items_labelled"), ITEM_COLUMNS)
    if items is None:
        items = _read(run.path("items"), ITEM_COLUMNS)
    if items is None:
        parts = [_read(p, ITEM_COLUMNS) for p in sorted((root / "ingest").glob("*.parquet"))]
        parts = [p for p in parts if p is not None]
        if parts:
            items = pa.concat_tables(parts, promote_options="default")
    quarantine = run.read_quarantine() if (root / "quarantine").exists() else None
    return RunTables(
        root=root,
        manifest=dict(run.manifest) if run.manifest_path.exists() else {},
        items=items,
        generations=_read(run.path("generations"), GEN_COLUMNS),
        verdicts=_read(run.path("verdicts")),
        train=_read(run.path(SELECTED_TRAIN)),
        val=_read(run.path(SELECTED_VAL)),
        quarantine=quarantine,
    )


def generation_texts(t: RunTables, keys: set[str]) -> dict[str, dict[str, Any]]:
    """{key: {"text", "error"}} for a few generation keys, read from the run's Parquet file."""
    if not keys:
        return {}
    if t.generations is not None and "text" in t.generations.column_names:
        table = t.generations
    else:
        path = t.root / "generations.parquet"
        if not path.exists():
            return {}
        table = pq.read_table(path, columns=["key", "text", "error"],
                              filters=[("key", "in", sorted(keys))])
    return {k: {"text": x, "error": e}
            for k, x, e in zip(_col(table, "key"), _col(table, "text"), _col(table, "error"),
                               strict=True) if k in keys}


def _col(table: pa.Table, name: str, default: Any = None) -> list[Any]:
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [default] * table.num_rows


def _counts(values: list[Any], none_label: str = "(unknown)") -> dict[str, int]:
    c = Counter(none_label if v in (None, "") else str(v) for v in values)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def describe(values: list[float] | np.ndarray) -> dict[str, float] | None:
    """n, mean, median, p90, max of a list of numbers (None when empty)."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return None
    return {"n": int(arr.size), "mean": round(float(arr.mean()), 2),
            "median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)),
            "max": float(arr.max())}


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def item_source_map(t: RunTables) -> dict[str, str]:
    if t.items is None:
        return {}
    return dict(zip(_col(t.items, "id"), _col(t.items, "source"), strict=True))


def verdict_frame(t: RunTables) -> list[dict[str, Any]] | None:
    """Verdict rows with source (from items when missing) and whether the request failed."""
    if t.verdicts is None:
        return None
    src = item_source_map(t)
    failed: set[str] = set()
    if t.generations is not None:
        failed = {k for k, e in zip(_col(t.generations, "key"), _col(t.generations, "error"),
                                    strict=True) if e}
    rows = t.verdicts.to_pylist()
    for r in rows:
        r["source"] = src.get(r["item_id"]) or r.get("source") or ""
        r["teacher"] = r.get("teacher") or ""
        r["failed"] = r["key"] in failed
        r["unparsed"] = (r.get("answer") is None and not r["failed"]
                         and r.get("terminated") is not False)
    return rows


def _verdict_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    c: Counter = Counter()
    for r in rows:
        c["total"] += 1
        c["correct"] += r.get("correct") is True
        c["wrong"] += r.get("correct") is False
        c["unparsed"] += r["unparsed"]
        c["invalid"] += bool(r.get("invalid"))  # unparsed because the final answer was not valid
        c["unterminated"] += r.get("terminated") is False
        c["failed"] += r["failed"]
        c["ungradable"] += r.get("correct") is None
    out = {k: int(c[k]) for k in ("total", "correct", "wrong", "unparsed", "invalid",
                                  "unterminated", "failed", "ungradable")}
    out["accuracy"] = _rate(c["correct"], c["correct"] + c["wrong"])
    out["unparsed_rate"] = _rate(c["unparsed"], c["total"])
    out["unterminated_rate"] = _rate(c["unterminated"], c["total"])
    return out


def compute_stats(t: RunTables) -> dict[str, Any]:
    """Summary statistics of a run's tables (JSON-serialisable)."""
    m = t.manifest
    out: dict[str, Any] = {
        "run": str(t.root),
        "recipe_name": m.get("recipe_name"),
        "recipe_hash": m.get("recipe_hash"),
        "medrecipe_version": m.get("medrecipe_version"),
        "stages": {name: {"complete": rec.get("complete", True), "rows": rec.get("rows", {}),
                          "seconds": rec.get("seconds")}
                   for name, rec in (m.get("stages") or {}).items()},
        "available": {k: getattr(t, k) is not None
                      for k in ("items", "generations", "verdicts", "train", "val", "quarantine")},
    }
    src_of = item_source_map(t)

    # -- items
    if t.items is not None:
        it = t.items
        out["items"] = {
            "total": it.num_rows,
            "by_source": _counts(_col(it, "source")),
            "by_task": _counts(_col(it, "task")),
            "by_modality": _counts(_col(it, "modality")),
            "by_anatomy": _counts(_col(it, "anatomy")),
            "by_split": _counts(_col(it, "split")),
            "with_images": sum(1 for v in _col(it, "images") if v),
        }
    else:
        out["items"] = None

    # -- generations
    gen_by_source: Counter = Counter()
    gen_by_teacher: Counter = Counter()
    if t.generations is not None:
        g = t.generations
        srcs = [src_of.get(i) or s or "" for i, s in zip(_col(g, "item_id"), _col(g, "source"),
                                                          strict=True)]
        teachers = [x or "" for x in _col(g, "teacher")]
        gen_by_source.update(srcs)
        gen_by_teacher.update(teachers)
        errors = _col(g, "error")
        tokens = _col(g, "completion_tokens")
        tok_by_source: dict[str, list[int]] = defaultdict(list)
        for s, n, e in zip(srcs, tokens, errors, strict=True):
            if not e and n is not None:
                tok_by_source[s].append(n)
        out["generations"] = {
            "total": g.num_rows,
            "failed": sum(1 for e in errors if e),
            "by_source": dict(sorted(gen_by_source.items())),
            "by_teacher": dict(sorted(gen_by_teacher.items())),
            "finish_reason": _counts(_col(g, "finish_reason")),
            "error_kinds": _counts([str(e).split(":")[0][:60] for e in errors if e]),
            "cost_usd": round(float(sum(c or 0.0 for c in _col(g, "cost_usd"))), 6),
            "prompt_tokens": int(sum(n or 0 for n in _col(g, "prompt_tokens"))),
            "completion_tokens": int(sum(n or 0 for n in tokens)),
            "completion_tokens_by_source": {s: describe(v) for s, v in sorted(tok_by_source.items())},
        }
    else:
        out["generations"] = None

    # -- verdicts
    vrows = verdict_frame(t)
    if vrows is not None:
        by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
        by_teacher: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in vrows:
            by_source[r["source"]].append(r)
            by_teacher[r["teacher"]].append(r)
        out["verdicts"] = {
            **_verdict_counts(vrows),
            "by_method": _counts([r.get("method") for r in vrows], "none"),
            "by_source": {k: _verdict_counts(v) for k, v in sorted(by_source.items())},
            "by_teacher": {k: _verdict_counts(v) for k, v in sorted(by_teacher.items())},
        }
    else:
        out["verdicts"] = None

    # -- selection
    sel = t.selected
    if sel is not None:
        per_q = Counter(_col(sel, "item_id"))
        acc_src = Counter(_col(sel, "source"))
        acc_teacher = Counter(x or "" for x in _col(sel, "teacher"))
        # Without generations, acceptance is measured against verdicts.
        base_src, base_teacher = gen_by_source, gen_by_teacher
        if not base_src and vrows is not None:
            base_src = Counter(r["source"] for r in vrows)
            base_teacher = Counter(r["teacher"] for r in vrows)
        chars_by_source: dict[str, list[int]] = defaultdict(list)
        for s, target in zip(_col(sel, "source"), _col(sel, "target", ""), strict=True):
            chars_by_source[s].append(len(target or ""))
        out["selected"] = {
            "train": t.train.num_rows if t.train is not None else 0,
            "val": t.val.num_rows if t.val is not None else 0,
            "questions": len(per_q),
            "by_source": dict(sorted(acc_src.items())),
            "by_teacher": dict(sorted(acc_teacher.items())),
            "traces_per_question": {str(k): v for k, v in sorted(Counter(per_q.values()).items())},
            "acceptance_by_source": {s: _rate(acc_src.get(s, 0), n) for s, n in sorted(base_src.items())},
            "acceptance_by_teacher": {s: _rate(acc_teacher.get(s, 0), n)
                                      for s, n in sorted(base_teacher.items())},
            "target_chars_by_source": {s: describe(v) for s, v in sorted(chars_by_source.items())},
        }
    else:
        out["selected"] = None
    sel_stage = (m.get("stages") or {}).get("select") or {}
    out["select_stats"] = (sel_stage.get("extra") or {}).get("stats")

    # -- quarantine
    if t.quarantine is not None:
        q = t.quarantine
        out["quarantine"] = {
            "total": q.num_rows,
            "by_stage": _counts(_col(q, "stage")),
            "by_reason": _counts([f"{s}: {r}" for s, r in zip(_col(q, "stage"), _col(q, "reason"),
                                                                strict=True)]),
            "by_source": _counts(_col(q, "source")),
        }
    else:
        out["quarantine"] = None
    return json.loads(json.dumps(out, default=str))




def _order(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _round_robin(groups: dict[str, list[Any]], n: int) -> list[Any]:
    out: list[Any] = []
    queues = {k: list(v) for k, v in sorted(groups.items())}
    while len(out) < n and any(queues.values()):
        for k in list(queues):
            if queues[k] and len(out) < n:
                out.append(queues[k].pop(0))
    return out


def accepted_examples(t: RunTables, resolve: ImageResolver | None, cfg: ReportConfig
                      ) -> list[dict[str, Any]]:
    """Selected traces, spread over sources, in a stable order."""
    sel = t.selected
    if sel is None or cfg.examples <= 0:
        return []
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(sel.to_pylist(), key=lambda r: _order(r["id"])):
        groups[row["source"]].append(row)
    out = []
    for row in _round_robin(groups, cfg.examples):
        view = _item_view(row, resolve, cfg)
        view.update(kind="accepted", source=row["source"], item_id=row["item_id"],
                    teacher=row.get("teacher"), method=row.get("method"),
                    extracted=None, split=row.get("split"),  # accepted: equals the truth
                    text=_cut(row.get("target"), cfg.max_text_chars))
        out.append(view)
    return out


def rejected_examples(t: RunTables, resolve: ImageResolver | None, cfg: ReportConfig
                      ) -> list[dict[str, Any]]:
    """Wrong, unparsed, unterminated and failed traces, a few of each kind."""
    vrows = verdict_frame(t)
    if not vrows or cfg.examples <= 0:
        return []
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(vrows, key=lambda r: _order(r["key"])):
        if r.get("correct") is True and r.get("terminated") is not False:
            continue
        reason = ("failed request" if r["failed"] else
                  "unterminated" if r.get("terminated") is False else
                  "unparsed" if r["unparsed"] else
                  "wrong answer" if r.get("correct") is False else "not gradable")
        r["reason"] = reason
        groups[reason].append(r)
    picked = _round_robin(groups, cfg.examples)
    if not picked:
        return []
    keys = {r["key"] for r in picked}
    gens = generation_texts(t, keys)
    items: dict[str, dict[str, Any]] = {}
    if t.items is not None:
        wanted = {r["item_id"] for r in picked}
        for row in t.items.to_pylist():
            if row["id"] in wanted:
                items[row["id"]] = row
    out = []
    for r in picked:
        g = gens.get(r["key"], {})
        view = _item_view(items.get(r["item_id"]), resolve, cfg)
        text = g.get("text") if g.get("text") is not None else (g.get("error") or "")
        view.update(kind=r["reason"], source=r["source"], item_id=r["item_id"],
                    teacher=r["teacher"], method=r.get("method"), extracted=r.get("answer"),
                    split=None, text=_cut(text, cfg.max_text_chars))
        out.append(view)
    return out


def distributions(values: dict[str, list[float]], path: Path, title: str,
                  xlabel: str) -> Path | None:
    """Box plots of one numeric distribution per group."""
    values = {k: v for k, v in values.items() if v}
    if not values:
        return None
    labels = sorted(values)[:MAX_BARS]
    fig = _figure(7.0, max(2.2, 0.4 * len(labels) + 1.2))
    ax = fig.add_subplot()
    # matplotlib >= 3.10 names the direction `orientation`; older versions take `vert`.
    direction = ({"orientation": "horizontal"} if _MPL >= (3, 10) else {"vert": False})
    ax.boxplot([values[k] for k in labels], showfliers=True, flierprops={"markersize": 2},
               **direction)
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path)


def make_plots(t: RunTables, stats: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write every plot the available tables allow; returns {name: png path}."""
    out: dict[str, Path | None] = {}
    items = stats.get("items")
    if items:
        for key, label in (("source", "source"), ("task", "task"), ("modality", "modality"),
                           ("anatomy", "anatomy")):
            out[f"items_by_{key}"] = bar(items[f"by_{key}"], out_dir / f"items_by_{key}.png",
                                         f"Items per {label}", "items")
    sel = stats.get("selected")
    if sel:
        out["acceptance_by_source"] = bar(sel["acceptance_by_source"],
                                          out_dir / "acceptance_by_source.png",
                                          "Acceptance rate per source (accepted / generated)",
                                          percent=True)
        out["acceptance_by_teacher"] = bar(sel["acceptance_by_teacher"],
                                           out_dir / "acceptance_by_teacher.png",
                                           "Acceptance rate per teacher (accepted / generated)",
                                           percent=True)
        out["traces_per_question"] = histogram(
            {int(k): v for k, v in sel["traces_per_question"].items()},
            out_dir / "traces_per_question.png", "Accepted traces per question",
            "accepted traces")
        sel_table = t.selected
        chars: dict[str, list[float]] = defaultdict(list)
        for s, target in zip(_col(sel_table, "source"), _col(sel_table, "target", ""), strict=True):
            chars[s].append(len(target or ""))
        out["trace_length"] = distributions(chars, out_dir / "trace_length.png",
                                            "Accepted trace length per source", "characters")
    if t.generations is not None:
        src_of = item_source_map(t)
        tokens: dict[str, list[float]] = defaultdict(list)
        for item_id, s, n, e in zip(_col(t.generations, "item_id"), _col(t.generations, "source"),
                                    _col(t.generations, "completion_tokens"),
                                    _col(t.generations, "error"), strict=True):
            if not e and n is not None:
                tokens[src_of.get(item_id) or s or ""].append(n)
        out["response_tokens"] = distributions(tokens, out_dir / "response_tokens.png",
                                               "Response tokens per source", "completion tokens")
    ver = stats.get("verdicts")
    if ver:
        series = ["unparsed_rate", "unterminated_rate"]
        out["unparsed_by_source"] = grouped_rates(
            {k: {s: v.get(s) for s in series} for k, v in ver["by_source"].items()}, series,
            out_dir / "unparsed_by_source.png", "Unparsed and unterminated responses per source")
        out["unparsed_by_teacher"] = grouped_rates(
            {k: {s: v.get(s) for s in series} for k, v in ver["by_teacher"].items()}, series,
            out_dir / "unparsed_by_teacher.png", "Unparsed and unterminated responses per teacher")
    q = stats.get("quarantine")
    if q and q["total"]:
        out["quarantine_reasons"] = bar(Counter(q["by_reason"]), out_dir / "quarantine_reasons.png",
                                        "Quarantined rows per stage and reason", "rows")
    return {k: v for k, v in out.items() if v is not None}



# ---- the curation section's samples (report/curate.py)

def _records(run: Run, ids: set[str]) -> dict[str, dict[str, Any]]:
    from medrecipe.curate.stage import RECORDS_DIR

    out: dict[str, dict[str, Any]] = {}
    folder = run.root / RECORDS_DIR
    if not ids or not folder.exists():
        return out
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = pa.array(sorted(ids), pa.string())
    for p in sorted(folder.glob("*.parquet")):
        t = pq.read_table(p)
        for row in t.filter(pc.is_in(t.column("id"), wanted)).to_pylist():
            out[row["id"]] = row
    return out


def _visual_panels(run: Run) -> tuple[list[tuple[str, list[float], float | None, bool]],
                                       dict[str, Any]]:
    from medrecipe.curate.stage import MEASURES
    from medrecipe.curate.visual import CHECKS

    if not run.has(MEASURES):
        return [], {}
    rec = run.stage("curate.visual")
    thresholds = (rec.extra.get("thresholds") if rec else None) or {}
    t = run.read_table(MEASURES, columns=[c.measure for c in CHECKS])
    step = max(1, t.num_rows // MAX_PLOTTED)
    panels = []
    for c in CHECKS:
        values = t.column(c.measure).to_numpy(zero_copy_only=False)[::step]
        panels.append((c.measure, [float(v) for v in values], thresholds.get(c.threshold),
                       c.minimum))
    return panels, {c.threshold: thresholds.get(c.threshold) for c in CHECKS}


def _kept_cards(run: Run, resolve, cfg: ReportConfig) -> list[dict[str, Any]]:
    if not run.has("items") or cfg.examples <= 0:
        return []
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(run.read_table("items").to_pylist(), key=lambda r: _order(r["id"])):
        row["meta"] = json.loads(row["meta"] or "{}")
        groups[row["meta"].get("family", "")].append(row)
    picked = _round_robin(groups, cfg.examples)
    records = _records(run, {r["meta"].get("record_id") for r in picked})
    out = []
    for row in picked:
        m = row["meta"]
        q = {"stem": row["question"], "options": row["options"], "correct": row["answer"],
             "rationale": m.get("rationale")}
        out.append(_card(records.get(m.get("record_id")), resolve, cfg, kind="kept",
                         item_id=row["id"], category=m.get("category_label"),
                         family=m.get("family"), stem_style=m.get("stem_style"),
                         answer_format=m.get("answer_format"), question=_question_view(q),
                         stage=None, reason=None, detail=None, reply=None))
    return out


def _dropped_cards(run: Run, resolve, cfg: ReportConfig) -> list[dict[str, Any]]:
    q = run.read_quarantine()
    if not q.num_rows or cfg.examples <= 0:
        return []
    q = q.filter(pc.starts_with(q.column("stage"), "curate."))
    # Dropped traces have their own side-by-side cards (draft, refined, verdicts).
    q = q.filter(pc.invert(pc.is_in(q.column("stage"), pa.array(
        ["curate.draft", "curate.refine", "curate.verify"]))))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(q.to_pylist(), key=lambda r: _order(f"{r['stage']}{r['item_id']}")):
        groups[f"{row['stage']}: {row['reason']}"].append(row)
    picked = _round_robin(groups, 2 * cfg.examples)
    records = _records(run, {(r["item_id"] or "").split("#")[0] for r in picked})
    out = []
    for row in picked:
        try:
            raw = json.loads(row["raw"]) if row["raw"] else {}
        except json.JSONDecodeError:
            raw = {}
        raw = raw if isinstance(raw, dict) else {}
        rid, _, category = (row["item_id"] or "").partition("#")
        out.append(_card(records.get(rid), resolve, cfg, kind="dropped", item_id=row["item_id"],
                         category=category or None, family=None, stem_style=raw.get("stem_style"),
                         answer_format=raw.get("answer_format"), question=_question_view(raw),
                         stage=row["stage"], reason=row["reason"],
                         detail=_curate_cut(row["detail"], 600),
                         reply=_curate_cut(raw.get("reply"), 1200) if raw.get("reply") else None))
    return out


def _by_item(run: Run, table: str) -> dict[str, dict[str, Any]]:
    return {r["item_id"]: r for r in run.read_table(table).to_pylist()} if run.has(table) else {}


def _trace_cards(run: Run, resolve, cfg: ReportConfig) -> list[dict[str, Any]]:
    """Draft, refined sections and verdicts side by side, with the image and source texts."""
    from medrecipe.curate.trace_stage import DRAFTS, REFINED, TRACED, VERIFIED
    from medrecipe.curate.traces import SECTION_TITLES, SECTIONS, VERIFY_CRITERIA
    from medrecipe.report.html import thumbnail

    drafts = _by_item(run, DRAFTS)
    if not drafts or cfg.examples <= 0 or not run.has("items"):
        return []
    refined, verified = _by_item(run, REFINED), _by_item(run, VERIFIED)
    traced = set(run.read_table(TRACED, columns=["id"]).column(0).to_pylist()) \
        if run.has(TRACED) else set()
    groups: dict[str, list[str]] = defaultdict(list)
    for item_id in sorted((i for i, d in drafts.items() if d["kept"]), key=_order):
        groups[_outcome(item_id, refined, verified, traced)].append(item_id)
    picked = _round_robin(groups, 2 * cfg.examples)
    items = {r["id"]: r for r in run.read_table("items").to_pylist() if r["id"] in set(picked)}
    limit = min(cfg.max_text_chars, 2000)
    out = []
    for item_id in picked:
        it = items.get(item_id)
        if it is None:
            continue
        meta = json.loads(it["meta"] or "{}")
        ctx = meta.get("source_context") or {}
        r, v = refined.get(item_id) or {}, verified.get(item_id) or {}
        sections = json.loads(r["sections"]) if r.get("sections") else None
        verdicts = json.loads(v["verdicts"]) if v.get("verdicts") else None
        outcome = _outcome(item_id, refined, verified, traced)
        out.append({
            "item_id": item_id, "outcome": outcome, "kept": outcome == "kept",
            "category": meta.get("category_label"), "family": meta.get("family"),
            "image": thumbnail(it["images"][0], resolve, cfg.thumbnail_px)
            if it["images"] else None,
            "sub_caption": _curate_cut(ctx.get("sub_caption"), limit),
            "caption": _curate_cut(ctx.get("caption"), limit),
            "references": [_curate_cut(x, limit) for x in (ctx.get("references") or [])[:3]],
            "question": _question_view({"stem": it["question"], "options": it["options"],
                                        "correct": it["answer"]}),
            "draft": _curate_cut(drafts[item_id]["draft"], limit),
            "sections": [(SECTION_TITLES[k], sections[k]) for k in SECTIONS] if sections
            else None,
            "refine_detail": _curate_cut(r.get("detail"), 600),
            "refine_reply": _curate_cut(r.get("text"), limit) if not sections else None,
            "verdicts": [(c, verdicts[c]["verdict"], verdicts[c]["reason"])
                         for c in VERIFY_CRITERIA] if verdicts else None,
            "verify_reply": _curate_cut(v.get("text"), limit) if v and not verdicts else None,
            "verify_status": v.get("status")})
    return out
