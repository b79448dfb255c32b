"""The curation training mix at scale: medrecipe's two-pass mix against an all-in-memory one.

    python benchmarks/curate_mix.py --aux 100000 --curated 20000 --chars 3000

Builds, in a temporary folder, a curation run with CURATED traced training items and one
auxiliary OctoMed run with AUX selected traces of CHARS characters each, then runs the mix
with quotas (half of the auxiliary questions kept) two ways, each in a fresh subprocess so
peak memory is its own:

- medrecipe: `medrecipe.curate.compose.mix_stage` (quotas decided from light columns, the
  kept auxiliary rows streamed out batch by batch with Arrow filters);
- in memory: the same selection done the straightforward way, every auxiliary row read into
  Python dicts, grouped by question, filtered and written back in one table (what the stage
  did before).

Prints seconds and peak resident memory of each, their ratios, and whether both wrote the
same rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, n_aux: int, n_curated: int, chars: int) -> None:
    """The curation run (split items) and the auxiliary run (selected traces, items)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medrecipe.schema import ITEM_SCHEMA, Item, to_table
    from medrecipe.select import SELECTED_SCHEMA
    from medrecipe.store import Run, StageRecord

    trace = {"perception": "p " * 30, "interpretation": "i " * 40, "justification": "j " * 30}
    items = [Item(id=f"fig/r{i}/diagnosis", source="fig", split="train", task="mm_reasoning",
                  question=f"Question {i}?", options=["a", "b", "c", "d"], answer="A",
                  meta={"article_id": f"PMC{i // 2}", "family": "diagnosis",
                        "reference_trace": trace, "trace": {"refine_key": f"k{i}"}})
             for i in range(n_curated)]
    Run(root / "cur").write_table("curate/split_items", to_table(items, ITEM_SCHEMA))
    aux = Run(root / "aux")
    text = "x" * chars
    rows = {n: [] for n in SELECTED_SCHEMA.names}
    for i in range(n_aux):
        q = f"vqa/q{i // 2}"  # two traces per question
        values = {"id": f"{q}#{i}", "item_id": q, "source": "vqa", "task": "mm_reasoning",
                  "question": f"VQA {i // 2}?", "options": ["a", "b"], "answer": "A",
                  "answer_text": "a", "images": [], "modality": None, "anatomy": None,
                  "teacher": "t", "model": "m", "key": f"g{i}", "sample_index": i % 2,
                  "method": "boxed", "completion_tokens": chars // 4, "target": text,
                  "target_format": "cot", "split": "train"}
        for k, v in values.items():
            rows[k].append(v)
    # Row groups of 4,096 rows, as the pipeline's shard writers produce them.
    pq.write_table(pa.table(rows, schema=SELECTED_SCHEMA), aux.path("selected_train"),
                   row_group_size=4096)
    aux_items = [Item(id=f"vqa/q{i}", source="vqa", task="mm_reasoning", question="q?",
                      options=["a", "b"], answer="A") for i in range(n_aux // 2)]
    aux.write_table("items", to_table(aux_items, ITEM_SCHEMA))
    aux.record_stage(StageRecord(name="select", fingerprint="f", config_hash="c"))


def run_variant(root: Path, variant: str, keep: int) -> dict:
    from medrecipe.curate.compose import SFT_TRAIN, AuxRun, mix_stage
    from medrecipe.curate.config import curate_recipe_from_data
    from medrecipe.curate.stage import open_curate_context
    from medrecipe.images import ImageStore
    from medrecipe.store import Run

    out = root / variant
    data = {"kind": "curate", "name": "bench", "run_dir": str(root / "cur"),
            "sources": [{"name": "fig", "path": "unused.jsonl"}],
            "teachers": {"m": {"model": "m", "base_url": "http://127.0.0.1:9/v1"}},
            "draft": {}, "refine": {}, "verify": {},
            "mix": {"quotas": {"vqa": keep}}, "report": {"enabled": False}}
    ctx = open_curate_context(curate_recipe_from_data(data), data, progress=False, echo=False)
    aux_run = Run(root / "aux", create=False)
    aux = [AuxRun("aux", aux_run, ImageStore(root / "aux" / "images"), "f", True)]
    t0 = time.perf_counter()
    if variant == "medrecipe":
        ctx.force = {"mix"}
        mix_stage(ctx, "upstream", aux)
        ids = ctx.run.read_table(SFT_TRAIN, columns=["id"]).column(0).to_pylist()
    else:
        ids = in_memory_mix(ctx, aux_run, keep, out)
    seconds = time.perf_counter() - t0
    ctx.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "rows": len(ids),
            "ids_hash": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()}


def in_memory_mix(ctx, aux_run, keep: int, out: Path) -> list[str]:
    """The straightforward mix: every row as a dict, grouped, filtered, written at once."""
    from collections import defaultdict

    import pyarrow as pa
    import pyarrow.parquet as pq

    from medrecipe.curate.compose import apply_quotas, curated_sft_rows, split_items
    from medrecipe.select import SELECTED_SCHEMA

    train = split_items(ctx.run, "train")
    rows_by_q: dict[str, list[dict]] = defaultdict(list)
    questions = {}
    for it, r in zip(train, curated_sft_rows(train, "m", 0.0, 0), strict=True):
        rows_by_q[it.id].append(r)
        questions[it.id] = (it.source, "diagnosis")
    for b in aux_run.iter_batches("selected_train"):
        for r in b.to_pylist():
            rows_by_q[r["item_id"]].append(r)
            questions[r["item_id"]] = (r["source"], r["task"])
    kept, _ = apply_quotas(questions, {"vqa": keep}, {}, 0)
    rows = [r for q in sorted(kept) for r in rows_by_q[q]]
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SELECTED_SCHEMA), out / "sft_train.parquet")
    return [r["id"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aux", type=int, default=100_000, help="auxiliary selected traces")
    ap.add_argument("--curated", type=int, default=20_000, help="curated training items")
    ap.add_argument("--chars", type=int, default=3000, help="characters per auxiliary trace")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    keep = args.aux // 4  # questions of the auxiliary source kept: half of them
    if args.variant == "build":
        build(Path(args.root), args.aux, args.curated, args.chars)
        return
    if args.variant:
        print(json.dumps(run_variant(Path(args.root), args.variant, keep)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Every step in its own process: Linux carries a parent's peak RSS into a child
        # across exec, so this process stays small.
        def step(variant: str) -> str:
            return subprocess.run([sys.executable, __file__, "--variant", variant, "--root",
                                   tmp, "--aux", str(args.aux), "--curated", str(args.curated),
                                   "--chars", str(args.chars)],
                                  capture_output=True, text=True, check=True).stdout

        t0 = time.perf_counter()
        step("build")
        print(f"built {args.curated:,} curated items and {args.aux:,} auxiliary traces of "
              f"{args.chars:,} characters in {time.perf_counter() - t0:.1f}s")
        res = {v: json.loads(step(v).strip().splitlines()[-1]) for v in ("in_memory",
                                                                          "medrecipe")}
        base = res["in_memory"]
        for variant, label in (("in_memory", "in memory (every row as a dict)"),
                               ("medrecipe", "medrecipe mix_stage (two passes)")):
            r = res[variant]
            print(f"{label:36s} {r['seconds']:6.1f}s ({base['seconds'] / r['seconds']:.2f}x)  "
                  f"peak RSS {r['peak_mb']:7.0f} MB ({r['peak_mb'] / base['peak_mb']:.2f}x)  "
                  f"{r['rows']:,} rows")
        same = res["in_memory"]["ids_hash"] == res["medrecipe"]["ids_hash"]
        print(f"same rows written: {same}")


if __name__ == "__main__":
    main()
