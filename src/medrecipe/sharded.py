"""The per-shard bodies of the recipe's stages: generate, grade, select (two passes), annotate.

Each function takes one `ShardJob` (run directory, shard i of n, a picklable payload) and
reads shard i of its inputs, writes shard i of its outputs (atomically) and returns a
`ShardOutcome`. They are plain module-level functions over Arrow tables and the existing
stage code (`generate_items`, `grade_generations`, `select`), so the local executor and Ray
run exactly the same thing. Model calls use the shard's own request cache
(`ShardCache`), so no SQLite file is written by two workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medrecipe.config import (
    AnnotateConfig,
    GenerateConfig,
    GradeConfig,
    SelectConfig,
    TeacherConfig,
)
from medrecipe.executors import ShardJob, ShardOutcome
from medrecipe.generate.budget import Budget
from medrecipe.schema import GENERATION_SCHEMA, ITEM_SCHEMA, VERDICT_SCHEMA, Generation, to_table
from medrecipe.shards import iter_batches, shard_file, write_shard

__all__ = ["ModelAccess", "annotate_shard", "generate_shard", "grade_shard",
           "mix_shard", "select_shard"]


@dataclass
class ModelAccess:
    """What a shard needs to call models: teachers, cache folder, image store, test hooks."""

    teachers: dict[str, TeacherConfig]
    cache_dir: str
    image_root: str
    max_image_pixels: int | None = None
    progress: bool | None = None
    backends: Any = None  # test hook: backend objects per teacher (in-process only)


@lru_cache(maxsize=8)
def _store(root: str, max_pixels: int | None):
    from medrecipe.images import ImageStore

    return ImageStore(root, max_pixels=max_pixels)


def _images(m: ModelAccess):
    return _store(m.image_root, m.max_image_pixels)


def _cache(m: ModelAccess, job: ShardJob):
    from medrecipe.generate.cache import ShardCache

    return ShardCache(m.cache_dir, job.shard, job.n_shards)


def _read(job: ShardJob, name: str, schema: pa.Schema, columns: list[str] | None = None
          ) -> pa.Table:
    p = Path(job.run_root) / f"{name}.parquet" / shard_file(job.shard, job.n_shards)
    if not p.exists():
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    return pq.read_table(p, columns=columns)


def _out(job: ShardJob, name: str) -> Path:
    return Path(job.run_root) / f"{name}.parquet" / shard_file(job.shard, job.n_shards)


def _label(job: ShardJob, what: str) -> str:
    return what if job.n_shards == 1 else f"{what} {job.shard + 1}/{job.n_shards}"


# --------------------------------------------------------------------------- generate


@dataclass
class GeneratePayload:
    models: ModelAccess
    config: GenerateConfig
    items: str = "items"
    budget: Budget = field(default_factory=lambda: Budget(None))


def generate_shard(job: ShardJob) -> ShardOutcome:
    """Teacher samples for the items of one shard -> generations shard (cached, resumable)."""
    from medrecipe.generate.checks import OutputChecks
    from medrecipe.generate.stage import engine_extra, generate_items
    from medrecipe.store import ParquetSink

    p: GeneratePayload = job.payload
    items = _read(job, p.items, ITEM_SCHEMA)
    cache = _cache(p.models, job)
    sink = ParquetSink(_out(job, "generations"), GENERATION_SCHEMA)
    checks = OutputChecks(p.config.n)
    try:
        def write(batch: list[Generation]) -> None:
            sink.write(to_table(batch, GENERATION_SCHEMA))

        result, _ = generate_items(items, p.models.teachers, p.config, cache, _images(p.models),
                                   write, progress=p.models.progress, backends=p.models.backends,
                                   budget_usd=p.budget.remaining(),
                                   description=_label(job, "generate"), checks=checks)
    except BaseException:
        sink.abort()
        raise
    finally:
        cache.close()
    sink.commit()
    p.budget.spent(result.spend_usd)
    return ShardOutcome(job.shard, rows={"generations": sink.rows},
                        complete=result.complete and result.failures == 0,
                        stats=engine_extra(result, checks=checks))


# --------------------------------------------------------------------------- grade


@dataclass
class GradePayload:
    models: ModelAccess
    config: GradeConfig
    items: str = "items"


def grade_shard(job: ShardJob) -> ShardOutcome:
    """A verdict per generation of one shard -> verdicts shard (generations read in batches)."""
    from medrecipe.answers import grade_generations
    from medrecipe.store import ParquetSink

    p: GradePayload = job.payload
    judge = reader = cache = None
    if p.config.judge or p.config.choice_judge:
        cache = _cache(p.models, job)
    if p.config.judge:
        from medrecipe.judge import make_open_judge

        judge = make_open_judge(p.config.judge, p.models.teachers, p.config.judge_template, cache,
                                _images(p.models), progress=p.models.progress,
                                backends=p.models.backends)
    if p.config.choice_judge:
        from medrecipe.judge import ChoiceReader

        reader = ChoiceReader(p.config.choice_judge, p.models.teachers,
                              p.config.choice_judge_template, cache, _images(p.models),
                              progress=p.models.progress, backends=p.models.backends,
                              budget_usd=p.config.choice_judge_budget_usd)
    items = _read(job, p.items, ITEM_SCHEMA)
    sink = ParquetSink(_out(job, "verdicts"), VERDICT_SCHEMA)
    rows = {"verdicts": 0, "correct": 0, "ungradable": 0}
    methods: dict[str, int] = {}
    try:
        for batch in iter_batches(_out(job, "generations"), 8192):
            v = grade_generations(batch, items, p.config, judge=judge, choice_judge=reader)
            sink.write(v)
            correct = v.column("correct").to_pylist()
            rows["verdicts"] += v.num_rows
            rows["correct"] += sum(1 for c in correct if c is True)
            rows["ungradable"] += sum(1 for c in correct if c is None)
            for m in v.column("method").to_pylist():
                methods[m] = methods.get(m, 0) + 1
    except BaseException:
        sink.abort()
        raise
    finally:
        if cache is not None:
            cache.close()
    sink.commit()
    stats: dict[str, Any] = {"methods": methods}
    complete = True
    if reader is not None:
        stats["choice_judge"] = reader.counts()
        complete = bool(stats["choice_judge"].pop("complete", True))
    return ShardOutcome(job.shard, rows=rows, complete=complete, stats=stats)


# --------------------------------------------------------------------------- select


@dataclass
class SelectPayload:
    models: ModelAccess
    config: SelectConfig
    items: str = "items"
    limits: dict[str, Any] = field(default_factory=dict)  # pass 2: mix limits per source


def select_shard(job: ShardJob) -> ShardOutcome:
    """Pass 1 of select on one shard: rejection sampling, filters, cap, split (no mix yet)
    -> select_candidates shard; returns the stats and the mix order keys of its questions."""
    from medrecipe.select import SELECTED_SCHEMA, select

    p: SelectPayload = job.payload
    items = _read(job, p.items, ITEM_SCHEMA)
    ratings, extra, complete = None, {}, True
    if p.config.difficulty:
        from medrecipe.judge import rate_difficulty

        d = p.config.difficulty
        cache = _cache(p.models, job)
        try:
            res = rate_difficulty(items, d.judge, p.models.teachers, d.template, cache,
                                  _images(p.models), progress=p.models.progress,
                                  backends=p.models.backends)
        finally:
            cache.close()
        ratings = {k: int(v) for k, v in res.values.items()}
        extra["difficulty"] = {"rated": len(ratings), "unparsed": res.unparsed,
                               "failed": res.failed, "spend_usd": res.spend_usd}
        complete = res.complete
    gens_path = _out(job, "generations")
    light = [c for c in GENERATION_SCHEMA.names if c not in ("text", "reasoning")]

    def texts(keys: list[str]) -> pa.Table:
        # Only the candidates' texts, streamed from the shard file batch by batch.
        import pyarrow.compute as pc

        want = pa.array(keys, pa.string())
        cols = ["key", "text", "reasoning", "model", "completion_tokens"]
        parts = [b.filter(pc.is_in(b.column("key"), want))
                 for b in iter_batches(gens_path, 8192, cols)]
        return pa.concat_tables(parts) if parts else GENERATION_SCHEMA.empty_table().select(cols)

    result = select(items, _read(job, "generations", GENERATION_SCHEMA, light),
                    _read(job, "verdicts", VERDICT_SCHEMA), p.config, difficulty=ratings,
                    defer_mix=True, texts=texts)
    table = pa.concat_tables([result.train, result.val])
    write_shard(_out(job, "select_candidates"), table, SELECTED_SCHEMA)
    return ShardOutcome(job.shard, rows={"candidates": table.num_rows}, complete=complete,
                        stats={"stats": result.stats, **extra})


def mix_shard(job: ShardJob) -> ShardOutcome:
    """Pass 2 of select on one shard: the mix limits set from all shards, then the split
    -> selected_train / selected_val shards."""
    import pyarrow.compute as pc

    from medrecipe.select import SELECTED_SCHEMA, SELECTED_TRAIN, SELECTED_VAL, apply_mix

    p: SelectPayload = job.payload
    table = _read(job, "select_candidates", SELECTED_SCHEMA)
    kept, delta = apply_mix(table, p.limits, p.config.seed)
    is_val = pc.equal(kept.column("split"), "val") if kept.num_rows else pa.array([], pa.bool_())
    train = kept.filter(pc.invert(is_val)) if kept.num_rows else kept
    val = kept.filter(is_val) if kept.num_rows else kept
    write_shard(_out(job, SELECTED_TRAIN), train, SELECTED_SCHEMA)
    write_shard(_out(job, SELECTED_VAL), val, SELECTED_SCHEMA)
    return ShardOutcome(job.shard, rows={"train": train.num_rows, "val": val.num_rows},
                        stats={"mix_delta": delta})


# --------------------------------------------------------------------------- annotate


@dataclass
class AnnotatePayload:
    models: ModelAccess
    config: AnnotateConfig


def annotate_shard(job: ShardJob) -> ShardOutcome:
    """Missing modality / anatomy filled by the labeller for one shard -> items_labelled."""
    from medrecipe.judge import annotate_items

    p: AnnotatePayload = job.payload
    cache = _cache(p.models, job)
    try:
        table, res = annotate_items(_read(job, "items", ITEM_SCHEMA), p.config.labeller,
                                    p.models.teachers, p.config.template, cache, _images(p.models),
                                    progress=p.models.progress, backends=p.models.backends)
    finally:
        cache.close()
    write_shard(_out(job, "items_labelled"), table, ITEM_SCHEMA)
    return ShardOutcome(job.shard, rows={"labelled": len(res.values), "unparsed": res.unparsed,
                                         "failed": res.failed},
                        complete=res.complete, stats={"spend_usd": res.spend_usd})
