"""A small recipe-style run of the trace-benchmark fixture items, for the review tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from medrecipe.config import SourceSpec
from medrecipe.images import ImageStore
from medrecipe.sources import load
from medrecipe.store import Run

FIX = Path(__file__).parent / "fixtures" / "trace"


def make_review_run(root: Path) -> Path:
    """A run folder with items.parquet (4 items, 3 with images) and its image store."""
    run = Run(root)
    store = ImageStore(run.root / "images")
    spec = SourceSpec(name="omr", adapter="generic", path=str(FIX / "bench.jsonl"),
                      image_root=str(FIX), role="benchmark", split="test")
    run.write_table("items", pa.concat_tables(list(load(spec, images=store, quarantine=[]))))
    run.set_meta(image_store=str(store.root))
    return run.root
