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
from medrecipe.console import RunLog, counting_progress, progress_enabled, took
from medrecipe.errors import UserError
from medrecipe.images import ImageStore
from medrecipe.schema import ITEM_SCHEMA, QuarantineRow
from medrecipe.store import Run, StageResult, atomic_write_text, run_sharded_stage, run_stage

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
    items_name: str = "items"  # "items_labelled" once the annotate stage has run
    _executor: Any = None

    def forced(self, stage: str) -> bool:
        return stage in self.force or "all" in self.force

    @property
    def executor(self):
        """The recipe's executor (created on first use, closed with the context)."""
        if self._executor is None:
            from medrecipe.executors import make_executor

            self._executor = make_executor(self.recipe.executor)
        return self._executor

    @property
    def n_shards(self) -> int:
        """Shards of every sharded output of this run (fixed by the prepare stage)."""
        return int(self.run.manifest.get("shards") or 1)

    def models(self):
        """What a shard needs to call models (picklable; the backends hook stays in-process)."""
        from medrecipe.sharded import ModelAccess

        in_process = not self.executor.parallel
        return ModelAccess(teachers=dict(self.recipe.teachers), cache_dir=str(cache_dir(self)),
                           image_root=str(self.images.root),
                           max_image_pixels=self.recipe.max_image_pixels,
                           progress=self.progress if in_process else False,
                           backends=self.backends if in_process else None)

    def close(self) -> None:
        """Give the run directory back (its lock), stop the executor and logging into the run."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None
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
            + took(ran, rec.seconds))
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


GENERATIONS_PER_SHARD = 50_000


def choose_shards(recipe: Recipe, run: Run, n_items: int) -> int:
    """Shard count: the recipe's, else the one this run already uses, else from the size.

    The automatic choice (about 50,000 sampled responses, n x questions, per shard) is made
    once and recorded, so a source that grows later does not reshuffle an existing run.
    """
    if recipe.shards:
        return recipe.shards
    if run.manifest.get("shards"):
        return int(run.manifest["shards"])
    return max(1, min(4096, -(-n_items * recipe.generate.n // GENERATIONS_PER_SHARD)))


def prepare(ctx: Context, ingest_fps: dict[str, str]) -> str:
    """Decontaminate, dedup images, resize and balance the training items -> items shards."""
    from medrecipe.prepare.stage import prepare_flags_schema, prepare_stream
    from medrecipe.shards import ShardWriter

    r = ctx.recipe
    train = [s.name for s in r.sources_by_role("train")]
    bench = [s.name for s in r.sources_by_role("benchmark")]
    inputs = {f"ingest.{n}": ingest_fps[n] for n in train + bench}
    n_train = sum(ctx.run.num_rows(f"ingest/{n}") for n in train)
    n_shards = choose_shards(r, ctx.run, n_train)
    ctx.run.set_meta(shards=n_shards)

    def body() -> StageResult:
        from medrecipe.schema import QUARANTINE_SCHEMA, to_table

        bench_items = read_source_items(ctx.run, bench)  # small: held whole for its indexes

        def train_batches():
            for name in train:
                if ctx.run.has(f"ingest/{name}"):
                    yield from ctx.run.iter_batches(f"ingest/{name}", r.batch_size)

        folder = ctx.run.path("items")
        if folder.exists() and not folder.is_dir():
            folder.unlink()  # an unsharded items.parquet of an older run
        elif folder.is_dir():
            import shutil

            shutil.rmtree(folder)
        writer = ShardWriter(folder, n_shards, ITEM_SCHEMA, key="id")
        flags = ctx.run.sink("prepare_flags", prepare_flags_schema(bench_items, r.prepare))
        quarantine = ctx.run.sink(str(ctx.run.quarantine_path("prepare").relative_to(ctx.run.root)),
                                  QUARANTINE_SCHEMA)
        kept = removed = 0

        def emit_items(t: pa.Table) -> None:
            nonlocal kept
            writer.write(t)
            kept += t.num_rows

        def emit_quarantine(rows: list) -> None:
            nonlocal removed
            if rows:
                quarantine.write(to_table(rows, QUARANTINE_SCHEMA))
                removed += len(rows)

        try:
            counts, details = prepare_stream(train_batches, bench_items, r.prepare, ctx.images,
                                             emit_items=emit_items, emit_flags=flags.write,
                                             emit_quarantine=emit_quarantine)
        except BaseException:
            writer.abort()
            flags.abort()
            quarantine.abort()
            raise
        writer.commit()
        flags.commit()
        quarantine.commit()
        return StageResult(rows={"items": kept, "removed": removed},
                           extra={"removed": counts, "shards": n_shards, **details})

    ran, rec = run_stage(ctx.run, "prepare", config_hash({"prepare": r.prepare, "shards": n_shards}),
                         inputs, ["items"], body, force=ctx.forced("prepare"))
    ctx.log(f"prepare: {'done' if ran else 'up to date'}, {rec.rows.get('items', 0)} items kept"
            + (f", {rec.rows.get('removed', 0)} removed" if rec.rows.get("removed") else "")
            + (f" in {n_shards} shards" if n_shards > 1 else "")
            + took(ran, rec.seconds))
    return rec.fingerprint


# --------------------------------------------------------------------------- annotate (optional)


def annotate(ctx: Context, upstream: str) -> str:
    """Fill missing modality/anatomy with a labeller model -> items_labelled shards."""
    from medrecipe.sharded import AnnotatePayload, annotate_shard

    r = ctx.recipe
    if not r.annotate.enabled or not r.annotate.labeller:
        return upstream
    labeller = r.teachers[r.annotate.labeller]
    cfg = config_hash({"annotate": r.annotate, "labeller": labeller})
    ran, rec = run_sharded_stage(ctx.run, "annotate", cfg, {"items": upstream}, ["items_labelled"],
                                 annotate_shard, ctx.n_shards, ctx.executor,
                                 AnnotatePayload(ctx.models(), r.annotate),
                                 force=ctx.forced("annotate"))
    ctx.items_name = "items_labelled"
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
    # The price table, limits and which servers answer do not change answers (the cache key
    # has no URL either); leave them out, so adding a server to a fleet re-runs nothing.
    teach = {n: r.teachers[n].model_dump(
        mode="json", exclude={"price", "max_in_flight", "requests_per_minute",
                              "tokens_per_minute", "max_retries", "timeout_s", "backoff_base_s",
                              "backoff_max_s", "http_transport", "base_url", "base_urls",
                              "endpoints", "allow_insecure_http"})
        for n in used if n in r.teachers}
    return config_hash({"teachers": teach, "templates": tpl,
                        "generate": r.generate.model_dump(mode="json",
                                                          exclude={"budget_usd", "warn"})})


def generate(ctx: Context, upstream: str) -> str:
    """Teacher generations for every item (cached, resumable) -> generations shards."""
    from rich.markup import escape

    from medrecipe.generate.budget import Budget
    from medrecipe.generate.checks import check_warnings
    from medrecipe.sharded import GeneratePayload, generate_shard

    r = ctx.recipe
    ex = ctx.executor
    budget = Budget(r.generate.budget_usd, ctx.n_shards if ex.parallel else 0)
    payload = GeneratePayload(ctx.models(), r.generate, ctx.items_name, budget)
    ran, rec = run_sharded_stage(ctx.run, "generate", _teachers_hash(ctx), {"items": upstream},
                                 ["generations"], generate_shard, ctx.n_shards, ex, payload,
                                 force=ctx.forced("generate"), summarize=_generate_summary)
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
            + took(ran, rec.seconds))
    # Said on every run, up to date or not: the generations stay what they are until fixed.
    for line in check_warnings(x.get("output_checks"), r.generate.warn, r.generate.n,
                               r.teachers):
        ctx.log(f"[yellow]warning: generate: {escape(line)}[/yellow]")
    return output_fingerprint(rec)


def _generate_summary(parts: list[dict[str, Any]]) -> dict[str, Any]:
    from medrecipe.store import merge_stats

    out = merge_stats(parts)
    stops = [p.get("stopped") for p in parts if p.get("stopped")]
    out["stopped"] = "budget" if "budget" in stops else (stops[0] if stops else None)
    return out


def grade(ctx: Context, upstream: str) -> str:
    """A verdict per generation -> verdicts shards."""
    from medrecipe.sharded import GradePayload, grade_shard

    r = ctx.recipe
    cfg = config_hash({"grade": r.grade.model_dump(mode="json"),
                       "judge": r.teachers[r.grade.judge] if r.grade.judge else None,
                       "choice_judge": r.teachers[r.grade.choice_judge] if r.grade.choice_judge
                       else None})
    ran, rec = run_sharded_stage(ctx.run, "grade", cfg, {"generations": upstream}, ["verdicts"],
                                 grade_shard, ctx.n_shards, ctx.executor,
                                 GradePayload(ctx.models(), r.grade, ctx.items_name),
                                 force=ctx.forced("grade"))
    ctx.log(f"grade: {'done' if ran else 'up to date'}, {rec.rows.get('verdicts', 0)} verdicts, "
            f"{rec.rows.get('correct', 0)} correct, {rec.rows.get('ungradable', 0)} without a "
            f"gradable answer{took(ran, rec.seconds)}")
    cj = rec.extra.get("choice_judge")
    if cj:
        ctx.log(f"grade: choice judge read {cj['answered']} of {cj['asked']} replies no rule read "
                f"({cj['declined']} NONE, {cj['unparsed']} unparseable, {cj['failed']} failed, "
                f"${cj['spend_usd']:.4f})")
    return output_fingerprint(rec)


# --------------------------------------------------------------------------- select / export / report


def select(ctx: Context, items_fp: str, grade_fp: str) -> str:
    """Rejection sampling, filters, cap, mix, split -> selected_{train,val} shards.

    Two sharded passes: candidates per shard (everything but the mix), then the mix quotas
    set from every shard's candidate questions and applied shard by shard.
    """
    from medrecipe.select import SELECTED_TRAIN, SELECTED_VAL, apply_mix_delta
    from medrecipe.sharded import SelectPayload, mix_shard, select_shard
    from medrecipe.store import merge_stats

    r = ctx.recipe
    cfg: dict[str, Any] = {"select": r.select}
    if r.select.difficulty:
        cfg["judge"] = r.teachers[r.select.difficulty.judge]
    payload = SelectPayload(ctx.models(), r.select, ctx.items_name)

    def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
        merged = merge_stats(parts)
        quotas, limits = candidate_mix_limits(ctx.run, r.select)
        merged["stats"]["mix_quotas"] = quotas
        merged["mix_limits"] = limits
        return merged

    ran1, rec1 = run_sharded_stage(ctx.run, "select.candidates", config_hash(cfg),
                                   {"items": items_fp, "grade": grade_fp}, ["select_candidates"],
                                   select_shard, ctx.n_shards, ctx.executor, payload,
                                   force=ctx.forced("select"), summarize=summarize)
    payload.limits = rec1.extra.get("mix_limits") or {}

    def summarize_mix(parts: list[dict[str, Any]]) -> dict[str, Any]:
        delta = merge_stats([p.get("mix_delta") or {} for p in parts])
        extra = {k: v for k, v in rec1.extra.items() if k not in ("stats", "mix_limits")}
        extra["stats"] = apply_mix_delta(rec1.extra.get("stats") or {}, delta)
        return extra

    ran, rec = run_sharded_stage(ctx.run, "select", config_hash(cfg),
                                 {"candidates": output_fingerprint(rec1)},
                                 [SELECTED_TRAIN, SELECTED_VAL], mix_shard, ctx.n_shards,
                                 ctx.executor, payload, force=ctx.forced("select"),
                                 summarize=summarize_mix)
    if not rec1.complete and rec.complete:  # the difficulty judge did not finish everywhere
        rec.complete = False
        ctx.run.record_stage(rec)
    ctx.log(f"select: {'done' if ran else 'up to date'}, {rec.rows.get('train', 0)} train / "
            f"{rec.rows.get('val', 0)} validation traces{took(ran, rec.seconds)}")
    return output_fingerprint(rec)


def candidate_mix_limits(run: Run, config) -> tuple[dict[str, int] | None, dict[str, Any]]:
    """Mix quotas and limits from every shard's candidate questions, streamed (8 bytes each)."""
    import numpy as np

    from medrecipe.select import mix_key, mix_limits

    mix = config.mix
    if not (mix.weights or mix.quotas or mix.total is not None):
        return None, {}
    keys: dict[str, list[np.ndarray]] = {}
    for batch in run.iter_batches("select_candidates", 65_536, ["source", "item_id"]):
        seen: dict[str, set[str]] = {}
        for s, x in zip(batch.column("source").to_pylist(), batch.column("item_id").to_pylist(),
                        strict=True):
            seen.setdefault(s, set()).add(x)
        for s, ids in seen.items():
            keys.setdefault(s, []).append(np.fromiter((mix_key(config.seed, x) for x in ids),
                                                      np.uint64, count=len(ids)))
    # A question's traces may straddle a batch boundary: count each key once.
    return mix_limits(config, {s: np.unique(np.concatenate(p)) for s, p in keys.items()})


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
        paths = export_selected({"train": ctx.run.path(SELECTED_TRAIN),
                                 "val": ctx.run.path(SELECTED_VAL)}, out, ctx.images, r.export)
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
