"""The curation pipeline: stages over one run directory, each skipped when up to date.

    curate.ingest.<source>  figure records          curate/records/<source>.parquet
    curate.measure          every visual measure    curate/measures.parquet
    curate.visual           thresholds applied      curate/visual.parquet
    curate.context          English check + judge   curate/context.parquet
    curate.tasks            task categories         curate/tasks.parquet, curate/candidates.parquet
    curate.questions        one question/candidate  curate/questions.parquet
    curate.checks           leakage, options, ...   curate/checks.parquet
    curate.probe            text-only probe         curate/probe.parquet
    curate.items            Items + the funnel      items.parquet, manifest["curate"]["funnel"]

and, when the recipe has `draft` (part 2; curate/trace_stage.py and curate/compose.py):

    curate.draft / refine / verify / traces   source-grounded traces -> curate/traced_items
    curate.split            by article              curate/splits, split_items, benchmark/
    curate.mix / export     SFT training mix        curate/sft_{train,val}, export/
    curate.grpo             the GRPO set            curate/grpo_items, grpo/jsonl/

Each stage reads its predecessor's output, writes its own, and quarantines what it drops
(`quarantine/<stage>.parquet`) with a reason. Record-level stages write one row per record
they saw with a `kept` flag; candidate-level stages (a candidate is one (record, category)
pair) one row per candidate. A model-backed stage that stops early (budget, failed
requests) is recorded as partial: later stages use what it produced, and the next run
resumes it from the request cache.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import medrecipe
from medrecipe.config import TEACHER_RUNTIME_FIELDS, config_hash
from medrecipe.console import RunLog, counting_progress, took
from medrecipe.curate import questions as qmod
from medrecipe.curate import taxonomy, visual
from medrecipe.curate.calls import AskResult, Budget, Caller, Prompt
from medrecipe.curate.config import CurateRecipe, FigureSourceSpec, ModelStep
from medrecipe.curate.context import (
    english_check,
    json_schema,
    parse_context_verdict,
)
from medrecipe.curate.records import (
    FIGURE_RECORD_SCHEMA,
    FigureRecord,
    get_adapter,
    load_records,
    records_from_table,
)
from medrecipe.images import ImageStore
from medrecipe.pipeline import Context
from medrecipe.prompts import PromptTemplate, load_template
from medrecipe.schema import ITEM_SCHEMA, QUARANTINE_SCHEMA, QuarantineRow, raw_json, to_table
from medrecipe.sources.base import BuildStats
from medrecipe.store import ParquetSink, Run, StageRecord, StageResult, run_stage

RECORDS_DIR = "curate/records"
MEASURES = "curate/measures"
VISUAL = "curate/visual"
CONTEXT = "curate/context"
TASKS = "curate/tasks"
CANDIDATES = "curate/candidates"
QUESTIONS = "curate/questions"
CHECKS = "curate/checks"
PROBE = "curate/probe"
ITEMS = "items"

STAGES = ("ingest", "measure", "visual", "context", "tasks", "questions", "checks", "probe",
          "items", "draft", "refine", "verify", "traces", "split", "mix", "export", "grpo")


# --------------------------------------------------------------------------- context


@dataclass
class CurateContext(Context):
    """The pipeline's stage context for a curation recipe, plus the shared spend cap."""

    recipe: CurateRecipe  # type: ignore[assignment] - a curation recipe, not an OctoMed one
    budget: Budget = field(default_factory=Budget)

    def caller(self) -> Caller:
        cache = Path(self.recipe.cache_dir) if self.recipe.cache_dir else self.run.root / "cache"
        return Caller(self.recipe.teachers, cache, self.images, self.budget,
                      progress=self.progress, backends=self.backends)


def open_curate_context(recipe: CurateRecipe, raw: dict[str, Any] | None = None, *,
                        progress: bool | None = None, force: set[str] | None = None,
                        echo: bool = True, backends: dict[str, Any] | None = None
                        ) -> CurateContext:
    """Create (or reopen) the run directory of a curation recipe and record the recipe in it."""
    import yaml

    run = Run(recipe.resolved_run_dir())
    run.lock()  # one process per run directory, as for `medrecipe run`
    images = ImageStore(recipe.image_store or run.root / "images")
    data = raw if raw is not None else recipe.model_dump(mode="json")
    run.set_meta(kind="curate", recipe_name=recipe.name, recipe_hash=config_hash(recipe),
                 medrecipe_version=medrecipe.__version__, image_store=str(images.root))
    (run.root / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False,
                                                         allow_unicode=True))
    log = RunLog(run.root, echo=echo)
    log.attach()
    return CurateContext(recipe, run, images, log, progress=progress, force=force or set(),
                         backends=backends, budget=Budget(recipe.budget_usd))


# --------------------------------------------------------------------------- helpers


def output_fingerprint(rec: StageRecord) -> str:
    """What downstream stages see: a partial run differs from every complete one."""
    return rec.fingerprint if rec.complete else f"{rec.fingerprint}-partial-{rec.finished_at}"


def funnel_entry(unit: str, n_in: int, n_out: int, removed: Counter | dict[str, int],
                 pending: int = 0) -> dict[str, Any]:
    """One stage's line of the funnel: what came in, went out, was removed (by reason)."""
    return {"unit": unit, "in": n_in, "out": n_out, "pending": pending,
            "removed": dict(sorted(Counter(removed).items()))}


def quarantine_row(stage: str, source: str, item_id: str, reason: str, detail: str = "",
                   raw: Any = None) -> QuarantineRow:
    return QuarantineRow(stage=stage, source=source, item_id=item_id, reason=reason,
                         detail=detail, raw=raw_json(raw) if raw is not None else "")


def read_records(run: Run, sources: Iterable[str], ids: set[str] | None = None
                 ) -> list[FigureRecord]:
    """FigureRecords of the named sources (only `ids` when given), in source order."""
    out: list[FigureRecord] = []
    for name in sources:
        path = f"{RECORDS_DIR}/{name}"
        if not run.has(path):
            continue
        table = run.read_table(path)
        if ids is not None:
            table = table.filter(pc.is_in(table.column("id"), pa.array(sorted(ids), pa.string())))
        out.extend(records_from_table(table))
    return out


def kept_ids(run: Run, table: str, column: str = "record_id") -> set[str]:
    """Ids whose `kept` flag is true in a stage's output table."""
    if not run.has(table):
        return set()
    t = run.read_table(table, columns=[column, "kept"])
    return set(t.filter(pc.fill_null(t.column("kept"), False)).column(column).to_pylist())


def _step_hash(ctx: CurateContext, step: ModelStep, tpl: PromptTemplate, **extra: Any) -> str:
    """Config hash of a model step: what changes the replies, not how fast they come."""
    teacher = ctx.recipe.teachers[step.teacher or ""]
    known = dict(ctx.run.manifest.get("prompt_templates", {}))
    known[f"curate.{tpl.name}"] = tpl.hash
    ctx.run.set_meta(prompt_templates=known)
    return config_hash({"teacher": teacher.model_dump(mode="json",
                                                      exclude=set(TEACHER_RUNTIME_FIELDS)),
                        "step": step.model_dump(mode="json", exclude={"teacher"}),
                        "template": tpl.hash, **extra})


def _log_stage(ctx: CurateContext, name: str, ran: bool, rec: StageRecord, what: str) -> None:
    f = rec.extra.get("funnel", {})
    removed = sum(f.get("removed", {}).values())
    status = ("done" if rec.complete else "[yellow]partial; re-run to continue[/yellow]") \
        if ran else "up to date"
    ctx.log(f"{name}: {status}, {f.get('out', 0)} {what} kept"
            + (f", {removed} removed" if removed else "")
            + (f", {f.get('pending')} waiting" if f.get("pending") else "")
            + (f", ${rec.extra.get('spend_usd', 0):.4f} spent" if rec.extra.get("spend_usd")
               else "") + took(ran, rec.seconds))


def _model_extra(res: AskResult) -> dict[str, Any]:
    return {"spend_usd": round(res.spend_usd, 8), "requests_sent": res.requests_sent,
            "cached": res.cached, "stopped": res.stopped, "outcomes": res.counts()}


# --------------------------------------------------------------------------- ingest


def ingest_source(ctx: CurateContext, spec: FigureSourceSpec) -> str:
    """Figure records of one source -> curate/records/<source>.parquet."""
    from medrecipe.pipeline import source_fingerprint

    name = f"curate.ingest.{spec.name}"
    out = f"{RECORDS_DIR}/{spec.name}"
    get_adapter(spec.adapter)  # an unknown adapter fails before any work
    data_fp = source_fingerprint(spec)  # type: ignore[arg-type] - reads path/revision fields

    def body() -> StageResult:
        rows: list[QuarantineRow] = []
        stats = BuildStats()
        with ctx.run.writer(out, FIGURE_RECORD_SCHEMA) as sink, \
                counting_progress(f"ingest {spec.name}", ctx.progress) as advance:
            for table in load_records(spec, store=ctx.images, quarantine=rows, stats=stats,
                                      batch_size=ctx.recipe.batch_size, on_rows=advance):
                sink.write(table)
        ctx.run.write_quarantine(name, rows)
        sources = ctx.run.manifest.setdefault("sources", {})
        sources[spec.name] = {"adapter": spec.adapter, "path": spec.path,
                              "revision": spec.revision, "fingerprint": data_fp}
        return StageResult(rows={"records": stats.items, "quarantined": stats.quarantined,
                                 "read": stats.rows},
                           extra={"funnel": funnel_entry("record", stats.rows, stats.items,
                                                         Counter(r.reason for r in rows))})

    ran, rec = run_stage(ctx.run, name, config_hash(spec), {"data": data_fp}, [out], body,
                         force=ctx.forced("ingest"))
    _log_stage(ctx, f"ingest {spec.name}", ran, rec, "records")
    return rec.fingerprint


# --------------------------------------------------------------------------- visual

MEASURE_SCHEMA = pa.schema([pa.field("record_id", pa.string()), pa.field("source", pa.string()),
                            pa.field("image", pa.string()),
                            *[pa.field(m, pa.float64()) for m in visual.MEASURES],
                            pa.field("error", pa.string())])
VISUAL_SCHEMA = pa.schema([pa.field("record_id", pa.string()), pa.field("source", pa.string()),
                           pa.field("kept", pa.bool_()), pa.field("failed", pa.list_(pa.string())),
                           pa.field("error", pa.string())])


def measure(ctx: CurateContext, ingest_fps: dict[str, str]) -> str:
    """Every visual measure of every record's image -> curate/measures.parquet (streamed)."""
    cfg = ctx.recipe.visual
    names = [s.name for s in ctx.recipe.sources]

    def body() -> StageResult:
        errors = 0
        n = 0
        with ctx.run.writer(MEASURES, MEASURE_SCHEMA) as sink, \
                counting_progress("measure images", ctx.progress) as advance:
            for name in names:
                path = f"{RECORDS_DIR}/{name}"
                if not ctx.run.has(path):
                    continue
                for batch in ctx.run.iter_batches(path, ctx.recipe.batch_size,
                                                  ["id", "source", "image"]):
                    refs = batch.column("image").to_pylist()
                    unique = sorted(set(refs))
                    got = visual.measure_many(
                        [(r, (lambda r=r: ctx.images.path(r).read_bytes())) for r in unique],
                        analysis_side=cfg.analysis_side, workers=cfg.workers, on_done=advance)
                    by_ref = {k: (m, e) for k, m, e in got}
                    cols: dict[str, list[Any]] = {m: [] for m in visual.MEASURES}
                    errs: list[str | None] = []
                    for r in refs:
                        m, e = by_ref[r]
                        errs.append(e)
                        for k in visual.MEASURES:
                            cols[k].append(float("nan") if m is None else m[k])
                    errors += sum(e is not None for e in errs)
                    n += batch.num_rows
                    sink.write(pa.table({"record_id": batch.column("id"),
                                         "source": batch.column("source"),
                                         "image": batch.column("image"), **cols,
                                         "error": pa.array(errs, pa.string())},
                                        schema=MEASURE_SCHEMA))
        return StageResult(rows={"measured": n - errors, "errors": errors})

    cfg_hash = config_hash({"analysis_side": cfg.analysis_side, "version": visual.MEASURE_VERSION})
    ran, rec = run_stage(ctx.run, "curate.measure", cfg_hash,
                         {f"ingest.{k}": v for k, v in ingest_fps.items()}, [MEASURES], body,
                         force=ctx.forced("measure"))
    ctx.log(f"measure: {'done' if ran else 'up to date'}, {rec.rows.get('measured', 0)} images "
            f"measured" + (f", {rec.rows['errors']} undecodable" if rec.rows.get("errors") else "")
            + took(ran, rec.seconds))
    return rec.fingerprint


def _visual_quarantine(batch: pa.Table, failed: list[list[str]], cfg) -> pa.Table:
    """Quarantine rows (an Arrow table) for the images of one batch that failed."""
    rows: dict[str, list[Any]] = {k: [] for k in QUARANTINE_SCHEMA.names}
    d = batch.to_pydict()
    for i, reasons in enumerate(failed):
        err = d["error"][i]
        if not reasons and err is None:
            continue
        measures = {m: d[m][i] for m in visual.MEASURES}
        if err is not None:
            reason, detail = "image_undecodable", err
        else:
            reason = f"visual:{reasons[0]}"
            detail = "; ".join(visual.describe_failure(r, measures, cfg) for r in reasons)
        rows["stage"].append("curate.visual")
        rows["source"].append(d["source"][i])
        rows["row"].append(-1)
        rows["item_id"].append(d["record_id"][i])
        rows["reason"].append(reason)
        rows["detail"].append(detail)
        rows["raw"].append(raw_json({"image": d["image"][i], **{
            k: (None if v != v else round(v, 4)) for k, v in measures.items()}}))
    return pa.table(rows, schema=QUARANTINE_SCHEMA)


def visual_stage(ctx: CurateContext, upstream: str) -> str:
    """Thresholds over the stored measures -> curate/visual.parquet (no image is decoded)."""
    cfg = ctx.recipe.visual
    thresholds = cfg.model_dump(exclude={"analysis_side", "workers"})

    def body() -> StageResult:
        removed: Counter = Counter()
        n_in = n_out = 0
        qpath = ctx.run.quarantine_path("curate.visual")
        qsink = ParquetSink(qpath, QUARANTINE_SCHEMA)
        try:
            with ctx.run.writer(VISUAL, VISUAL_SCHEMA) as sink:
                for batch in ctx.run.iter_batches(MEASURES, ctx.recipe.batch_size):
                    cols = {m: batch.column(m).to_numpy(zero_copy_only=False)
                            for m in visual.MEASURES}
                    failed = visual.failed_checks_batch(cols, cfg) if cfg.enabled \
                        else [[] for _ in range(batch.num_rows)]
                    err = batch.column("error").to_pylist()
                    kept = [not f and e is None for f, e in zip(failed, err, strict=True)]
                    for f, e in zip(failed, err, strict=True):
                        if e is not None:
                            removed["image_undecodable"] += 1
                        elif f:
                            removed[f"visual:{f[0]}"] += 1
                    n_in += batch.num_rows
                    n_out += sum(kept)
                    sink.write(pa.table({"record_id": batch.column("record_id"),
                                         "source": batch.column("source"),
                                         "kept": pa.array(kept, pa.bool_()),
                                         "failed": pa.array(failed, pa.list_(pa.string())),
                                         "error": batch.column("error")}, schema=VISUAL_SCHEMA))
                    qsink.write(_visual_quarantine(batch, failed, cfg))
        except BaseException:
            qsink.abort()
            raise
        qsink.commit()
        return StageResult(rows={"usable": n_out, "removed": n_in - n_out},
                           extra={"funnel": funnel_entry("record", n_in, n_out, removed),
                                  "thresholds": thresholds})

    ran, rec = run_stage(ctx.run, "curate.visual", config_hash(thresholds),
                         {"measure": upstream}, [VISUAL], body, force=ctx.forced("visual"))
    _log_stage(ctx, "visual", ran, rec, "records")
    return rec.fingerprint


# --------------------------------------------------------------------------- context judge

CONTEXT_SCHEMA = pa.schema([
    pa.field("record_id", pa.string()), pa.field("source", pa.string()),
    pa.field("kept", pa.bool_()), pa.field("status", pa.string()),
    pa.field("language", pa.string()), pa.field("english_share", pa.float64()),
    pa.field("foreign_share", pa.float64()), pa.field("failed", pa.list_(pa.string())),
    pa.field("verdicts", pa.string()), pa.field("attempts", pa.int32()),
    pa.field("error", pa.string())])


def _record_vars(rec: FigureRecord) -> dict[str, Any]:
    return {"record": rec.context()}


def _load(step: ModelStep) -> PromptTemplate:
    return load_template(step.template)


def context_stage(ctx: CurateContext, upstream: str) -> str:
    """English check, then the judge's four criteria -> curate/context.parquet."""
    cfg = ctx.recipe.context
    tpl = _load(cfg) if cfg.enabled else None
    cfg_hash = _step_hash(ctx, cfg, tpl) if tpl is not None else config_hash(
        {"enabled": False, "english": cfg.english})

    def body() -> StageResult:
        names = [s.name for s in ctx.recipe.sources]
        records = read_records(ctx.run, names, kept_ids(ctx.run, VISUAL))
        rows: list[dict[str, Any]] = []
        quarantine: list[QuarantineRow] = []
        removed: Counter = Counter()
        to_judge: list[FigureRecord] = []
        lang: dict[str, Any] = {}
        for r in records:
            check = english_check(r.texts(), cfg.english) if cfg.english.enabled else None
            lang[r.id] = check
            if check is not None and not check.passed:
                removed["non_english"] += 1
                quarantine.append(quarantine_row(
                    "curate.context", r.source, r.id, "non_english",
                    f"{check.words} words, {check.english_share:.0%} English function words, "
                    f"{check.foreign_share:.0%} of other languages, "
                    f"{check.latin_share:.0%} Latin letters", r.context()))
                rows.append(_context_row(r, check, False, "non_english"))
            else:
                to_judge.append(r)
        extra: dict[str, Any] = {}
        pending = 0
        if tpl is None:
            rows += [_context_row(r, lang[r.id], True, "not_judged") for r in to_judge]
            n_out = len(to_judge)
        else:
            sampling = cfg.sampling
            if cfg.structured_output:
                sampling = sampling.model_copy(
                    update={"extra": {**sampling.extra, "response_format": json_schema()}})
            prompts = [Prompt(f"{r.id}#context", tpl.render_vars(
                _record_vars(r), [r.image] if cfg.with_image else [], owner=r.id))
                for r in to_judge]
            res = ctx.caller().ask(prompts, cfg.teacher or "", tpl,
                                   lambda _k, text: parse_context_verdict(text), sampling,
                                   cfg.parse_retries, description="context judge")
            extra.update(_model_extra(res))
            n_out = 0
            for r in to_judge:
                reply = res.replies[f"{r.id}#context"]
                if reply.status == "pending":
                    pending += 1
                    rows.append(_context_row(r, lang[r.id], False, "pending"))
                    continue
                if reply.status != "ok":
                    reason = "judge_unparsed" if reply.status == "unparsed" else "judge_failed"
                    removed[reason] += 1
                    detail = (f"{reply.attempts} repl{'y' if reply.attempts == 1 else 'ies'}, "
                              f"none valid: {reply.error}" if reply.status == "unparsed"
                              else str(reply.error))
                    quarantine.append(quarantine_row("curate.context", r.source, r.id, reason,
                                                     detail, {"reply": reply.text}))
                    rows.append(_context_row(r, lang[r.id], False, reply.status, reply=reply))
                    continue
                verdict = reply.value
                failed = verdict.failed()
                if failed:
                    removed[f"context:{failed[0]}"] += 1
                    quarantine.append(quarantine_row(
                        "curate.context", r.source, r.id, f"context:{failed[0]}",
                        "; ".join(f"{c}: {getattr(verdict, c).reason}" for c in failed),
                        r.context()))
                else:
                    n_out += 1
                rows.append(_context_row(r, lang[r.id], not failed, "ok", reply=reply,
                                         failed=failed))
        ctx.run.write_table(CONTEXT, pa.Table.from_pylist(rows, schema=CONTEXT_SCHEMA))
        ctx.run.write_quarantine("curate.context", quarantine)
        extra["funnel"] = funnel_entry("record", len(records), n_out, removed, pending)
        return StageResult(rows={"grounded": n_out, "removed": sum(removed.values()),
                                 "pending": pending},
                           complete=pending == 0 and not removed.get("judge_failed"),
                           extra=extra)

    ran, rec = run_stage(ctx.run, "curate.context", cfg_hash, {"visual": upstream}, [CONTEXT],
                         body, force=ctx.forced("context"))
    _log_stage(ctx, "context", ran, rec, "records")
    return output_fingerprint(rec)


def _context_row(r: FigureRecord, check, kept: bool, status: str, reply=None,
                 failed: list[str] | None = None) -> dict[str, Any]:
    verdicts = None
    if reply is not None and reply.value is not None:
        verdicts = json.dumps(reply.value.model_dump(), ensure_ascii=False)
    return {"record_id": r.id, "source": r.source, "kept": kept, "status": status,
            "language": check.language if check else None,
            "english_share": check.english_share if check else None,
            "foreign_share": check.foreign_share if check else None,
            "failed": failed or [], "verdicts": verdicts,
            "attempts": reply.attempts if reply is not None else 0,
            "error": reply.error if reply is not None else None}


# --------------------------------------------------------------------------- tasks

TASKS_SCHEMA = pa.schema([
    pa.field("record_id", pa.string()), pa.field("source", pa.string()),
    pa.field("kept", pa.bool_()), pa.field("status", pa.string()),
    pa.field("categories", pa.list_(pa.string())), pa.field("without_evidence", pa.int32()),
    pa.field("attempts", pa.int32()), pa.field("error", pa.string())])
CANDIDATE_SCHEMA = pa.schema([
    pa.field("candidate_id", pa.string()), pa.field("record_id", pa.string()),
    pa.field("source", pa.string()), pa.field("category", pa.string()),
    pa.field("family", pa.string()), pa.field("answer", pa.string()),
    pa.field("evidence", pa.string())])


def tasks_stage(ctx: CurateContext, upstream: str) -> str:
    """Supported task categories per record -> curate/tasks.parquet, curate/candidates.parquet."""
    cfg = ctx.recipe.tasks
    tpl = _load(cfg)
    allowed = [c for c in taxonomy.CATEGORY_IDS if c in set(cfg.categories)]
    cats = [{"id": c.id, "label": c.label, "family": c.family}
            for c in taxonomy.CATEGORIES if c.id in allowed]

    def body() -> StageResult:
        names = [s.name for s in ctx.recipe.sources]
        records = read_records(ctx.run, names, kept_ids(ctx.run, CONTEXT))
        prompts = [Prompt(f"{r.id}#tasks", tpl.render_vars(
            {**_record_vars(r), "categories": cats}, [r.image] if cfg.with_image else [],
            owner=r.id)) for r in records]
        res = ctx.caller().ask(prompts, cfg.teacher or "", tpl,
                               lambda _k, text: taxonomy.parse_categories(text, allowed),
                               cfg.sampling, cfg.parse_retries, description="task assignment")
        rows, cands, quarantine = [], [], []
        removed: Counter = Counter()
        cand_removed: Counter = Counter()
        proposed = pending = 0
        for r in records:
            reply = res.replies[f"{r.id}#tasks"]
            base = {"record_id": r.id, "source": r.source, "attempts": reply.attempts,
                    "error": reply.error, "without_evidence": 0, "categories": []}
            if reply.status == "pending":
                pending += 1
                rows.append({**base, "kept": False, "status": "pending"})
                continue
            if reply.status != "ok":
                reason = "tasks_unparsed" if reply.status == "unparsed" else "tasks_failed"
                removed[reason] += 1
                quarantine.append(quarantine_row("curate.tasks", r.source, r.id, reason,
                                                 str(reply.error), {"reply": reply.text}))
                rows.append({**base, "kept": False, "status": reply.status})
                continue
            assigned, without = reply.value
            proposed += len(assigned)
            keep = []
            for a in assigned:
                cat = taxonomy.get(a.category)
                cid = f"{r.id}#{a.category}"
                if cat.needs_marker and not taxonomy.has_explicit_marker(*r.texts()):
                    cand_removed["no_explicit_marker"] += 1
                    quarantine.append(quarantine_row(
                        "curate.tasks", r.source, cid, "no_explicit_marker",
                        "annotation / marker needs an arrow, circle, box or pointer in the text"))
                elif cfg.max_per_record is not None and len(keep) >= cfg.max_per_record:
                    cand_removed["over_category_cap"] += 1
                    quarantine.append(quarantine_row(
                        "curate.tasks", r.source, cid, "over_category_cap",
                        f"tasks.max_per_record is {cfg.max_per_record}"))
                else:
                    keep.append(a)
            for a in keep:
                cands.append({"candidate_id": f"{r.id}#{a.category}", "record_id": r.id,
                              "source": r.source, "category": a.category,
                              "family": taxonomy.get(a.category).family, "answer": a.answer,
                              "evidence": a.evidence})
            if not keep:
                removed["no_supported_category"] += 1
                quarantine.append(quarantine_row(
                    "curate.tasks", r.source, r.id, "no_supported_category",
                    f"{len(assigned)} usable categories proposed, {without} without an answer "
                    f"and evidence", r.context()))
            rows.append({**base, "kept": bool(keep), "status": "ok",
                         "categories": [a.category for a in keep], "without_evidence": without})
        ctx.run.write_table(TASKS, pa.Table.from_pylist(rows, schema=TASKS_SCHEMA))
        ctx.run.write_table(CANDIDATES, pa.Table.from_pylist(cands, schema=CANDIDATE_SCHEMA))
        ctx.run.write_quarantine("curate.tasks", quarantine)
        n_out = sum(1 for row in rows if row["kept"])
        return StageResult(
            rows={"records": n_out, "candidates": len(cands), "pending": pending},
            complete=res.complete,
            extra={**_model_extra(res),
                   "funnel": funnel_entry("record", len(records), n_out, removed, pending),
                   "funnel_candidates": funnel_entry("candidate", proposed, len(cands),
                                                     cand_removed)})

    cfg_hash = _step_hash(ctx, cfg, tpl)
    ran, rec = run_stage(ctx.run, "curate.tasks", cfg_hash, {"context": upstream},
                         [TASKS, CANDIDATES], body, force=ctx.forced("tasks"))
    _log_stage(ctx, "tasks", ran, rec, "records")
    return output_fingerprint(rec)


# --------------------------------------------------------------------------- questions

QUESTION_SCHEMA = pa.schema([
    pa.field("candidate_id", pa.string()), pa.field("record_id", pa.string()),
    pa.field("source", pa.string()), pa.field("category", pa.string()),
    pa.field("family", pa.string()), pa.field("kept", pa.bool_()),
    pa.field("status", pa.string()), pa.field("question", pa.string()),
    pa.field("invalid_reason", pa.string()), pa.field("text", pa.string()),
    pa.field("attempts", pa.int32()), pa.field("error", pa.string())])


def questions_stage(ctx: CurateContext, upstream: str) -> str:
    """One question per (record, category), or INVALID -> curate/questions.parquet."""
    cfg = ctx.recipe.questions
    tpl = _load(cfg)

    def body() -> StageResult:
        cands = ctx.run.read_table(CANDIDATES).to_pylist()
        names = [s.name for s in ctx.recipe.sources]
        records = {r.id: r for r in read_records(ctx.run, names,
                                                 {c["record_id"] for c in cands})}
        prompts, cat_of = [], {}
        for c in cands:
            r, cat = records[c["record_id"]], taxonomy.get(c["category"])
            cat_of[c["candidate_id"]] = cat
            variables = {**_record_vars(r), "category": asdict(cat), "formats": cat.formats,
                         "format_text": taxonomy.ANSWER_FORMAT_TEXT,
                         "planned_answer": c["answer"]}
            prompts.append(Prompt(c["candidate_id"], tpl.render_vars(
                variables, [r.image] if cfg.with_image else [], owner=c["candidate_id"])))
        res = ctx.caller().ask(prompts, cfg.teacher or "", tpl,
                               lambda key, text: qmod.parse_question(text, cat_of[key]),
                               cfg.sampling, cfg.parse_retries, description="questions")
        rows, quarantine = [], []
        removed: Counter = Counter()
        pending = n_out = 0
        for c in cands:
            reply = res.replies[c["candidate_id"]]
            row = {k: c[k] for k in ("candidate_id", "record_id", "source", "category",
                                     "family")}
            row.update(kept=False, status=reply.status, question=None, invalid_reason=None,
                       text=reply.text, attempts=reply.attempts, error=reply.error)
            if reply.status == "pending":
                pending += 1
            elif reply.status != "ok":
                reason = "questions_unparsed" if reply.status == "unparsed" else "questions_failed"
                removed[reason] += 1
                quarantine.append(quarantine_row("curate.questions", c["source"],
                                                 c["candidate_id"], reason, str(reply.error),
                                                 {"reply": reply.text}))
            elif isinstance(reply.value, qmod.Invalid):
                removed["invalid"] += 1
                row.update(status="invalid", invalid_reason=reply.value.reason)
                quarantine.append(quarantine_row("curate.questions", c["source"],
                                                 c["candidate_id"], "invalid",
                                                 reply.value.reason or "the writer replied INVALID",
                                                 {"reply": reply.text}))
            else:
                n_out += 1
                row.update(kept=True, question=reply.value.model_dump_json())
            rows.append(row)
        ctx.run.write_table(QUESTIONS, pa.Table.from_pylist(rows, schema=QUESTION_SCHEMA))
        ctx.run.write_quarantine("curate.questions", quarantine)
        return StageResult(rows={"written": n_out, "removed": sum(removed.values()),
                                 "pending": pending}, complete=res.complete,
                           extra={**_model_extra(res),
                                  "funnel": funnel_entry("candidate", len(cands), n_out, removed,
                                                         pending)})

    ran, rec = run_stage(ctx.run, "curate.questions", _step_hash(ctx, cfg, tpl),
                         {"tasks": upstream}, [QUESTIONS], body, force=ctx.forced("questions"))
    _log_stage(ctx, "questions", ran, rec, "questions")
    return output_fingerprint(rec)


def written_questions(run: Run) -> list[tuple[dict[str, Any], qmod.WrittenQuestion]]:
    """(question row, parsed question) for every kept row of curate/questions.parquet."""
    t = run.read_table(QUESTIONS)
    out = []
    for row in t.filter(pc.fill_null(t.column("kept"), False)).to_pylist():
        out.append((row, qmod.WrittenQuestion.model_validate_json(row["question"])))
    return out


# --------------------------------------------------------------------------- checks

CHECK_SCHEMA = pa.schema([pa.field("candidate_id", pa.string()), pa.field("source", pa.string()),
                          pa.field("kept", pa.bool_()), pa.field("reasons", pa.list_(pa.string()))])


def checks_stage(ctx: CurateContext, upstream: str) -> str:
    """Leakage, option and positional checks in code -> curate/checks.parquet."""
    cfg = ctx.recipe.checks

    def body() -> StageResult:
        planned = {c["candidate_id"]: c["answer"]
                   for c in ctx.run.read_table(CANDIDATES, ["candidate_id", "answer"]).to_pylist()}
        rows, quarantine = [], []
        removed: Counter = Counter()
        written = written_questions(ctx.run)
        for row, q in written:
            found = qmod.check_details(q, taxonomy.get(row["category"]), cfg,
                                       planned.get(row["candidate_id"]))
            rows.append({"candidate_id": row["candidate_id"], "source": row["source"],
                         "kept": not found, "reasons": [r for r, _ in found]})
            if found:
                removed[found[0][0]] += 1
                quarantine.append(quarantine_row(
                    "curate.checks", row["source"], row["candidate_id"], found[0][0],
                    "; ".join(f"{r}: {d}" for r, d in found), q.model_dump()))
        ctx.run.write_table(CHECKS, pa.Table.from_pylist(rows, schema=CHECK_SCHEMA))
        ctx.run.write_quarantine("curate.checks", quarantine)
        n_out = sum(1 for r in rows if r["kept"])
        return StageResult(rows={"passed": n_out, "removed": len(rows) - n_out},
                           extra={"funnel": funnel_entry("candidate", len(rows), n_out, removed)})

    ran, rec = run_stage(ctx.run, "curate.checks", config_hash(cfg), {"questions": upstream},
                         [CHECKS], body, force=ctx.forced("checks"))
    _log_stage(ctx, "checks", ran, rec, "questions")
    return rec.fingerprint


# --------------------------------------------------------------------------- probe

PROBE_SCHEMA = pa.schema([
    pa.field("candidate_id", pa.string()), pa.field("source", pa.string()),
    pa.field("kept", pa.bool_()), pa.field("status", pa.string()), pa.field("k", pa.int32()),
    pa.field("answers", pa.list_(pa.string())), pa.field("correct", pa.int32()),
    pa.field("text_solvable", pa.bool_()), pa.field("error", pa.string())])


def probe_stage(ctx: CurateContext, upstream: str) -> str:
    """Ask a text-only model each question k times without the image -> curate/probe.parquet."""
    cfg = ctx.recipe.probe
    tpl = _load(cfg) if cfg.enabled else None
    cfg_hash = _step_hash(ctx, cfg, tpl) if tpl is not None else config_hash({"enabled": False})

    def body() -> StageResult:
        passed = kept_ids(ctx.run, CHECKS, "candidate_id")
        todo = [(row, q) for row, q in written_questions(ctx.run) if row["candidate_id"] in passed]
        rows, quarantine = [], []
        removed: Counter = Counter()
        extra: dict[str, Any] = {}
        pending = 0
        if tpl is None:
            rows = [{"candidate_id": row["candidate_id"], "source": row["source"], "kept": True,
                     "status": "not_probed", "k": 0, "answers": [], "correct": 0,
                     "text_solvable": False, "error": None} for row, _ in todo]
        else:
            prompts = [Prompt(f"{row['candidate_id']}#probe", tpl.render(
                qmod.probe_item(row["candidate_id"], q, row["source"]))) for row, q in todo]
            res = ctx.caller().sample(prompts, cfg.teacher or "", tpl, cfg.sampling, cfg.k,
                                      description="text-only probe")
            extra.update(_model_extra(res))
            for row, q in todo:
                reply = res.replies[f"{row['candidate_id']}#probe"]
                gens = reply.generations
                out = qmod.probe_outcome([g.text for g in gens], [g.error for g in gens], q)
                status = reply.status
                if status == "pending":
                    pending += 1
                elif status == "failed":
                    removed["probe_failed"] += 1
                    quarantine.append(quarantine_row("curate.probe", row["source"],
                                                     row["candidate_id"], "probe_failed",
                                                     str(reply.error)))
                elif out.text_solvable:
                    removed["text_solvable"] += 1
                    quarantine.append(quarantine_row(
                        "curate.probe", row["source"], row["candidate_id"], "text_solvable",
                        f"a text-only model chose the correct option {q.correct} in {out.correct} "
                        f"of {cfg.k} samples without the image", q.model_dump()))
                rows.append({"candidate_id": row["candidate_id"], "source": row["source"],
                             "kept": status == "ok" and not out.text_solvable, "status": status,
                             "k": cfg.k, "answers": list(out.answers), "correct": out.correct,
                             "text_solvable": out.text_solvable, "error": reply.error})
        ctx.run.write_table(PROBE, pa.Table.from_pylist(rows, schema=PROBE_SCHEMA))
        ctx.run.write_quarantine("curate.probe", quarantine)
        n_out = sum(1 for r in rows if r["kept"])
        extra["funnel"] = funnel_entry("candidate", len(todo), n_out, removed, pending)
        return StageResult(rows={"kept": n_out, "removed": sum(removed.values()),
                                 "pending": pending},
                           complete=pending == 0 and not removed.get("probe_failed"),
                           extra=extra)

    ran, rec = run_stage(ctx.run, "curate.probe", cfg_hash, {"checks": upstream}, [PROBE], body,
                         force=ctx.forced("probe"))
    _log_stage(ctx, "probe", ran, rec, "questions")
    return output_fingerprint(rec)


# --------------------------------------------------------------------------- items and funnel


def items_stage(ctx: CurateContext, upstream: str) -> str:
    """Items (task mm_reasoning) for the questions that survived -> items.parquet; the funnel."""

    def body() -> StageResult:
        passed = kept_ids(ctx.run, PROBE, "candidate_id")
        probe = {r["candidate_id"]: r for r in ctx.run.read_table(PROBE).to_pylist()}
        todo = [(row, q) for row, q in written_questions(ctx.run) if row["candidate_id"] in passed]
        names = [s.name for s in ctx.recipe.sources]
        records = {r.id: r for r in read_records(ctx.run, names, {row["record_id"]
                                                                  for row, _ in todo})}
        items = []
        for row, q in todo:
            p = probe.get(row["candidate_id"], {})
            items.append(qmod.to_item(records[row["record_id"]], taxonomy.get(row["category"]),
                                      q, {"probe": {"k": p.get("k"), "correct": p.get("correct"),
                                                    "answers": p.get("answers")}}))
        ctx.run.write_table(ITEMS, to_table(items, ITEM_SCHEMA) if items
                            else ITEM_SCHEMA.empty_table())
        by_cat = Counter(it.meta["category"] for it in items)
        by_fam = Counter(it.meta["family"] for it in items)
        return StageResult(rows={"items": len(items)},
                           extra={"by_category": dict(by_cat), "by_family": dict(by_fam)})

    ran, rec = run_stage(ctx.run, "curate.items", "v1", {"probe": upstream}, [ITEMS], body,
                         force=ctx.forced("items"))
    f = funnel(ctx.run, [s.name for s in ctx.recipe.sources])
    ctx.run.manifest.setdefault("curate", {})["funnel"] = f
    ctx.run.save_manifest()
    ctx.log(f"items: {'done' if ran else 'up to date'}, {rec.rows.get('items', 0)} items from "
            f"{f['records_in']} records")
    return rec.fingerprint


FUNNEL_STAGES = (("visual", "curate.visual", "funnel"), ("context", "curate.context", "funnel"),
                 ("tasks", "curate.tasks", "funnel"),
                 ("tasks (categories)", "curate.tasks", "funnel_candidates"),
                 ("questions", "curate.questions", "funnel"), ("checks", "curate.checks", "funnel"),
                 ("probe", "curate.probe", "funnel"))


def funnel(run: Run, sources: Iterable[str]) -> dict[str, Any]:
    """Records in, removed per stage and reason, items out per category and family."""
    stages: list[dict[str, Any]] = []
    ingest = [run.stage(f"curate.ingest.{s}") for s in sources]
    ing = {"in": 0, "out": 0, "pending": 0, "removed": Counter()}
    for rec in ingest:
        if rec is not None:
            f = rec.extra.get("funnel", {})
            ing["in"] += f.get("in", 0)
            ing["out"] += f.get("out", 0)
            ing["removed"].update(f.get("removed", {}))
    stages.append({"stage": "ingest", **funnel_entry("record", ing["in"], ing["out"],
                                                     ing["removed"])})
    for label, name, key in FUNNEL_STAGES:
        rec = run.stage(name)
        if rec is not None and key in rec.extra:
            stages.append({"stage": label, **rec.extra[key]})
    items = run.stage("curate.items")
    return {"records_in": ing["in"], "stages": stages,
            "items_out": items.rows.get("items", 0) if items else 0,
            "by_category": dict(sorted((items.extra.get("by_category", {}) if items else {})
                                       .items())),
            "by_family": dict(sorted((items.extra.get("by_family", {}) if items else {})
                                     .items()))}


# --------------------------------------------------------------------------- the pipeline


@dataclass
class CurateOutcome:
    """Where the run is, whether every stage completed, and its report."""

    run_dir: Path
    complete: bool
    items: int
    report: Path | None = None
    traces: int | None = None  # items with a reference trace (None: part 2 not configured)
    exports: dict[str, str] = field(default_factory=dict)  # SFT export paths
    grpo: dict[str, str] = field(default_factory=dict)  # GRPO set export paths


def run_curation(ctx: CurateContext) -> CurateOutcome:
    """Every curation stage in order; each is skipped when up to date and resumed otherwise."""
    try:
        if ctx.recipe.traces:
            from medrecipe.curate.compose import check_auxiliary

            check_auxiliary(ctx.recipe)  # a broken auxiliary recipe fails before any work
        fps = {s.name: ingest_source(ctx, s) for s in ctx.recipe.sources}
        fp = measure(ctx, fps)
        fp = visual_stage(ctx, fp)
        fp = context_stage(ctx, fp)
        fp = tasks_stage(ctx, fp)
        fp = questions_stage(ctx, fp)
        fp = checks_stage(ctx, fp)
        fp = probe_stage(ctx, fp)
        fp = items_stage(ctx, fp)
        part2 = run_traces(ctx, fp) if ctx.recipe.traces else {}
        report = None
        if ctx.recipe.report.enabled:
            from medrecipe.report import write_report

            report = write_report(ctx.run, config=ctx.recipe.report)
            ctx.log(f"report: {report}")
        stages = ctx.run.manifest.get("stages", {})
        complete = all(rec.get("complete", True) for name, rec in stages.items()
                       if name.startswith("curate."))
        return CurateOutcome(ctx.run.root, complete, ctx.run.num_rows(ITEMS), report, **part2)
    finally:
        ctx.close()  # the run directory lock and its log file


def run_traces(ctx: CurateContext, upstream: str) -> dict[str, Any]:
    """Part 2: draft, refine, verify, split by article, mix, SFT export, GRPO set."""
    from medrecipe.curate import compose, trace_stage

    fp = trace_stage.draft_stage(ctx, upstream)
    fp = trace_stage.refine_stage(ctx, fp)
    fp = trace_stage.verify_stage(ctx, fp)
    fp = trace_stage.traces_stage(ctx, fp)
    fp = compose.split_stage(ctx, fp)
    aux = compose.auxiliary_runs(ctx)
    fp = compose.mix_stage(ctx, fp, aux)
    exports = compose.export_stage(ctx, fp, aux)
    grpo = compose.grpo_stage(ctx, fp, aux)
    return {"traces": ctx.run.num_rows(trace_stage.TRACED), "exports": exports, "grpo": grpo}

