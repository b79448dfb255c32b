"""The recipe as a sequence of stages over one run directory, each skipped when up to date.

ingest (per source) -> prepare -> generate -> grade -> select -> export -> report

A stage's fingerprint covers its config and the fingerprints of its inputs, so changing a
filter re-runs select/export/report only, and teacher requests are served from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

import medrecipe
from medrecipe.config import Recipe, SourceSpec, config_hash
from medrecipe.console import RunLog, counting_progress
from medrecipe.images import ImageStore
from medrecipe.schema import ITEM_SCHEMA, QuarantineRow
from medrecipe.store import Run, StageResult, run_stage

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


def open_context(recipe: Recipe, raw: dict[str, Any] | None = None, *, progress: bool | None = None,
                 force: set[str] | None = None, echo: bool = True) -> Context:
    """Create (or reopen) the run directory of a recipe and record the recipe in it."""
    run = Run(recipe.resolved_run_dir())
    images = ImageStore(recipe.image_store or run.root / "images")
    data = raw if raw is not None else recipe.model_dump(mode="json")
    run.set_meta(recipe_name=recipe.name, recipe_hash=config_hash(recipe),
                 medrecipe_version=medrecipe.__version__)
    (run.root / "recipe.yaml").write_text(_yaml_dump(data))
    return Context(recipe, run, images, RunLog(run.root, echo=echo), progress, force or set())


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
                              "fingerprint": source_fingerprint(spec)}
        return StageResult(rows={"items": stats.items, "quarantined": stats.quarantined,
                                 "read": stats.rows}, extra={"quarantine_reasons": reasons})

    ran, rec = run_stage(ctx.run, name, config_hash(spec), {"data": source_fingerprint(spec)},
                         [out], body, force=ctx.forced("ingest"))
    q = rec.rows.get("quarantined", 0)
    verb = "ingested" if ran else "up to date"
    ctx.log(f"ingest {spec.name}: {verb}, {rec.rows.get('items', 0)} items"
            + (f", [yellow]{q} quarantined[/yellow]" if q else "") + f" ({rec.seconds:.1f}s)")
    return rec.fingerprint


def ingest(ctx: Context) -> dict[str, str]:
    """Ingest every source of the recipe; returns {source name: stage fingerprint}."""
    return {s.name: ingest_source(ctx, s) for s in ctx.recipe.sources}


def read_source_items(run: Run, names: list[str]) -> pa.Table:
    """Concatenated ingested Items of the named sources."""
    tables = [run.read_table(f"ingest/{n}") for n in names if run.has(f"ingest/{n}")]
    return pa.concat_tables(tables) if tables else ITEM_SCHEMA.empty_table()


def items_fingerprint(fps: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(fps.items())).encode()).hexdigest()[:16]
