"""The curation part of a run report: funnel, visual measures against thresholds, cards.

Everything is read from the run directory (manifest, curate/*.parquet, quarantine), so the
section can be rebuilt at any point of a curation run.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medrecipe.config import ReportConfig
from medrecipe.report.plots import bar, distributions, funnel_chart, threshold_histograms
from medrecipe.report.sample import TopK, round_robin
from medrecipe.report.scan import TEXT_BATCH_ROWS, batches, dataset_files, fetch_rows
from medrecipe.schema import LETTERS
from medrecipe.store import Run

MAX_PLOTTED = 200_000  # values per measure drawn in a histogram (an even subsample beyond)


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f" … [{len(text) - limit} more characters]"


def _records(run: Run, ids: set[str]) -> dict[str, dict[str, Any]]:
    from medrecipe.curate.stage import RECORDS_DIR

    folder = run.root / RECORDS_DIR
    ids = {i for i in ids if i}
    if not ids or not folder.exists():
        return {}
    files = [f for p in sorted(folder.glob("*.parquet")) for f in dataset_files(p)]
    # Records are not sharded by item id: each file is scanned, a batch at a time.
    return fetch_rows(files, "id", {i: i for i in ids})


def _visual_panels(run: Run) -> tuple[list[tuple[str, list[float], float | None, bool]],
                                       dict[str, Any]]:
    from medrecipe.curate.stage import MEASURES
    from medrecipe.curate.visual import CHECKS

    if not run.has(MEASURES):
        return [], {}
    rec = run.stage("curate.visual")
    thresholds = (rec.extra.get("thresholds") if rec else None) or {}
    step = max(1, run.num_rows(MEASURES) // MAX_PLOTTED)
    names = [c.measure for c in CHECKS]
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
    start = 0  # global row number of the batch's first row: every step-th row is drawn
    for t in batches(dataset_files(run.path(MEASURES)), {n: pa.float64() for n in names}):
        first = (-start) % step
        for n in names:
            kept[n].append(t.column(n).to_numpy()[first::step])
        start += t.num_rows
    panels = []
    for c in CHECKS:
        values = np.concatenate(kept[c.measure]) if kept[c.measure] else np.array([])
        panels.append((c.measure, [float(v) for v in values], thresholds.get(c.threshold),
                       c.minimum))
    return panels, {c.threshold: thresholds.get(c.threshold) for c in CHECKS}


def _question_view(q: dict[str, Any] | None) -> dict[str, Any] | None:
    if not q or "stem" not in q:
        return None
    correct = q.get("correct")
    return {"stem": q.get("stem"), "correct": correct, "rationale": q.get("rationale"),
            "options": [{"letter": LETTERS[i], "text": o, "correct": LETTERS[i] == correct}
                        for i, o in enumerate(q.get("options") or [])]}


def _card(record: dict[str, Any] | None, resolve, cfg: ReportConfig, **extra: Any
          ) -> dict[str, Any]:
    from medrecipe.report.html import thumbnail

    rec = record or {}
    limit = min(cfg.max_text_chars, 1500)
    return {"record_id": rec.get("id"), "image": thumbnail(rec["image"], resolve,
                                                           cfg.thumbnail_px)
            if rec.get("image") else None,
            "sub_caption": _cut(rec.get("sub_caption"), limit),
            "caption": _cut(rec.get("caption"), limit),
            "references": [_cut(r, limit) for r in (rec.get("references") or [])[:3]],
            **extra}


def _kept_cards(run: Run, resolve, cfg: ReportConfig) -> list[dict[str, Any]]:
    if not run.has("items") or cfg.examples <= 0:
        return []
    files = dataset_files(run.path("items"))
    sample = TopK(cfg.examples)
    for t in batches(files, {"id": pa.string(), "meta": pa.string()}):
        ids = t.column("id").to_pylist()
        meta = t.column("meta").to_pylist()
        family = [json.loads(m or "{}").get("family", "") for m in meta]
        sample.offer(family, ids, lambda i, ids=ids: ids[i])
    chosen = round_robin(sample.groups(), cfg.examples)
    rows = fetch_rows(files, "id", {i: i for i in chosen})
    picked = [rows[i] for i in chosen if i in rows]
    for row in picked:
        row["meta"] = json.loads(row["meta"] or "{}")
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
    qdir = run.root / "quarantine"
    if cfg.examples <= 0 or not qdir.exists():
        return []
    sample = TopK(2 * cfg.examples)
    # Dropped traces have their own side-by-side cards (draft, refined, verdicts).
    trace_stages = pa.array(["curate.draft", "curate.refine", "curate.verify"])
    # Whole rows (raw replies included), so batches of the text size.
    for t in batches(sorted(qdir.glob("*.parquet")), None, TEXT_BATCH_ROWS):
        stage = t.column("stage")
        t = t.filter(pc.and_(pc.fill_null(pc.starts_with(stage, "curate."), False),
                             pc.invert(pc.is_in(stage, value_set=trace_stages))))
        if not t.num_rows:
            continue
        stage, item, reason = (t.column(c).to_pylist() for c in ("stage", "item_id", "reason"))
        sample.offer([f"{s}: {r}" for s, r in zip(stage, reason, strict=True)],
                     [f"{s}{i}" for s, i in zip(stage, item, strict=True)],
                     lambda i, t=t: t.slice(i, 1).to_pylist()[0])
    picked = round_robin(sample.groups(), 2 * cfg.examples)
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
                         detail=_cut(row["detail"], 600),
                         reply=_cut(raw.get("reply"), 1200) if raw.get("reply") else None))
    return out


def curate_report(run: Run, resolve, cfg: ReportConfig, out_dir: Path) -> dict[str, Any] | None:
    """The curation section's data and plot files (None for a run that is not a curation)."""
    if run.manifest.get("kind") != "curate":
        return None
    from medrecipe.curate.stage import funnel

    f = funnel(run, list(run.manifest.get("sources", {})))
    plots: dict[str, Path | None] = {}
    plots["funnel"] = funnel_chart(f["stages"], out_dir / "curate_funnel.png",
                                   "Curation funnel: kept and removed per stage")
    removals = Counter({f"{s['stage']}: {r}": n for s in f["stages"]
                        for r, n in s["removed"].items()})
    plots["removals"] = bar(dict(removals), out_dir / "curate_removals.png",
                            "Removed per stage and reason", "rows")
    plots["by_category"] = bar(f["by_category"], out_dir / "curate_by_category.png",
                               "Items per task category", "items")
    plots["by_family"] = bar(f["by_family"], out_dir / "curate_by_family.png",
                             "Items per task family", "items")
    panels, thresholds = _visual_panels(run)
    plots["visual"] = threshold_histograms(panels, out_dir / "curate_visual.png",
                                           "Visual measures of every image, with thresholds")
    medians = {name: (float(np.nanmedian(v)) if v and not np.all(np.isnan(v)) else None)
               for name, v, _, _ in panels}
    traces = trace_report(run, resolve, cfg, out_dir)
    if traces is not None:
        plots.update(traces.pop("plots"))
    return {"funnel": f, "plots": {k: v for k, v in plots.items() if v is not None},
            "thresholds": thresholds, "medians": medians,
            "kept": _kept_cards(run, resolve, cfg), "dropped": _dropped_cards(run, resolve, cfg),
            "traces": traces}


# --------------------------------------------------------------------------- part 2: traces


LIGHT = {"item_id": pa.string(), "kept": pa.bool_(), "status": pa.string(),
         "failed": pa.list_(pa.string())}  # what a trace's outcome is decided from


def _by_item(run: Run, table: str) -> dict[str, dict[str, Any]]:
    """{item id: its outcome columns} of a trace table (the texts are fetched per card)."""
    out: dict[str, dict[str, Any]] = {}
    for t in batches(dataset_files(run.path(table)), LIGHT):
        for row in t.to_pylist():
            out[row["item_id"]] = row
    return out


def _full_rows(run: Run, table: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    return fetch_rows(dataset_files(run.path(table)), "item_id", {i: i for i in ids})


def _outcome(item_id: str, refined: dict, verified: dict, traced: set[str]) -> str:
    if item_id in traced:
        return "kept"
    r = refined.get(item_id)
    if r is None or r["status"] == "pending":
        return "not refined"
    if not r["kept"]:
        return (r["failed"] or [f"refine_{r['status']}"])[0]
    v = verified.get(item_id)
    if v is None or v["status"] == "pending":
        return "not verified"
    if v["status"] != "ok":
        return "verify_unparsed" if v["status"] == "unparsed" else "verify_failed"
    return f"verify:{v['failed'][0]}" if v["failed"] else "kept"


def _trace_cards(run: Run, resolve, cfg: ReportConfig) -> list[dict[str, Any]]:
    """Draft, refined sections and verdicts side by side, with the image and source texts."""
    from medrecipe.curate.trace_stage import DRAFTS, REFINED, TRACED, VERIFIED
    from medrecipe.curate.traces import SECTION_TITLES, SECTIONS, VERIFY_CRITERIA
    from medrecipe.report.html import thumbnail

    drafts = _by_item(run, DRAFTS)
    if not drafts or cfg.examples <= 0 or not run.has("items"):
        return []
    refined, verified = _by_item(run, REFINED), _by_item(run, VERIFIED)
    traced = {i for t in batches(dataset_files(run.path(TRACED)), {"id": pa.string()})
              for i in t.column("id").to_pylist()}
    sample = TopK(2 * cfg.examples)
    ids = [i for i, d in drafts.items() if d["kept"]]
    sample.offer([_outcome(i, refined, verified, traced) for i in ids], ids, ids.__getitem__)
    picked = round_robin(sample.groups(), 2 * cfg.examples)
    items = fetch_rows(dataset_files(run.path("items")), "id", {i: i for i in picked})
    drafts, refined, verified = (_full_rows(run, name, picked)
                                 for name in (DRAFTS, REFINED, VERIFIED))
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
            "sub_caption": _cut(ctx.get("sub_caption"), limit),
            "caption": _cut(ctx.get("caption"), limit),
            "references": [_cut(x, limit) for x in (ctx.get("references") or [])[:3]],
            "question": _question_view({"stem": it["question"], "options": it["options"],
                                        "correct": it["answer"]}),
            "draft": _cut(drafts[item_id]["draft"], limit),
            "sections": [(SECTION_TITLES[k], sections[k]) for k in SECTIONS] if sections
            else None,
            "refine_detail": _cut(r.get("detail"), 600),
            "refine_reply": _cut(r.get("text"), limit) if not sections else None,
            "verdicts": [(c, verdicts[c]["verdict"], verdicts[c]["reason"])
                         for c in VERIFY_CRITERIA] if verdicts else None,
            "verify_reply": _cut(v.get("text"), limit) if v and not verdicts else None,
            "verify_status": v.get("status")})
    return out


def trace_report(run: Run, resolve, cfg: ReportConfig, out_dir: Path) -> dict[str, Any] | None:
    """The trace part of the curation section (None before part 2 ran)."""
    from medrecipe.curate.compose import compose_funnel
    from medrecipe.curate.trace_stage import TRACED, trace_funnel
    from medrecipe.curate.traces import SECTIONS

    f = trace_funnel(run)
    if f is None:
        return None
    plots: dict[str, Path | None] = {}
    plots["trace_removals"] = bar({f"{s['stage']}: {r}": n for s in f["stages"]
                                   for r, n in s["removed"].items()},
                                  out_dir / "curate_trace_removals.png",
                                  "Traces removed per stage and reason", "items")
    plots["trace_criteria"] = bar(f["failed_by_criterion"], out_dir / "curate_trace_criteria.png",
                                  "Verified traces failing each criterion", "traces")
    if run.has(TRACED):
        words: dict[str, list[float]] = {k: [] for k in SECTIONS}
        for meta in (m for t in batches(dataset_files(run.path(TRACED)), {"meta": pa.string()})
                     for m in t.column("meta").to_pylist()):
            n = (json.loads(meta or "{}").get("trace") or {}).get("words") or {}
            for k in SECTIONS:
                if k in n:
                    words[k].append(float(n[k]))
        plots["trace_words"] = distributions(words, out_dir / "curate_trace_words.png",
                                             "Words per trace section (kept traces)", "words")
    return {"funnel": f, "compose": compose_funnel(run), "cards": _trace_cards(run, resolve, cfg),
            "plots": plots}
