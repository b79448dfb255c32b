"""The recipe as a sequence of stages over one run directory, each skipped when up to date.

ingest (per source) -> prepare -> generate -> grade -> select -> export -> report

A stage's fingerprint covers its config and the fingerprints of its inputs, so changing a
filter re-runs select/export/report only, and teacher requests are served from the cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

import medrecipe
from medrecipe.config import Recipe, SourceSpec, config_hash
from medrecipe.console import RunLog, counting_progress, progress_enabled
from medrecipe.errors import UserError
from medrecipe.images import ImageStore
from medrecipe.schema import ITEM_SCHEMA, QuarantineRow
from medrecipe.store import Run, StageResult, atomic_write_text, run_stage

STAGES = ("ingest", "prepare", "generate", "grade", "select", "export", "report")


@dataclass
class Context:
    """What every stage needs: the recipe, its run, the image store and a logger."""

    recipe: Recipe
    run: Run
    images: ImageStore
    log: Callable[[str], None]
    progress: bool | None = None
    force: set[str] = field(default_factory=set)
    backends: dict[str, Any] | None = None  # test hook: backend objects per teacher name

    def forced(self, stage: str) -> bool:
        return stage in self.force or "all" in self.force

    def close(self) -> None:
        """Give the run directory back (its lock) and stop logging into it."""
        self.log.detach()
        self.run.unlock()


def open_context(recipe: Recipe, raw: dict[str, Any] | None = None, *, progress: bool | None = None,
                 force: set[str] | None = None, echo: bool = True) -> Context:
    """Create (or reopen) the run directory of a recipe, lock it, and record the recipe in it.

    The lock (held until `Context.close` or the process ends) makes a second process on the
    same run directory fail at once with a message naming the first one.
    """
    run = Run(recipe.resolved_run_dir())
    run.lock()
    images = ImageStore(recipe.image_store or run.root / "images",
                        max_pixels=recipe.max_image_pixels)
    data = raw if raw is not None else recipe.model_dump(mode="json")
    run.set_meta(recipe_name=recipe.name, recipe_hash=config_hash(recipe),
                 medrecipe_version=medrecipe.__version__)
    atomic_write_text(run.root / "recipe.yaml", _yaml_dump(data))
    log = RunLog(run.root, echo=echo)
    log.attach()  # warnings of the engine and stages go to logs/medrecipe.log too
    return Context(recipe, run, images, log, progress, force or set())


def _yaml_dump(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- ingest


def source_fingerprint(spec: SourceSpec) -> str:
    """Identity of a source's data: the pinned revision, or size/mtime of local files."""
    h = hashlib.sha256(config_hash(spec).encode())
    for p in (spec.path, spec.image_root):
        if not p:
            continue
        path = Path(p)
        if path.is_file():
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
        elif path.is_dir():
            # A folder: its listing with sizes and times (bounded walk, sorted for stability).
            for i, (root, dirs, files) in enumerate(os.walk(path)):
                dirs.sort()
                for f in sorted(files):
                    st = os.stat(os.path.join(root, f))
                    h.update(f"{root}/{f}:{st.st_size}:{st.st_mtime_ns}".encode())
                if i > 10_000:
                    break
        else:
            h.update(f"remote:{p}@{spec.revision}".encode())
    return h.hexdigest()[:16]


def ingest_source(ctx: Context, spec: SourceSpec) -> str:
    """Ingest one source into ingest/<name>.parquet; returns the stage fingerprint."""
    from medrecipe.sources import BuildStats, get_adapter, load

    name = f"ingest.{spec.name}"
    out = f"ingest/{spec.name}"
    get_adapter(spec.adapter)  # fail early on an unknown adapter name
    data_fp = source_fingerprint(spec)  # walks a folder source once per run

    def body() -> StageResult:
        rows: list[QuarantineRow] = []
        stats = BuildStats()
        with ctx.run.writer(out, ITEM_SCHEMA) as sink, \
                counting_progress(f"ingest {spec.name}", ctx.progress) as advance:
            for table in load(spec, images=ctx.images, quarantine=rows,
                              batch_size=ctx.recipe.batch_size, stats=stats, on_rows=advance):
                sink.write(table)
        ctx.run.write_quarantine(name, rows)
        reasons: dict[str, int] = {}
        for r in rows:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        sources = ctx.run.manifest.setdefault("sources", {})
        sources[spec.name] = {"adapter": spec.adapter, "path": spec.path, "revision": spec.revision,
                              "hf_config": spec.hf_config, "role": spec.role,
                              "fingerprint": data_fp}
        return StageResult(rows={"items": stats.items, "quarantined": stats.quarantined,
                                 "skipped": stats.skipped, "read": stats.rows},
                           extra={"quarantine_reasons": reasons,
                                  "skip_reasons": dict(stats.skip_reasons)})

    ran, rec = run_stage(ctx.run, name, config_hash(spec), {"data": data_fp},
                         [out], body, force=ctx.forced("ingest"))
    q, skipped = rec.rows.get("quarantined", 0), rec.rows.get("skipped", 0)
    verb = "ingested" if ran else "up to date"
    ctx.log(f"ingest {spec.name}: {verb}, {rec.rows.get('items', 0)} items"
            + (f", [yellow]{q} quarantined[/yellow]" if q else "")
            + (f", {skipped} filtered out by the adapter's options" if skipped else "")
            + f" ({rec.seconds:.1f}s)")
    return rec.fingerprint


def ingest(ctx: Context) -> dict[str, str]:
    """Ingest every source of the recipe; returns {source name: stage fingerprint}."""
    return {s.name: ingest_source(ctx, s) for s in ctx.recipe.sources}


def read_source_items(run: Run, names: list[str]) -> pa.Table:
    """Concatenated ingested Items of the named sources."""
    tables = [run.read_table(f"ingest/{n}") for n in names if run.has(f"ingest/{n}")]
    return pa.concat_tables(tables) if tables else ITEM_SCHEMA.empty_table()


def output_fingerprint(rec) -> str:
    """What downstream stages see: a partial run (budget stop) differs from every other run."""
    return rec.fingerprint if rec.complete else f"{rec.fingerprint}-partial-{rec.finished_at}"


# --------------------------------------------------------------------------- prepare


def prepare(ctx: Context, ingest_fps: dict[str, str]) -> str:
    """Decontaminate, dedup images, resize and balance the training items -> items.parquet."""
    from medrecipe.prepare.stage import prepare as prepare_items

    r = ctx.recipe
    train = [s.name for s in r.sources_by_role("train")]
    bench = [s.name for s in r.sources_by_role("benchmark")]
    inputs = {f"ingest.{n}": ingest_fps[n] for n in train + bench}

    def body() -> StageResult:
        result = prepare_items(read_source_items(ctx.run, train), read_source_items(ctx.run, bench),
                               r.prepare, ctx.images)
        ctx.run.write_table("items", result.items)
        if getattr(result, "flags", None) is not None:
            ctx.run.write_table("prepare_flags", result.flags)
        ctx.run.write_quarantine("prepare", result.quarantine)
        return StageResult(rows={"items": result.items.num_rows,
                                 "removed": len(result.quarantine)},
                           extra={"removed": result.counts, **result.details})

    ran, rec = run_stage(ctx.run, "prepare", config_hash(r.prepare), inputs, ["items"], body,
                         force=ctx.forced("prepare"))
    ctx.log(f"prepare: {'done' if ran else 'up to date'}, {rec.rows.get('items', 0)} items kept"
            + (f", {rec.rows.get('removed', 0)} removed" if rec.rows.get("removed") else "")
            + f" ({rec.seconds:.1f}s)")
    return rec.fingerprint


# --------------------------------------------------------------------------- annotate (optional)


def annotate(ctx: Context, upstream: str) -> str:
    """Fill missing modality/anatomy with a labeller model -> items.parquet rewritten in place."""
    from medrecipe.judge import annotate_items

    r = ctx.recipe
    if not r.annotate.enabled or not r.annotate.labeller:
        return upstream
    labeller = r.teachers[r.annotate.labeller]
    cfg = config_hash({"annotate": r.annotate, "labeller": labeller})

    def body() -> StageResult:
        table, res = annotate_items(ctx.run.read_table("items"), r.annotate.labeller, r.teachers,
                                    r.annotate.template, cache_dir(ctx), ctx.images,
                                    progress=ctx.progress, backends=ctx.backends)
        ctx.run.write_table("items", table)
        return StageResult(rows={"labelled": len(res.values), "unparsed": res.unparsed,
                                 "failed": res.failed}, complete=res.complete,
                           extra={"spend_usd": res.spend_usd})

    ran, rec = run_stage(ctx.run, "annotate", cfg, {"items": upstream}, ["items"], body,
                         force=ctx.forced("annotate"))
    ctx.log(f"annotate: {'done' if ran else 'up to date'}, {rec.rows}")
    return output_fingerprint(rec)


# --------------------------------------------------------------------------- generate / grade


def cache_dir(ctx: Context) -> Path:
    return Path(ctx.recipe.generate.cache_dir) if ctx.recipe.generate.cache_dir \
        else ctx.run.root / "cache"


def _teachers_hash(ctx: Context) -> str:
    from medrecipe.prompts import load_template

    r = ctx.recipe
    used = sorted(set(r.generate.routes.values()) or set(r.teachers))
    tpl = {n: load_template(r.teachers[n].template).hash for n in used if n in r.teachers}
    ctx.run.manifest.setdefault("templates", {}).update(tpl)
    # The price table and limits do not change answers; leave them out of the fingerprint.
    teach = {n: r.teachers[n].model_dump(
        mode="json", exclude={"price", "max_in_flight", "requests_per_minute",
                              "tokens_per_minute", "max_retries", "timeout_s", "backoff_base_s",
                              "backoff_max_s", "http_transport"})
        for n in used if n in r.teachers}
    return config_hash({"teachers": teach, "templates": tpl,
                        "generate": r.generate.model_dump(mode="json", exclude={"budget_usd"})})


def generate(ctx: Context, upstream: str) -> str:
    """Teacher generations for every item (cached, resumable) -> generations.parquet."""
    from medrecipe.generate import generate_stage

    r = ctx.recipe

    def body() -> StageResult:
        return generate_stage(ctx.run.read_table("items"), r.teachers, r.generate, ctx.run,
                              ctx.images, progress=ctx.progress, backends=ctx.backends)

    ran, rec = run_stage(ctx.run, "generate", _teachers_hash(ctx), {"items": upstream},
                         ["generations"], body, force=ctx.forced("generate"))
    x = rec.extra
    if rec.complete:
        status = "done"
    elif x.get("stopped") == "budget":
        status = "[yellow]stopped at the budget cap; re-run to continue[/yellow]"
    else:
        status = "[yellow]done with failed requests; re-run to retry them[/yellow]"
    ctx.log(f"generate: {status if ran else 'up to date'}, {rec.rows.get('generations', 0)} "
            f"generations" + (f", {x.get('cached', 0)} from cache, {x.get('failures', 0)} failed, "
                              f"${x.get('spend_usd', 0):.4f} spent" if ran else "")
            + f" ({rec.seconds:.1f}s)")
    return output_fingerprint(rec)


def grade(ctx: Context, upstream: str) -> str:
    """A verdict per generation -> verdicts.parquet."""
    from medrecipe.answers import grade_generations

    r = ctx.recipe
    judge = reader = None
    if r.grade.judge:
        from medrecipe.judge import make_open_judge

        judge = make_open_judge(r.grade.judge, r.teachers, r.grade.judge_template, cache_dir(ctx),
                                ctx.images, progress=ctx.progress, backends=ctx.backends)
    if r.grade.choice_judge:
        from medrecipe.judge import ChoiceReader

        reader = ChoiceReader(r.grade.choice_judge, r.teachers, r.grade.choice_judge_template,
                              cache_dir(ctx), ctx.images, progress=ctx.progress, backends=ctx.backends,
                              budget_usd=r.grade.choice_judge_budget_usd)
    # A raised choice_judge budget re-runs the stage; readings already made come from the cache.
    cfg = config_hash({"grade": r.grade.model_dump(mode="json"),
                       "judge": r.teachers[r.grade.judge] if r.grade.judge else None,
                       "choice_judge": r.teachers[r.grade.choice_judge] if r.grade.choice_judge else None})

    def body() -> StageResult:
        v = grade_generations(ctx.run.read_table("generations"), ctx.run.read_table("items"),
                              r.grade, judge=judge, choice_judge=reader)
        ctx.run.write_table("verdicts", v)
        correct = v.column("correct").to_pylist()
        methods: dict[str, int] = {}
        for m in v.column("method").to_pylist():
            methods[m] = methods.get(m, 0) + 1
        extra: dict[str, object] = {"methods": methods}
        if reader is not None:
            extra["choice_judge"] = reader.counts()
        return StageResult(rows={"verdicts": v.num_rows,
                                 "correct": sum(1 for c in correct if c is True),
                                 "ungradable": sum(1 for c in correct if c is None)},
                           extra=extra)

    ran, rec = run_stage(ctx.run, "grade", cfg, {"generations": upstream}, ["verdicts"], body,
                         force=ctx.forced("grade"))
    ctx.log(f"grade: {'done' if ran else 'up to date'}, {rec.rows.get('verdicts', 0)} verdicts, "
            f"{rec.rows.get('correct', 0)} correct, {rec.rows.get('ungradable', 0)} without a "
            f"gradable answer ({rec.seconds:.1f}s)")
    cj = rec.extra.get("choice_judge")
    if cj:
        ctx.log(f"grade: choice judge read {cj['answered']} of {cj['asked']} replies no rule read "
                f"({cj['declined']} NONE, {cj['unparsed']} unparseable, {cj['failed']} failed, "
                f"${cj['spend_usd']:.4f})")
    return rec.fingerprint


# --------------------------------------------------------------------------- select / export / report


def select(ctx: Context, items_fp: str, grade_fp: str) -> str:
    """Rejection sampling, filters, cap, mix, split -> selected_{train,val}.parquet."""
    from medrecipe.select import SELECTED_TRAIN, SELECTED_VAL
    from medrecipe.select import select as select_traces

    r = ctx.recipe
    cfg: dict[str, Any] = {"select": r.select}
    if r.select.difficulty:
        cfg["judge"] = r.teachers[r.select.difficulty.judge]

    def body() -> StageResult:
        items = ctx.run.read_table("items")
        ratings = None
        extra: dict[str, Any] = {}
        complete = True
        if r.select.difficulty:
            from medrecipe.judge import rate_difficulty

            d = r.select.difficulty
            res = rate_difficulty(items, d.judge, r.teachers, d.template, cache_dir(ctx),
                                  ctx.images, progress=ctx.progress, backends=ctx.backends)
            ratings = {k: int(v) for k, v in res.values.items()}
            extra["difficulty"] = {"rated": len(ratings), "unparsed": res.unparsed,
                                   "failed": res.failed, "spend_usd": res.spend_usd}
            complete = res.complete
        result = select_traces(items, ctx.run.read_table("generations"),
                               ctx.run.read_table("verdicts"), r.select, difficulty=ratings)
        result.write(ctx.run)
        extra["stats"] = result.stats
        return StageResult(rows={"train": result.train.num_rows, "val": result.val.num_rows},
                           complete=complete, extra=extra)

    ran, rec = run_stage(ctx.run, "select", config_hash(cfg), {"items": items_fp, "grade": grade_fp},
                         [SELECTED_TRAIN, SELECTED_VAL], body, force=ctx.forced("select"))
    ctx.log(f"select: {'done' if ran else 'up to date'}, {rec.rows.get('train', 0)} train / "
            f"{rec.rows.get('val', 0)} validation traces ({rec.seconds:.1f}s)")
    return output_fingerprint(rec)


def export(ctx: Context, upstream: str) -> tuple[str, dict[str, str]]:
    """Trainer-ready exports -> <run>/export/."""
    from medrecipe.export import export as export_selected
    from medrecipe.select import SELECTED_TRAIN, SELECTED_VAL

    r = ctx.recipe
    out = ctx.run.root / "export"

    def body() -> StageResult:
        if not progress_enabled(ctx.progress):
            import datasets

            datasets.disable_progress_bars()
        paths = export_selected({"train": ctx.run.read_table(SELECTED_TRAIN),
                                 "val": ctx.run.read_table(SELECTED_VAL)}, out, ctx.images, r.export)
        empty = paths.pop("empty", None) is not None
        return StageResult(rows={"train": ctx.run.num_rows(SELECTED_TRAIN),
                                 "val": ctx.run.num_rows(SELECTED_VAL)},
                           extra={"paths": {k: str(v) for k, v in paths.items()},
                                  "empty": empty})

    ran, rec = run_stage(ctx.run, "export", config_hash(r.export), {"select": upstream}, [], body,
                         force=ctx.forced("export") or not out.exists())
    if rec.extra.get("empty"):
        ctx.log("export: [yellow]no trace was selected, so the exports are empty[/yellow] "
                "(LLaMA-Factory and JSONL files with no rows, no TRL dataset); the report's "
                "selection funnel shows where the traces went")
    else:
        ctx.log(f"export: {'done' if ran else 'up to date'} -> {out}")
    return rec.fingerprint, rec.extra.get("paths", {})


def report(ctx: Context) -> Path | None:
    """PNG plots and one HTML page -> <run>/report/report.html (always rewritten: it is cheap)."""
    from medrecipe.report import write_report

    if not ctx.recipe.report.enabled:
        return None
    path = write_report(ctx.run, config=ctx.recipe.report)
    ctx.log(f"report: {path}")
    return path


@dataclass
class RunOutcome:
    run_dir: Path
    complete: bool
    exports: dict[str, str] = field(default_factory=dict)
    report: Path | None = None
    problems: list[str] = field(default_factory=list)  # why the run is incomplete, per stage
    selected: int | None = None  # traces selected (train + val)


def incomplete_reasons(run: Run) -> list[str]:
    """One line per stage that did not finish its work, naming the real reason."""
    out = []
    for name, rec in (run.manifest.get("stages") or {}).items():
        if rec.get("complete", True):
            continue
        x = rec.get("extra") or {}
        stopped, failures = x.get("stopped"), x.get("failures", 0)
        parts = []
        if stopped == "budget":
            parts.append(f"the budget cap stopped new requests (${x.get('spend_usd', 0):.4f} "
                         f"spent; {x.get('not_launched', 0)} samples not requested)")
        elif stopped:
            parts.append(f"stopped early ({stopped})")
        if failures:
            parts.append(f"{failures} request(s) failed after their retries (their errors are "
                         "in logs/medrecipe.log and the generations table)")
        for key in ("difficulty",):
            sub = x.get(key) or {}
            if sub.get("failed") or sub.get("unparsed"):
                parts.append(f"{key}: {sub.get('failed', 0)} failed, {sub.get('unparsed', 0)} "
                             "unparsed judge replies")
        if rec.get("rows", {}).get("failed") or rec.get("rows", {}).get("unparsed"):
            parts.append(f"{rec['rows'].get('failed', 0)} failed, "
                         f"{rec['rows'].get('unparsed', 0)} unparsed replies")
        out.append(f"{name}: " + ("; ".join(parts) or "did not complete") + "; re-run to continue"
                   " (answers already received come from the cache)")
    return out


def run_recipe(ctx: Context) -> RunOutcome:
    """Every stage in order; each is skipped when up to date and resumed otherwise."""
    try:
        ctx.run.set_meta(image_store=str(ctx.images.root))
        fps = ingest(ctx)
        items_fp = prepare(ctx, fps)
        items_fp = annotate(ctx, items_fp)
        gen_fp = generate(ctx, items_fp)
        gen_rec = ctx.run.stage("generate")
        if gen_rec is not None and gen_rec.extra.get("stopped") == "budget":
            ctx.log("[yellow]generation stopped at the budget cap; later stages use what was "
                    "generated so far. Re-run to continue from the cache.[/yellow]")
        grade_fp = grade(ctx, gen_fp)
        sel_fp = select(ctx, items_fp, grade_fp)
        _, paths = export(ctx, sel_fp)
        rep = report(ctx)
        problems = incomplete_reasons(ctx.run)
        for p in problems:
            ctx.log(f"[yellow]incomplete: {p}[/yellow]")
        sel = ctx.run.stage("select")
        selected = (sel.rows.get("train", 0) + sel.rows.get("val", 0)) if sel else None
        return RunOutcome(ctx.run.root, not problems, paths, rep, problems, selected)
    except UserError as e:
        stage = ctx.run.active
        ctx.log.file_only(f"error{f' in {stage}' if stage else ''}: {e}")
        raise
    except KeyboardInterrupt:
        stage = ctx.run.active
        ctx.log(f"[yellow]interrupted{f' during {stage}' if stage else ''}: completed stages "
                "and the previous outputs of this one are kept (no half-written file is left); "
                "re-run to continue[/yellow]")
        raise
    finally:
        ctx.close()
