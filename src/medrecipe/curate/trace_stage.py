"""Curation part 2, the trace stages: draft, refine and verify, then Items with traces.

    curate.draft    one draft per item with source context    curate/drafts.parquet
    curate.refine   three sections, code checks               curate/refined.parquet
    curate.verify   a verdict per criterion                   curate/verified.parquet
    curate.traces   Items with meta.reference_trace           curate/traced_items.parquet

Each stage writes one row per item it saw (`kept`, `status`, what the model said, why it
went) and quarantines what it drops under a reason, so the funnel can be rebuilt from the
tables and a user can see why each trace went. The unit is an Item (`items.parquet`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from medrecipe.config import config_hash
from medrecipe.curate import traces as tr
from medrecipe.curate.calls import AskResult, Prompt, Reply
from medrecipe.curate.config import ModelStep
from medrecipe.curate.stage import (
    ITEMS,
    CurateContext,
    _load,
    _log_stage,
    _model_extra,
    _step_hash,
    funnel_entry,
    kept_ids,
    output_fingerprint,
    quarantine_row,
)
from medrecipe.schema import ITEM_SCHEMA, LETTERS, Item, items_from_table, to_table
from medrecipe.store import StageResult, run_stage

DRAFTS = "curate/drafts"
REFINED = "curate/refined"
VERIFIED = "curate/verified"
TRACED = "curate/traced_items"

_BASE = [pa.field("item_id", pa.string()), pa.field("source", pa.string()),
         pa.field("kept", pa.bool_()), pa.field("status", pa.string())]
_CALL = [pa.field("text", pa.string()), pa.field("attempts", pa.int32()),
         pa.field("error", pa.string()), pa.field("key", pa.string()),
         pa.field("model", pa.string())]
DRAFT_SCHEMA = pa.schema([*_BASE, pa.field("article_id", pa.string()),
                          pa.field("context_words", pa.int32()),
                          pa.field("draft", pa.string()), *_CALL])
REFINE_SCHEMA = pa.schema([*_BASE, pa.field("sections", pa.string()),  # JSON object
                           pa.field("failed", pa.list_(pa.string())),
                           pa.field("detail", pa.string()), *_CALL])
VERIFY_SCHEMA = pa.schema([*_BASE, pa.field("verdicts", pa.string()),  # JSON object
                           pa.field("failed", pa.list_(pa.string())), *_CALL])


# --------------------------------------------------------------------------- helpers


def read_items(ctx: CurateContext, ids: set[str] | None = None) -> list[Item]:
    """The run's curated Items (only `ids` when given), in table order."""
    if not ctx.run.has(ITEMS):
        return []
    items = items_from_table(ctx.run.read_table(ITEMS))
    return items if ids is None else [it for it in items if it.id in ids]


def prompt_vars(item: Item, **extra: Any) -> dict[str, Any]:
    """Variables of the trace templates beyond an Item's own: source texts and the answer."""
    meta = item.meta or {}
    context = {**tr.source_context(meta), "panel": meta.get("panel"),
               "modality": item.modality}
    return {"context": context, "answer_letter": item.answer,
            "answer_text": item.options[LETTERS.index(item.answer)] if item.options
            else item.answer, **extra}


def _prompt(tpl, item: Item, step: ModelStep, suffix: str, **extra: Any) -> Prompt:
    shown = item if step.with_image else item.model_copy(update={"images": []})
    return Prompt(f"{item.id}#{suffix}", tpl.render(shown, **prompt_vars(item, **extra)))


def _call_fields(reply: Reply) -> dict[str, Any]:
    last = reply.generations[-1] if reply.generations else None
    return {"text": reply.text, "attempts": reply.attempts, "error": reply.error,
            "key": last.key if last is not None else None,
            "model": last.model if last is not None else None}


def _failure(reply: Reply, step: str) -> str:
    return f"{step}_unparsed" if reply.status == "unparsed" else f"{step}_failed"


@dataclass
class _Tally:
    """What one trace stage removed (by reason), quarantined and left waiting."""

    stage: str
    removed: Counter = field(default_factory=Counter)
    quarantine: list = field(default_factory=list)
    pending: int = 0

    def drop(self, it: Item, reason: str, detail: str, raw: Any = None) -> None:
        self.removed[reason] += 1
        self.quarantine.append(quarantine_row(f"curate.{self.stage}", it.source, it.id, reason,
                                              detail, raw))

    def unusable(self, it: Item, reply: Reply, reason: str | None = None) -> bool:
        """Count a reply without a parsed value (waiting, unparsed, failed); True if it is one."""
        if reply.status == "pending":
            self.pending += 1
            return True
        if reply.status == "ok":
            return False
        self.drop(it, reason or _failure(reply, self.stage), _detail(reply),
                  {"reply": reply.text})
        return True


def _detail(reply: Reply) -> str:
    if reply.status != "unparsed":
        return str(reply.error)
    n = reply.attempts
    return f"{n} repl{'y' if n == 1 else 'ies'}, none valid: {reply.error}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False)


def _model_stage(ctx: CurateContext, name: str, step: ModelStep, upstream: dict[str, str],
                 outputs: list[str], body: Callable[[], StageResult], what: str,
                 **extra_hash: Any) -> str:
    """Run one trace stage through the store (skipped when up to date) and log it."""
    tpl = _load(step)
    ran, rec = run_stage(ctx.run, f"curate.{name}", _step_hash(ctx, step, tpl, **extra_hash),
                         upstream, outputs, body, force=ctx.forced(name))
    _log_stage(ctx, name, ran, rec, what)
    return output_fingerprint(rec)


def _ask(ctx: CurateContext, step: ModelStep, prompts: list[Prompt],
         parse: Callable[[str, str | None], Any], description: str,
         sampling=None) -> AskResult:
    return ctx.caller().ask(prompts, step.teacher or "", _load(step), parse,
                            sampling or step.sampling, step.parse_retries,
                            description=description)


def _finish(ctx: CurateContext, t: _Tally, n_in: int, rows: list[dict[str, Any]],
            res: AskResult | None, **extra: Any) -> StageResult:
    """Write the stage's quarantine and return its result with its funnel line."""
    ctx.run.write_quarantine(f"curate.{t.stage}", t.quarantine)
    n_out = sum(1 for r in rows if r["kept"])
    out = {**(_model_extra(res) if res is not None else {}), **extra,
           "funnel": funnel_entry("item", n_in, n_out, t.removed, t.pending)}
    failed = sum(n for r, n in t.removed.items() if r.endswith("_failed"))
    return StageResult(rows={"kept": n_out, "removed": sum(t.removed.values()),
                             "pending": t.pending},
                       complete=t.pending == 0 and not failed, extra=out)


# --------------------------------------------------------------------------- draft


def draft_stage(ctx: CurateContext, upstream: str) -> str:
    """One draft per item with source context -> curate/drafts.parquet."""
    cfg = ctx.recipe.draft
    assert cfg is not None
    tpl = _load(cfg)

    def body() -> StageResult:
        items = read_items(ctx)
        rows, todo = [], []
        t = _Tally("draft")
        words: dict[str, int] = {}
        for it in items:
            words[it.id] = tr.context_words(tr.source_context(it.meta or {}))
            if words[it.id] < cfg.min_context_words:
                t.drop(it, "no_source_context",
                       f"the sub-caption, caption and in-text references hold {words[it.id]} "
                       f"words (draft.min_context_words is {cfg.min_context_words})")
                rows.append(_draft_row(it, words[it.id], "no_source_context"))
            else:
                todo.append(it)
        prompts = [_prompt(tpl, it, cfg, "draft") for it in todo]
        res = _ask(ctx, cfg, prompts, lambda _k, text: tr.parse_draft(text, cfg.min_words),
                   "trace drafts")
        for it in todo:
            reply = res.replies[f"{it.id}#draft"]
            row = _draft_row(it, words[it.id], reply.status, reply)
            if not t.unusable(it, reply):
                row.update(kept=True, draft=reply.value)
            rows.append(row)
        ctx.run.write_table(DRAFTS, pa.Table.from_pylist(rows, schema=DRAFT_SCHEMA))
        return _finish(ctx, t, len(items), rows, res)

    return _model_stage(ctx, "draft", cfg, {"items": upstream}, [DRAFTS], body, "drafts")


def _draft_row(it: Item, n_words: int, status: str, reply: Reply | None = None
               ) -> dict[str, Any]:
    calls = _call_fields(reply) if reply is not None else dict.fromkeys(
        ("text", "attempts", "error", "key", "model"))
    return {"item_id": it.id, "source": it.source, "kept": False, "status": status,
            "article_id": (it.meta or {}).get("article_id"), "context_words": n_words,
            "draft": None, **calls}


def kept_rows(ctx: CurateContext, table: str) -> dict[str, dict[str, Any]]:
    """Rows of a trace stage's table whose `kept` flag is set, by item id."""
    ids = kept_ids(ctx.run, table, "item_id")
    return {r["item_id"]: r for r in ctx.run.read_table(table).to_pylist() if r["item_id"] in ids}


# --------------------------------------------------------------------------- refine


def refine_stage(ctx: CurateContext, upstream: str) -> str:
    """The drafts rewritten into three sections, checked in code -> curate/refined.parquet."""
    cfg = ctx.recipe.refine
    assert cfg is not None
    tpl = _load(cfg)

    def body() -> StageResult:
        drafts = kept_rows(ctx, DRAFTS)
        items = read_items(ctx, set(drafts))
        prompts = [_prompt(tpl, it, cfg, "refine", draft=drafts[it.id]["draft"]) for it in items]
        res = _ask(ctx, cfg, prompts,
                   lambda _k, text: tr.parse_refined(text, cfg.min_section_words),
                   "trace refinement")
        rows = []
        t = _Tally("refine")
        for it in items:
            reply = res.replies[f"{it.id}#refine"]
            row = {"item_id": it.id, "source": it.source, "kept": False, "status": reply.status,
                   "sections": None, "failed": [], "detail": None, **_call_fields(reply)}
            reason = _refine_reason(reply, cfg.min_section_words)
            if t.unusable(it, reply, reason):
                if reply.status != "pending":
                    row.update(failed=[reason], detail=_detail(reply))
            else:
                found = tr.check_refined(reply.value, it.options, it.answer,
                                         (it.meta or {}).get("answer_format"),
                                         cfg.check_options)
                row["sections"] = _json(reply.value)
                if found:
                    detail = "; ".join(d for _, d in found)
                    row.update(failed=[r for r, _ in found], detail=detail)
                    t.drop(it, found[0][0], detail, {"sections": reply.value})
                else:
                    row["kept"] = True
            rows.append(row)
        ctx.run.write_table(REFINED, pa.Table.from_pylist(rows, schema=REFINE_SCHEMA))
        return _finish(ctx, t, len(items), rows, res)

    return _model_stage(ctx, "refine", cfg, {"draft": upstream}, [REFINED], body,
                        "refined traces")


def _refine_reason(reply: Reply, min_words: int) -> str | None:
    """Quarantine reason of a refined trace that never parsed: missing section or other."""
    if reply.status in ("ok", "pending"):
        return None
    if reply.status != "unparsed":
        return "refine_failed"
    try:
        tr.parse_refined(reply.text, min_words)
    except tr.TraceFormatError as e:
        return "refine:missing_section" if e.problem == "missing_section" else "refine_unparsed"
    except tr.ParseError:
        pass
    return "refine_unparsed"


# --------------------------------------------------------------------------- verify


def verify_stage(ctx: CurateContext, upstream: str) -> str:
    """A verdict per criterion for each refined trace -> curate/verified.parquet."""
    cfg = ctx.recipe.verify
    assert cfg is not None
    if not cfg.enabled:
        return _verify_off(ctx, upstream)
    tpl = _load(cfg)
    sampling = cfg.sampling
    if cfg.structured_output:
        sampling = sampling.model_copy(
            update={"extra": {**sampling.extra, "response_format": tr.verify_json_schema()}})

    def body() -> StageResult:
        refined = kept_rows(ctx, REFINED)
        items = read_items(ctx, set(refined))
        sections = {i: json.loads(r["sections"]) for i, r in refined.items()}
        prompts = [_prompt(tpl, it, cfg, "verify", trace=sections[it.id]) for it in items]
        res = _ask(ctx, cfg, prompts, lambda _k, text: tr.parse_verdict(text),
                   "trace verification", sampling)
        rows = []
        t = _Tally("verify")
        by_criterion: Counter = Counter()
        for it in items:
            reply = res.replies[f"{it.id}#verify"]
            row = {"item_id": it.id, "source": it.source, "kept": False, "status": reply.status,
                   "verdicts": None, "failed": [], **_call_fields(reply)}
            if not t.unusable(it, reply):
                verdict: tr.TraceVerdict = reply.value
                failed = verdict.failed()
                row.update(verdicts=_json(verdict.model_dump()), failed=failed,
                           kept=not failed)
                by_criterion.update(failed)
                if failed:
                    t.drop(it, f"verify:{failed[0]}",
                           "; ".join(f"{c}: {getattr(verdict, c).reason}" for c in failed),
                           {"sections": sections[it.id]})
            rows.append(row)
        ctx.run.write_table(VERIFIED, pa.Table.from_pylist(rows, schema=VERIFY_SCHEMA))
        return _finish(ctx, t, len(items), rows, res,
                       failed_by_criterion={c: by_criterion.get(c, 0)
                                            for c in tr.VERIFY_CRITERIA})

    return _model_stage(ctx, "verify", cfg, {"refine": upstream}, [VERIFIED], body, "traces",
                        structured=cfg.structured_output)


def _verify_off(ctx: CurateContext, upstream: str) -> str:
    """verify.enabled: false -- every refined trace passes unverified (recorded as such)."""

    def body() -> StageResult:
        refined = kept_rows(ctx, REFINED)
        rows = [{"item_id": i, "source": r["source"], "kept": True, "status": "not_verified",
                 "verdicts": None, "failed": [], "text": None, "attempts": 0, "error": None,
                 "key": None, "model": None} for i, r in refined.items()]
        ctx.run.write_table(VERIFIED, pa.Table.from_pylist(rows, schema=VERIFY_SCHEMA))
        return _finish(ctx, _Tally("verify"), len(rows), rows, None)

    ran, rec = run_stage(ctx.run, "curate.verify", config_hash({"enabled": False}),
                         {"refine": upstream}, [VERIFIED], body, force=ctx.forced("verify"))
    _log_stage(ctx, "verify (off)", ran, rec, "traces")
    return output_fingerprint(rec)


# --------------------------------------------------------------------------- items with traces


def traces_stage(ctx: CurateContext, upstream: str) -> str:
    """Items whose trace passed every step, with meta.reference_trace -> traced_items."""

    def body() -> StageResult:
        verified = kept_rows(ctx, VERIFIED)
        refined = {i: r for i, r in kept_rows(ctx, REFINED).items() if i in verified}
        drafts = kept_rows(ctx, DRAFTS)
        items = []
        words: dict[str, list[int]] = {k: [] for k in tr.SECTIONS}
        for it in read_items(ctx, set(refined)):
            sections = json.loads(refined[it.id]["sections"])
            v = verified[it.id]
            n = tr.section_words(sections)
            for k in tr.SECTIONS:
                words[k].append(n[k])
            meta = {**(it.meta or {}), "reference_trace": sections,
                    "trace": {"draft_key": drafts[it.id]["key"],
                              "refine_key": refined[it.id]["key"],
                              "refine_model": refined[it.id]["model"],
                              "verdicts": json.loads(v["verdicts"]) if v["verdicts"] else None,
                              "words": n}}
            items.append(it.model_copy(update={"meta": meta}))
        ctx.run.write_table(TRACED, to_table(items, ITEM_SCHEMA) if items
                            else ITEM_SCHEMA.empty_table())
        return StageResult(rows={"traces": len(items)},
                           extra={"section_words": _length_stats(words)})

    ran, rec = run_stage(ctx.run, "curate.traces", "v1", {"verify": upstream}, [TRACED], body,
                         force=ctx.forced("traces"))
    ctx.log(f"traces: {'done' if ran else 'up to date'}, {rec.rows.get('traces', 0)} items "
            "with a reference trace")
    return rec.fingerprint


def _length_stats(words: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Mean, median, min and max words per section."""
    import statistics

    out = {}
    for k, v in words.items():
        out[k] = ({"n": len(v), "mean": round(statistics.fmean(v), 1),
                   "median": float(statistics.median(v)), "min": min(v), "max": max(v)}
                  if v else {"n": 0})
    return out


TRACE_FUNNEL = (("draft", "curate.draft"), ("refine", "curate.refine"),
                ("verify", "curate.verify"))


def trace_funnel(run) -> dict[str, Any] | None:
    """Items in, removed per trace stage and reason, traces out (None before part 2 ran)."""
    stages = []
    for label, name in TRACE_FUNNEL:
        rec = run.stage(name)
        if rec is not None and "funnel" in rec.extra:
            stages.append({"stage": label, **rec.extra["funnel"]})
    if not stages:
        return None
    verify = run.stage("curate.verify")
    traced = run.stage("curate.traces")
    return {"items_in": stages[0]["in"], "stages": stages,
            "traces_out": traced.rows.get("traces", 0) if traced else 0,
            "failed_by_criterion": (verify.extra.get("failed_by_criterion", {})
                                    if verify else {}),
            "section_words": traced.extra.get("section_words", {}) if traced else {}}
