"""Shared by the source-adapter tests: ingest a spec the way the pipeline does."""

from __future__ import annotations

from pathlib import Path

from medrecipe.config import SourceSpec
from medrecipe.images import ImageStore
from medrecipe.schema import items_from_table
from medrecipe.sources import BuildStats, load


def ingest(spec: SourceSpec, tmp_path: Path):
    """(items, quarantine rows, build stats, image store) of one source."""
    store = ImageStore(tmp_path / "images")
    quarantine: list = []
    stats = BuildStats()
    items = [it for t in load(spec, images=store, quarantine=quarantine, stats=stats)
             for it in items_from_table(t)]
    return items, quarantine, stats, store
