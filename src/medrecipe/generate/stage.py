"""The `generate` stage: every item to its routed teacher, n samples each, into generations.parquet."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from medrecipe.config import GenerateConfig, TeacherConfig
from medrecipe.errors import UserError
from medrecipe.generate.backends import Backend
from medrecipe.generate.checks import OutputChecks, check_warnings
from medrecipe.generate.engine import Engine, EngineResult, GenRequest
from medrecipe.prompts import PromptTemplate, load_template
from medrecipe.schema import GENERATION_SCHEMA, Generation, items_from_table, to_table
from medrecipe.store import Run, StageResult

if TYPE_CHECKING:
    from medrecipe.images import ImageStore

log = logging.getLogger("medrecipe.generate")

__all__ = ["build_requests", "engine_extra", "generate_items", "generate_stage", "route",
           "used_templates"]


def route(task: str, routes: Mapping[str, str], teachers: Mapping[str, TeacherConfig]) -> str:
    """Teacher name for a task: routes[task], else routes["*"], else the only teacher."""
    name = routes.get(task) or routes.get("*")
    if name is None:
        if len(teachers) == 1:
            return next(iter(teachers))
        if not teachers:
            raise UserError("the recipe defines no teachers; add one under `teachers:`")
        raise UserError(f"no teacher is routed for task {task!r}; add generate.routes.{task} "
                        "or a default generate.routes.'*'")
    if name not in teachers:
        raise UserError(f"generate.routes sends task {task!r} to unknown teacher {name!r}")
    return name


def build_requests(items: pa.Table, teachers: Mapping[str, TeacherConfig],
                   config: GenerateConfig, templates: Mapping[str, PromptTemplate] | None = None,
                   batch_size: int = 4096) -> Iterator[GenRequest]:
    """GenRequests for every item (lazily, batch by batch), routed and rendered."""
    templates = dict(templates or {})
    for batch in items.to_batches(max_chunksize=batch_size):
        for item in items_from_table(pa.Table.from_batches([batch])):
            name = route(item.task, config.routes, teachers)
            tpl = templates.get(name)
            if tpl is None:
                tpl = templates[name] = load_template(teachers[name].template)
            yield GenRequest(item_id=item.id, teacher=name, messages=tpl.render(item),
                             n=config.n, source=item.source, template=tpl.name,
                             template_hash=tpl.hash)


def used_templates(items: pa.Table, teachers: Mapping[str, TeacherConfig],
                   config: GenerateConfig) -> dict[str, PromptTemplate]:
    """The loaded template of every teacher the items route to (a bad one fails here, first)."""
    tasks = set(items.column("task").to_pylist()) if items.num_rows else set()
    used = {route(t, config.routes, teachers) for t in sorted(tasks)}
    return {name: load_template(teachers[name].template) for name in sorted(used)}


def generate_items(items: pa.Table, teachers: Mapping[str, TeacherConfig], config: GenerateConfig,
                   cache, images: ImageStore | None, write, *, progress: bool | None = None,
                   backends: Mapping[str, Backend] | None = None, budget_usd: float | None = None,
                   description: str = "generate", checks: OutputChecks | None = None,
                   ) -> tuple[EngineResult, dict[str, dict]]:
    """Run `config.n` samples per item through the engine, passing batches to `write`.

    `cache` is a RequestCache, or a folder / .sqlite path. Returns the engine's result and
    the template of each teacher used ({teacher: {template, hash, origin}}). `checks`, when
    given, counts every batch written (length cuts, identical samples).
    """
    templates = used_templates(items, teachers, config)
    info = {name: {"template": t.name, "hash": t.hash, "origin": t.origin}
            for name, t in templates.items()}
    engine = Engine({k: teachers[k] for k in templates}, cache, images=images,
                    budget_usd=budget_usd, progress=progress, backends=backends,
                    description=description)
    sink = write
    if checks is not None:
        def sink(batch: list[Generation]) -> None:
            checks.add(batch)
            write(batch)

    result = engine.run(build_requests(items, teachers, config, templates), sink=sink,
                        total=items.num_rows * config.n)
    return result, info


def engine_extra(result: EngineResult, template_info: dict[str, dict] | None = None,
                 checks: OutputChecks | None = None) -> dict:
    """What the manifest keeps of one engine run (with `checks`: its `output_checks`)."""
    extra = {
        "spend_usd": round(result.spend_usd, 8),
        "cost_usd_total": round(result.cost_usd_total, 8),
        "failures": result.failures,
        "cached": result.cached,
        "requests_sent": result.requests_sent,
        "not_launched": result.not_launched,
        "stopped": result.stopped,
        "by_teacher": result.by_teacher,
    }
    if checks is not None:
        extra["output_checks"] = checks.counts()
    if template_info is not None:
        extra["template_hashes"] = template_info
    return extra


def generate_stage(items: pa.Table, teachers: Mapping[str, TeacherConfig], config: GenerateConfig,
                   run: Run, images: ImageStore | None, *, progress: bool | None = None,
                   backends: Mapping[str, Backend] | None = None,
                   output: str = "generations") -> StageResult:
    """Sample `config.n` responses per item from its routed teacher; write `output` Parquet.

    Length-cut responses and questions with identical samples are counted into the
    result's `extra["output_checks"]`; past `config.warn`'s thresholds each is a warning
    on the `medrecipe.generate` logger (stderr, and the run's log file when attached).
    """
    # Load every template first: a bad template fails before any request is sent.
    templates = used_templates(items, teachers, config)
    known = dict(run.manifest.get("prompt_templates", {}))
    known.update({f"generate.{name}": t.hash for name, t in templates.items()})
    run.set_meta(prompt_templates=known)

    cache_dir = Path(config.cache_dir) if config.cache_dir else run.root / "cache"
    checks = OutputChecks(config.n)
    with run.writer(output, GENERATION_SCHEMA) as sink:
        def write(batch: list[Generation]) -> None:
            sink.write(to_table(batch, GENERATION_SCHEMA))

        result, info = generate_items(items, teachers, config, cache_dir, images, write,
                                      progress=progress, backends=backends,
                                      budget_usd=config.budget_usd, checks=checks)
        rows = sink.rows
    extra = engine_extra(result, info, checks)
    for line in check_warnings(extra["output_checks"], config.warn, config.n, teachers):
        log.warning("generate: %s", line)
    return StageResult(rows={output: rows}, complete=result.complete and result.failures == 0,
                       extra=extra)
