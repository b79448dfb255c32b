"""Curation part 2, after the traces: splits, the SFT training mix, its export, the GRPO set.

    curate.split    by article -> train / grpo / benchmark   curate/splits.parquet (one row per
                                                              article), curate/split_items.parquet,
                                                              benchmark/<name>.jsonl (+ images/)
    curate.mix      curated train items (reference traces) + auxiliary items with traces
                    distilled by the OctoMed pipeline, quotas per source and per task family
                                                              curate/sft_train, curate/sft_val
    curate.export   LLaMA-Factory / TRL / JSONL              export/
    curate.grpo     held-out curated items + named auxiliary sources, counts per source
                                                              curate/grpo_items, grpo/jsonl/

The benchmark split never reaches `curate.mix` or `curate.grpo`: they read only the train
and grpo splits, and both check it (`LeakError`). Auxiliary data comes from OctoMed run
directories (`medrecipe run`): a `recipe:` entry is brought up to date first, with its
`benchmark_source` reading this run's benchmark file, so that run's prepare stage removes
questions and images that overlap the benchmark before any trace is distilled.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from medrecipe.config import ExportConfig, config_hash, load_recipe, preflight
from medrecipe.console import RunLog, console
from medrecipe.curate import splits as sp
from medrecipe.curate import traces as tr
from medrecipe.curate.config import AuxiliarySpec
from medrecipe.curate.stage import CurateContext
from medrecipe.curate.trace_stage import TRACED
from medrecipe.errors import ImageError, RecipeError, UserError
from medrecipe.images import ImageStore
from medrecipe.schema import ITEM_SCHEMA, LETTERS, Item, items_from_table, to_table
from medrecipe.select import SELECTED_SCHEMA, boxed_answer
from medrecipe.store import Run, StageResult, run_stage

SPLITS_TABLE = "curate/splits"
SPLIT_ITEMS = "curate/split_items"
SFT_TRAIN = "curate/sft_train"
SFT_VAL = "curate/sft_val"
GRPO_ITEMS = "curate/grpo_items"
BENCHMARK_DIR = "benchmark"
EXPORT_DIR = "export"
GRPO_DIR = "grpo"

SPLIT_SCHEMA = pa.schema([pa.field("article_id", pa.string()), pa.field("split", pa.string()),
                          pa.field("items", pa.int32()),
                          pa.field("item_ids", pa.list_(pa.string())),
                          pa.field("record_ids", pa.list_(pa.string()))])


class LeakError(UserError):
    """A benchmark item was about to reach a training set (a bug; nothing is written)."""


def _h64(seed: int, value: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{value}".encode()).digest()[:8], "big")


def benchmark_file(ctx: CurateContext) -> Path:
    """Where the benchmark split is written as an items file."""
    return ctx.run.root / BENCHMARK_DIR / f"{ctx.recipe.split.benchmark_name}.jsonl"


def split_ids(run: Run, split: str) -> set[str]:
    """Item ids of one split (empty before the split stage ran)."""
    if not run.has(SPLIT_ITEMS):
        return set()
    t = run.read_table(SPLIT_ITEMS, columns=["id", "split"]).to_pylist()
    return {r["id"] for r in t if r["split"] == split}


def split_items(run: Run, split: str) -> list[Item]:
    """The traced Items of one split."""
    if not run.has(SPLIT_ITEMS):
        return []
    return [it for it in items_from_table(run.read_table(SPLIT_ITEMS)) if it.split == split]


# --------------------------------------------------------------------------- split


def split_stage(ctx: CurateContext, upstream: str) -> str:
    """Traced items split by article -> curate/splits, curate/split_items, benchmark file."""
    cfg = ctx.recipe.split
    bench = benchmark_file(ctx)

    def body() -> StageResult:
        items = items_from_table(ctx.run.read_table(TRACED)) if ctx.run.has(TRACED) else []
        parts, by_article, targets = sp.split_items(items, cfg.benchmark, cfg.grpo, cfg.seed)
        rows: dict[str, dict[str, Any]] = {}
        for split in sp.SPLITS:
            for it in parts[split]:
                a = sp.article_of(it)
                row = rows.setdefault(a, {"article_id": a, "split": split, "items": 0,
                                          "item_ids": [], "record_ids": []})
                row["items"] += 1
                row["item_ids"].append(it.id)
                rid = (it.meta or {}).get("record_id")
                if rid and rid not in row["record_ids"]:
                    row["record_ids"].append(rid)
        clash = sp.articles_in_two_splits({it.id: it.split for s in parts.values() for it in s},
                                          {it.id: sp.article_of(it) for it in items})
        if clash:  # cannot happen by construction; refuse to write a leaking split
            raise LeakError(f"articles in two splits: {sorted(clash)[:5]}")
        ordered = [it for s in sp.SPLITS for it in parts[s]]
        ctx.run.write_table(SPLITS_TABLE, pa.Table.from_pylist(
            sorted(rows.values(), key=lambda r: (sp.SPLITS.index(r["split"]), r["article_id"])),
            schema=SPLIT_SCHEMA))
        ctx.run.write_table(SPLIT_ITEMS, to_table(ordered, ITEM_SCHEMA) if ordered
                            else ITEM_SCHEMA.empty_table())
        sp.write_benchmark(parts["benchmark"], ctx.images, bench.parent, bench.stem)
        counts = {s: {"items": len(parts[s]),
                      "articles": sum(1 for v in by_article.values() if v == s)}
                  for s in sp.SPLITS}
        return StageResult(rows={s: len(parts[s]) for s in sp.SPLITS},
                           extra={"splits": counts, "targets": targets, "seed": cfg.seed,
                                  "benchmark_file": str(bench)})

    ran, rec = run_stage(ctx.run, "curate.split", config_hash(cfg), {"traces": upstream},
                         [SPLITS_TABLE, SPLIT_ITEMS], body,
                         force=ctx.forced("split") or not bench.exists())
    c = rec.extra.get("splits", {})
    ctx.log(f"split: {'done' if ran else 'up to date'}, "
            + ", ".join(f"{s} {c.get(s, {}).get('items', 0)} items / "
                        f"{c.get(s, {}).get('articles', 0)} articles" for s in sp.SPLITS))
    return rec.fingerprint


# --------------------------------------------------------------------------- auxiliary runs


@dataclass
class AuxRun:
    """An OctoMed run whose selected traces (and items) feed the mix and the GRPO set."""

    name: str
    run: Run
    images: ImageStore
    fingerprint: str
    complete: bool


def _recipe_file(path: str) -> Path:
    p = Path(path)
    if p.exists() or p.parent != Path("."):
        return p
    from importlib.resources import files

    packaged = Path(str(files("medrecipe") / "recipes" / p.name))
    return packaged if packaged.exists() else p


class _IndentedLog(RunLog):
    """An auxiliary run's log: its own file, and indented lines on the console."""

    def __init__(self, inner: RunLog):  # noqa: D107 - shares the inner log's file and handlers
        self.__dict__.update(inner.__dict__)

    def __call__(self, message: str) -> None:
        if self.echo:
            console.print(f"  {message}")
        self.file_only(message)


def auxiliary_recipe(spec: AuxiliarySpec, index: int = 0):
    """The auxiliary OctoMed recipe of an entry, validated; RecipeError names what is wrong."""
    from medrecipe.config import Recipe

    loc = f"mix.auxiliary.{index}"
    path = _recipe_file(spec.recipe or "")
    if not path.is_file():
        raise RecipeError([(f"{loc}.recipe", f"file not found: {path} (an OctoMed recipe, "
                                             "relative to the curation recipe's folder)")])
    recipe: Recipe = load_recipe(path, spec.overrides)[0]
    if spec.benchmark_source is not None:
        src = next((s for s in recipe.sources if s.name == spec.benchmark_source), None)
        if src is None or src.role != "benchmark":
            raise RecipeError([(f"{loc}.benchmark_source",
                                f"{path} has no source {spec.benchmark_source!r} with role: "
                                "benchmark")])
    return path, recipe


def check_auxiliary(recipe) -> None:
    """Fail before any work when an auxiliary recipe cannot be read (a CurateRecipe)."""
    for i, spec in enumerate(recipe.mix.auxiliary):
        if spec.recipe is not None:
            auxiliary_recipe(spec, i)


def auxiliary_run(ctx: CurateContext, spec: AuxiliarySpec, bench: Path) -> AuxRun:
    """Bring an auxiliary OctoMed recipe up to date (or open an existing run) and return it."""
    if spec.recipe is not None:
        from medrecipe import pipeline

        path, recipe = auxiliary_recipe(spec)
        recipe.run_dir = str(Path(spec.run_dir) if spec.run_dir
                             else ctx.run.root / "auxiliary" / recipe.name)
        if spec.benchmark_source is not None:
            src = next(s for s in recipe.sources if s.name == spec.benchmark_source)
            src.path, src.format, src.adapter = str(bench), "jsonl", "generic"
        preflight(recipe, str(path))
        ctx.log(f"auxiliary: {recipe.name} ({path}) -> {recipe.run_dir}")
        actx = pipeline.open_context(recipe, recipe.model_dump(mode="json"),
                                     progress=ctx.progress, echo=ctx.log.echo)
        actx.log = _IndentedLog(actx.log)
        outcome = pipeline.run_recipe(actx)
        root, name, complete = Path(recipe.run_dir), recipe.name, outcome.complete
    else:
        root = Path(spec.run or "")
        if not (root / "manifest.json").exists():
            raise UserError(f"mix.auxiliary: {root} is not a medrecipe run directory; run its "
                            "recipe with `medrecipe run` first")
        name, complete = root.name, True
    run = Run(root, create=False)
    sel = run.stage("select")
    if sel is None or not run.has("selected_train"):
        raise UserError(f"mix.auxiliary: {root} has no selected traces (its select stage has "
                        "not run)")
    complete = complete and sel.complete
    fp = sel.fingerprint if sel.complete else f"{sel.fingerprint}-partial-{sel.finished_at}"
    images = ImageStore(run.manifest.get("image_store") or root / "images")
    return AuxRun(name, run, images, fp, complete)


def auxiliary_runs(ctx: CurateContext) -> list[AuxRun]:
    """Every auxiliary run of the recipe, each brought up to date."""
    bench = benchmark_file(ctx)
    return [auxiliary_run(ctx, spec, bench) for spec in ctx.recipe.mix.auxiliary]


def image_resolver(stores: Iterable[ImageStore]):
    """ref -> file path, looking in each store in turn (curated and auxiliary images)."""
    stores = list(stores)

    def resolve(ref: str) -> Path:
        for s in stores:
            if s.has(ref):
                return s.path(ref)
        raise ImageError(f"image {ref} is in none of the image stores "
                         f"({', '.join(str(s.root) for s in stores)})")

    return resolve


# --------------------------------------------------------------------------- rows


def selected_row(it: Item, target: str, target_format: str, split: str, *, teacher: str = "",
                 model: str | None = None, key: str | None = None, method: str) -> dict:
    """A row of SELECTED_SCHEMA (what the exporters read) for one Item."""
    options = list(it.options)
    return {"id": f"{it.id}#{method}", "item_id": it.id, "source": it.source, "task": it.task,
            "question": it.question, "options": options, "answer": it.answer,
            "answer_text": options[LETTERS.index(it.answer)] if options else it.answer,
            "images": list(it.images), "modality": it.modality, "anatomy": it.anatomy,
            "teacher": teacher, "model": model, "key": key or it.id, "sample_index": 0,
            "method": method, "completion_tokens": None, "target": target,
            "target_format": target_format, "split": split}


def curated_sft_rows(items: Iterable[Item], teacher: str, val_fraction: float, seed: int
                     ) -> list[dict[str, Any]]:
    """SFT rows of curated items: the reference trace as a think/answer target."""
    rows = []
    for it in items:
        trace = (it.meta or {}).get("reference_trace")
        info = (it.meta or {}).get("trace") or {}
        if not isinstance(trace, dict):
            raise UserError(f"curated item {it.id} has no reference trace")
        val = val_fraction > 0 and _h64(seed, "val:" + sp.article_of(it)) / 2.0**64 < val_fraction
        rows.append(selected_row(it, tr.sft_target(trace, it.options, it.answer), "cot",
                                 "val" if val else "train", teacher=teacher,
                                 model=info.get("refine_model"), key=info.get("refine_key"),
                                 method="reference_trace"))
    return rows


def _selected_batches(a: AuxRun, columns: list[str] | None = None):
    """Batches of an auxiliary run's selected traces (train, then validation)."""
    for name in ("selected_train", "selected_val"):
        if a.run.has(name):
            yield from a.run.iter_batches(name, 2048, columns)


def _families(run: Run) -> dict[str, str]:
    """item id -> task family of an auxiliary run's items (meta.family, else the task)."""
    out = {}
    for b in run.iter_batches("items", columns=["id", "task", "meta"]):
        for r in b.to_pylist():
            meta = json.loads(r["meta"] or "{}")
            out[r["id"]] = str(meta.get("family") or r["task"])
    return out


def apply_quotas(questions: dict[str, tuple[str, str]], quotas: dict[str, int],
                 family_quotas: dict[str, int], seed: int) -> tuple[set[str], Counter]:
    """Questions kept under per-source and per-family quotas, in seeded hash order.

    `questions` maps item id -> (source, family). A question is kept while both its source
    and its family have room; returns the kept ids and why the others went.
    """
    used_src: Counter = Counter()
    used_fam: Counter = Counter()
    kept: set[str] = set()
    dropped: Counter = Counter()
    for qid in sorted(questions, key=lambda q: (_h64(seed, "mix:" + q), q)):
        src, fam = questions[qid]
        if src in quotas and used_src[src] >= quotas[src]:
            dropped["source_quota"] += 1
            continue
        if fam in family_quotas and used_fam[fam] >= family_quotas[fam]:
            dropped["family_quota"] += 1
            continue
        used_src[src] += 1
        used_fam[fam] += 1
        kept.add(qid)
    return kept, dropped


# --------------------------------------------------------------------------- mix


def mix_stage(ctx: CurateContext, upstream: str, aux: list[AuxRun]) -> str:
    """Curated train items plus auxiliary traces under quotas -> curate/sft_train, sft_val."""
    cfg = ctx.recipe.mix
    teacher = ctx.recipe.refine.teacher if ctx.recipe.refine else ""

    def body() -> StageResult:
        # Pass 1 reads light columns only: which questions exist, their source, family and
        # row counts; the quotas are decided from those. Pass 2 streams the kept rows out.
        held_out = split_ids(ctx.run, "benchmark") | split_ids(ctx.run, "grpo")
        train = split_items(ctx.run, "train")
        curated = curated_sft_rows(train, teacher or "", cfg.val_fraction, cfg.seed)
        questions: dict[str, tuple[str, str]] = {}
        rows_of: dict[str, Counter] = defaultdict(Counter)  # question -> {train: n, val: n}
        origin: dict[str, str] = {}
        for it, r in zip(train, curated, strict=True):
            questions[it.id] = (it.source, str((it.meta or {}).get("family") or it.task))
            rows_of[it.id][r["split"]] += 1
            origin[it.id] = "curated"
        for a in aux:
            fam = _families(a.run)
            for b in _selected_batches(a, ["item_id", "source", "task", "split"]):
                for r in b.to_pylist():
                    q = r["item_id"]
                    if origin.setdefault(q, a.name) != a.name:
                        raise UserError(f"item {q} appears in two inputs of the mix "
                                        f"({origin[q]} and {a.name})")
                    questions[q] = (r["source"], fam.get(q, r["task"]))
                    rows_of[q]["val" if r["split"] == "val" else "train"] += 1
        leaked = held_out & set(questions)
        if leaked:
            raise LeakError(f"held-out curated items reached the SFT mix: {sorted(leaked)[:5]}")
        kept, dropped = apply_quotas(questions, cfg.quotas, cfg.family_quotas, cfg.seed)

        sinks = {"train": ctx.run.sink(SFT_TRAIN, SELECTED_SCHEMA),
                 "val": ctx.run.sink(SFT_VAL, SELECTED_SCHEMA)}
        try:
            for split in sinks:
                rows = [r for r in curated if r["item_id"] in kept and r["split"] == split]
                sinks[split].write(pa.Table.from_pylist(rows, schema=SELECTED_SCHEMA))
            keep = pa.array(sorted(q for q in kept if origin[q] != "curated"), pa.string())
            for a in aux:
                for b in _selected_batches(a):
                    b = b.filter(pc.is_in(b.column("item_id"), keep))
                    is_val = pc.fill_null(pc.equal(b.column("split"), "val"), False)
                    sinks["val"].write(b.filter(is_val).select(SELECTED_SCHEMA.names)
                                       .cast(SELECTED_SCHEMA))
                    sinks["train"].write(b.filter(pc.invert(is_val))
                                         .select(SELECTED_SCHEMA.names).cast(SELECTED_SCHEMA))
        except BaseException:
            for sink in sinks.values():
                sink.abort()
            raise
        for sink in sinks.values():
            sink.commit()
        by_source: dict[str, Counter] = defaultdict(Counter)
        by_family: dict[str, Counter] = defaultdict(Counter)
        for q in kept:
            src, fam = questions[q]
            for group in (by_source[src], by_family[fam]):
                group.update(rows_of[q])
                group["questions"] += 1
        n = {k: sum(rows_of[q][k] for q in kept) for k in ("train", "val")}
        return StageResult(
            rows=n, complete=all(a.complete for a in aux),
            extra={"questions_in": len(questions), "questions_out": len(kept),
                   "dropped": dict(dropped),
                   "curated_questions": sum(1 for q in kept if origin[q] == "curated"),
                   "auxiliary": {a.name: str(a.run.root) for a in aux},
                   "by_source": {k: dict(v) for k, v in sorted(by_source.items())},
                   "by_family": {k: dict(v) for k, v in sorted(by_family.items())}})

    inputs = {"split": upstream, **{f"aux.{a.name}": a.fingerprint for a in aux}}
    ran, rec = run_stage(ctx.run, "curate.mix", config_hash(cfg), inputs, [SFT_TRAIN, SFT_VAL],
                         body, force=ctx.forced("mix"))
    x = rec.extra
    ctx.log(f"mix: {'done' if ran else 'up to date'}, {x.get('questions_out', 0)} questions "
            f"({x.get('curated_questions', 0)} curated), {rec.rows.get('train', 0)} train / "
            f"{rec.rows.get('val', 0)} validation rows")
    return rec.fingerprint if rec.complete else f"{rec.fingerprint}-partial-{rec.finished_at}"


# --------------------------------------------------------------------------- export


def _export(ctx: CurateContext, name: str, tables: dict[str, str], out: Path,
            cfg: ExportConfig, aux: list[AuxRun], upstream: str, force: bool) -> dict[str, str]:
    from medrecipe.console import progress_enabled
    from medrecipe.export import export

    def body() -> StageResult:
        if not progress_enabled(ctx.progress):
            import datasets

            datasets.disable_progress_bars()
        paths = export({k: ctx.run.path(t) for k, t in tables.items()}, out,
                       image_resolver([ctx.images, *(a.images for a in aux)]), cfg)
        empty = paths.pop("empty", None) is not None
        return StageResult(rows={k: ctx.run.num_rows(t) for k, t in tables.items()},
                           extra={"paths": {k: str(v) for k, v in paths.items()},
                                  "empty": empty})

    ran, rec = run_stage(ctx.run, f"curate.{name}", config_hash(cfg), {"rows": upstream}, [],
                         body, force=force or not out.exists())
    ctx.log(f"{name.replace('_', ' ')}: {'done' if ran else 'up to date'} -> {out}"
            + (" [yellow](empty: nothing to export)[/yellow]" if rec.extra.get("empty") else ""))
    return rec.extra.get("paths", {})


def export_stage(ctx: CurateContext, upstream: str, aux: list[AuxRun]) -> dict[str, str]:
    """The SFT mix through the LLaMA-Factory / TRL / JSONL exporters -> export/."""
    return _export(ctx, "export", {"train": SFT_TRAIN, "val": SFT_VAL},
                   ctx.run.root / EXPORT_DIR, ctx.recipe.export, aux, upstream,
                   ctx.forced("export"))


# --------------------------------------------------------------------------- GRPO set


def _take(items: list[Item], n: int | None, seed: int) -> list[Item]:
    ordered = sorted(items, key=lambda it: (_h64(seed, "grpo:" + it.id), it.id))
    return ordered if n is None else ordered[:n]


def grpo_stage(ctx: CurateContext, upstream: str, aux: list[AuxRun]) -> dict[str, str]:
    """Held-out curated items plus named auxiliary sources -> curate/grpo_items, grpo/jsonl."""
    cfg = ctx.recipe.grpo
    if not cfg.enabled:
        return {}

    def body() -> StageResult:
        bench = split_ids(ctx.run, "benchmark")
        picked = _take(split_items(ctx.run, "grpo"), cfg.curated, cfg.seed)
        counts = {"curated": {"wanted": cfg.curated, "available": len(split_ids(ctx.run, "grpo")),
                              "taken": len(picked)}}
        in_sft = set(ctx.run.read_table(SFT_TRAIN, columns=["item_id"]).column(0).to_pylist())
        in_sft |= set(ctx.run.read_table(SFT_VAL, columns=["item_id"]).column(0).to_pylist())
        for source, n in cfg.sources.items():
            pool: list[Item] = []
            for a in aux:
                for b in a.run.iter_batches("items"):
                    pool += [it for it in items_from_table(b)
                             if it.source == source and it.id not in in_sft]
            if not pool and not any(_has_source(a.run, source) for a in aux):
                raise UserError(f"grpo.sources names {source!r}, which no auxiliary run has "
                                f"(runs: {', '.join(a.name for a in aux)})")
            took = _take(pool, n, cfg.seed)
            counts[source] = {"wanted": n, "available": len(pool), "taken": len(took)}
            picked += took
        leaked = bench & {it.id for it in picked}
        if leaked:
            raise LeakError(f"benchmark items reached the GRPO set: {sorted(leaked)[:5]}")
        rows = [selected_row(it, boxed_answer(list(it.options), it.answer), "direct", "train",
                             method="grpo") for it in picked]
        ctx.run.write_table(GRPO_ITEMS, pa.Table.from_pylist(rows, schema=SELECTED_SCHEMA))
        return StageResult(rows={"questions": len(rows)}, extra={"by_source": counts})

    fp_inputs = {"mix": upstream, **{f"aux.{a.name}": a.fingerprint for a in aux}}
    ran, rec = run_stage(ctx.run, "curate.grpo", config_hash(cfg), fp_inputs, [GRPO_ITEMS],
                         body, force=ctx.forced("grpo"))
    counts = rec.extra.get("by_source", {})
    ctx.log(f"grpo set: {'done' if ran else 'up to date'}, {rec.rows.get('questions', 0)} "
            "questions (" + ", ".join(f"{s} {c['taken']}" for s, c in counts.items()) + ")")
    export_cfg = ExportConfig(formats=["jsonl"], dataset_name=cfg.dataset_name,
                              instruction=cfg.instruction, system_prompt=cfg.system_prompt)
    return _export(ctx, "grpo_export", {"train": GRPO_ITEMS}, ctx.run.root / GRPO_DIR,
                   export_cfg, aux, rec.fingerprint, ctx.forced("grpo"))


def _has_source(run: Run, source: str) -> bool:
    return source in (run.manifest.get("sources") or {})


def grpo_file(ctx_or_root: CurateContext | Path, dataset_name: str) -> Path:
    """The JSONL that `medrecipe train grpo` reads for this run's GRPO set."""
    root = ctx_or_root.run.root if isinstance(ctx_or_root, CurateContext) else Path(ctx_or_root)
    return root / GRPO_DIR / "jsonl" / f"{dataset_name}_train.jsonl"


def compose_funnel(run: Run) -> dict[str, Any] | None:
    """Splits, mix and GRPO set of a run, for the funnel print-out and the report."""
    split = run.stage("curate.split")
    if split is None:
        return None
    mix, grpo = run.stage("curate.mix"), run.stage("curate.grpo")
    return {"splits": split.extra.get("splits", {}), "targets": split.extra.get("targets", {}),
            "benchmark_file": split.extra.get("benchmark_file"),
            "mix": ({"rows": mix.rows, **{k: mix.extra.get(k) for k in
                                          ("questions_in", "questions_out", "dropped",
                                           "curated_questions", "by_source", "by_family",
                                           "auxiliary")}} if mix else None),
            "grpo": ({"questions": grpo.rows.get("questions", 0),
                      "by_source": grpo.extra.get("by_source", {})} if grpo else None)}
