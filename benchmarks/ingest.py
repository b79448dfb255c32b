"""Ingest throughput: a generated JSONL source of N rows through the generic adapter.

    python benchmarks/ingest.py --rows 200000

Prints items/s and peak memory (RSS) of the streaming ingest (batches of --batch-size
rows written to Parquet as they are validated), next to the rate of reading the same file
with json.loads alone (the floor any Python ingest pays) in the same process.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

WORDS = ("patient presents with acute chronic pain fever cough dyspnea history of hypertension "
         "diabetes examination reveals tenderness laboratory shows elevated creatinine which "
         "of the following is the most likely diagnosis next best step in management drug "
         "mechanism renal hepatic cardiac pulmonary infection lesion biopsy").split()


def make_jsonl(path: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` realistic multiple-choice questions (about 80-120 words each)."""
    rnd = random.Random(seed)
    with open(path, "w") as f:
        for i in range(rows):
            q = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(60, 100))) + "?"
            opts = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 4))) + f" {i}-{k}"
                    for k in range(5)]
            f.write(json.dumps({"qid": f"q{i}", "stem": q, "choices": opts,
                                "correct": rnd.randrange(5), "subject": rnd.choice(WORDS)}) + "\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args()

    from medrecipe.config import SourceSpec
    from medrecipe.sources import BuildStats, load
    from medrecipe.store import Run

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "bench.jsonl"
        t0 = time.perf_counter()
        make_jsonl(src, args.rows)
        print(f"generated {args.rows:,} rows ({src.stat().st_size / 1e6:.1f} MB) "
              f"in {time.perf_counter() - t0:.1f}s")
        rss_before = peak_rss_mb()

        t0 = time.perf_counter()
        with open(src) as f:
            n = sum(1 for line in f if json.loads(line))
        floor = time.perf_counter() - t0

        spec = SourceSpec(name="bench", adapter="generic", path=str(src),
                          mapping={"id": "qid", "question": "stem", "options": "choices",
                                   "answer": "correct", "meta": "subject"},
                          options={"answer_format": "index0"})
        run = Run(Path(tmp) / "run")
        stats = BuildStats()
        quarantine: list = []
        t0 = time.perf_counter()
        from medrecipe.schema import ITEM_SCHEMA

        with run.writer("ingest/bench", ITEM_SCHEMA) as sink:
            for table in load(spec, quarantine=quarantine, batch_size=args.batch_size, stats=stats):
                sink.write(table)
        dt = time.perf_counter() - t0
        assert stats.items == n == args.rows and not quarantine
        print(f"json.loads only (floor): {n / floor:,.0f} rows/s")
        print(f"ingest (generic adapter, validate, Parquet): {stats.items / dt:,.0f} items/s "
              f"({dt:.1f}s for {stats.items:,} items; {dt / floor:.1f}x the json.loads floor)")
        print(f"peak RSS: {peak_rss_mb():.0f} MB (before ingest {rss_before:.0f} MB); "
              f"output {run.path('ingest/bench').stat().st_size / 1e6:.1f} MB Parquet")


if __name__ == "__main__":
    main()
