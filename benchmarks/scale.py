"""Bounded memory at scale: grade -> select -> export over synthetic runs of 100k..10M responses.

    python benchmarks/scale.py                         # 100k, 1M and 10M generations
    python benchmarks/scale.py --sizes 100000 1000000  # fewer sizes
    python benchmarks/scale.py --executors --size 1000000   # local vs Ray (1 and 2 workers)

Each size gets a synthetic run directory built through the real writers: questions (4
options, 16 samples each) hash-partitioned into item shards, and ~1,500-character responses
with an answer tag (a third of them wrong, a few with no answer) in generation shards of
about 50,000 rows (the automatic shard size). Then one fresh process runs the real stage
functions as `medrecipe run` does — grade, select (both passes, with a mix quota so the
global step is exercised), export (LLaMA-Factory, JSONL and TRL) — and reports its peak RSS
(`ru_maxrss`) and wall time. The data is built in a separate process, so its memory does
not count.

`--executors` runs grade and select on the same 1M-response run under the local executor
and under Ray with 1 and 2 CPUs, checks the output shards are identical, and prints the
throughput ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = 16
WORDS = ("the patient presents with progressive dyspnea and a chest radiograph shows bilateral "
         "interstitial opacities while laboratory studies reveal an elevated creatinine and mild "
         "anemia so the most likely explanation involves renal hypoperfusion secondary to "
         "reduced cardiac output with compensatory activation of the renin angiotensin system"
         ).split()


# ---------------------------------------------------------------------------- building a run


def build(root: Path, generations: int, seed: int = 0) -> dict:
    """Items and generations shards of a synthetic run (in this process)."""
    import pyarrow as pa

    from medrecipe.pipeline import GENERATIONS_PER_SHARD
    from medrecipe.schema import GENERATION_SCHEMA, ITEM_SCHEMA
    from medrecipe.shards import ShardWriter

    rng = random.Random(seed)
    n_items = generations // SAMPLES
    n_shards = max(1, -(-generations // GENERATIONS_PER_SHARD))
    items = ShardWriter(root / "items.parquet", n_shards, ITEM_SCHEMA, key="id")
    gens = ShardWriter(root / "generations.parquet", n_shards, GENERATION_SCHEMA, key="item_id",
                       rows_per_group=16_384)
    chunk = 2048
    for start in range(0, n_items, chunk):
        ids = [f"synth/q{i}" for i in range(start, min(n_items, start + chunk))]
        sources = ["synth_a" if i % 3 else "synth_b" for i in range(start, start + len(ids))]
        items.write(pa.table({
            "id": ids, "source": sources, "split": ["train"] * len(ids),
            "task": ["text"] * len(ids),
            "question": [f"Question {x}: which option explains the findings best?" for x in ids],
            "options": [["renal", "hepatic", "cardiac", "pulmonary"]] * len(ids),
            "answer": ["C"] * len(ids), "images": [[] for _ in ids],
            "modality": [None] * len(ids), "anatomy": [None] * len(ids),
            "meta": ["{}"] * len(ids)}, schema=ITEM_SCHEMA))
        rows = {k: [] for k in GENERATION_SCHEMA.names}
        for x, src in zip(ids, sources, strict=True):
            for j in range(SAMPLES):
                body = " ".join(rng.choice(WORDS) for _ in range(230))  # ~1,500 characters
                r = rng.random()
                letter = "C" if r < 0.6 else ("A" if r < 0.95 else None)
                tail = f"<answer>{letter}</answer>" if letter else "I cannot decide."
                vals = {"key": f"{x}:{j}", "item_id": x, "source": src, "teacher": "t",
                        "model": "synthetic", "template": "long_reasoning", "template_hash": "",
                        "sample_index": j, "seed": j, "text": f"<think>{body}</think>{tail}",
                        "reasoning": None, "finish_reason": "stop", "prompt_tokens": 120,
                        "completion_tokens": 400, "latency_s": 0.0, "cost_usd": 0.0,
                        "forced_end": False, "error": None}
                for k in rows:
                    rows[k].append(vals[k])
        gens.write(pa.table(rows, schema=GENERATION_SCHEMA))
    items.commit()
    gens.commit()
    return {"items": n_items, "generations": n_items * SAMPLES, "shards": n_shards}


def _recipe(root: Path, shards: int, executor: str = "local", cpus: int = 1):
    from medrecipe.config import Recipe

    return Recipe.model_validate({
        "name": "scale", "run_dir": str(root), "shards": shards,
        "sources": [{"name": "synth_a", "path": "unused.jsonl"}],
        "teachers": {"t": {"model": "synthetic", "base_url": "http://127.0.0.1:9/v1"}},
        "generate": {"n": SAMPLES},
        "executor": {"kind": executor, "num_cpus": cpus} if executor == "ray" else "local",
        "select": {"cap_per_question": 2, "val_fraction": 0.05,
                   "mix": {"quotas": {"synth_b": 10_000_000}, "weights": {"synth_a": 3,
                                                                          "synth_b": 1}}},
        "export": {"dataset_name": "scale", "formats": ["llamafactory", "jsonl", "trl"]},
        "report": {"enabled": False}})


class MemorySampler:
    """Peak resident memory of this process per phase, split into anonymous memory (what
    the process holds) and file-backed pages (memory-mapped files such as `datasets`' Arrow
    files, which the kernel can drop at any time), sampled every 20 ms."""

    def __init__(self) -> None:
        import threading

        self.phase = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def read() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0])
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = self.read()
            peak = self.peaks.setdefault(self.phase, {"RssAnon": 0, "RssFile": 0})
            for k, v in now.items():
                peak[k] = max(peak[k], v)

    def stop(self) -> dict[str, dict[str, int]]:
        self._stop.set()
        self._t.join()
        return self.peaks


def stages(root: Path, shards: int, executor: str = "local", cpus: int = 1,
           export: bool = True) -> dict:
    """grade -> select (-> export) through the pipeline's stage functions; timings."""
    from medrecipe import pipeline

    recipe = _recipe(root, shards, executor, cpus)
    mem = MemorySampler()
    ctx = pipeline.open_context(recipe, progress=False, echo=False)
    ctx.run.set_meta(shards=shards)
    out = {}
    try:
        mem.phase = "grade"
        t0 = time.perf_counter()
        g = pipeline.grade(ctx, "synthetic-generations")
        out["grade_s"] = time.perf_counter() - t0
        mem.phase = "select"
        t1 = time.perf_counter()
        s = pipeline.select(ctx, "synthetic-items", g)
        out["select_s"] = time.perf_counter() - t1
        if export:
            mem.phase = "export"
            t2 = time.perf_counter()
            pipeline.export(ctx, s)
            out["export_s"] = time.perf_counter() - t2
        out["selected"] = ctx.run.num_rows("selected_train") + ctx.run.num_rows("selected_val")
    finally:
        ctx.close()
        out["memory_kib"] = mem.stop()
    return out


def _child(args: list[str]) -> tuple[dict, int]:
    """Run this script in a fresh process; returns its JSON result and its peak RSS (KiB)."""
    out = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                         check=True, env={**os.environ, "MEDRECIPE_NO_PROGRESS": "1"}).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result, int(result["maxrss_kib"])


def _rss_kib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _hash_outputs(root: Path) -> str:
    """One hash over the bytes of every verdict and selected-trace shard."""
    import hashlib

    h = hashlib.sha256()
    for name in ("verdicts", "selected_train", "selected_val"):
        for f in sorted((root / f"{name}.parquet").glob("shard-*.parquet")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- entry points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--executors", action="store_true")
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--_build", nargs=2, metavar=("ROOT", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--_stages", nargs=4, metavar=("ROOT", "SHARDS", "EXECUTOR", "CPUS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--_no_export", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._build:
        info = build(Path(a._build[0]), int(a._build[1]))
        print(json.dumps({**info, "maxrss_kib": _rss_kib()}))
        return
    if a._stages:
        root, shards, executor, cpus = a._stages
        t0 = time.perf_counter()
        res = stages(Path(root), int(shards), executor, int(cpus), export=not a._no_export)
        res["wall_s"] = time.perf_counter() - t0
        res["outputs"] = _hash_outputs(Path(root))
        print(json.dumps({**res, "maxrss_kib": _rss_kib()}))
        return

    work = Path(a.workdir or tempfile.mkdtemp(prefix="medrecipe-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.executors:
        root = work / f"exec-{a.size}"
        info, _ = _child(["--_build", str(root), str(a.size)])
        print(f"run: {info['generations']:,} generations, {info['items']:,} questions, "
              f"{info['shards']} shards")
        base = None
        for executor, cpus in (("local", 1), ("ray", 1), ("ray", 2)):
            for name in ("verdicts", "select_candidates", "selected_train", "selected_val",
                         "progress"):
                shutil.rmtree(root / (name if name == "progress" else f"{name}.parquet"),
                              ignore_errors=True)
            (root / "manifest.json").unlink(missing_ok=True)
            res, rss = _child(["--_stages", str(root), str(info["shards"]), executor, str(cpus),
                               "--_no_export"])
            wall = res["grade_s"] + res["select_s"]
            base = base or wall
            print(f"  {executor:5s} x{cpus}: grade {res['grade_s']:.1f} s, select "
                  f"{res['select_s']:.1f} s, {info['generations'] / wall:,.0f} generations/s, "
                  f"{base / wall:.2f}x local; driver peak RSS {rss / 1024:.0f} MB; outputs "
                  f"{res['outputs']}")
        return

    rows = []
    for n in a.sizes:
        root = work / f"run-{n}"
        shutil.rmtree(root, ignore_errors=True)
        info, build_rss = _child(["--_build", str(root), str(n)])
        res, rss = _child(["--_stages", str(root), str(info["shards"]), "local", "1"])
        rows.append((n, info, res, rss))
        print(f"{n:>11,} generations ({info['shards']} shards): grade {res['grade_s']:.1f} s, "
              f"select {res['select_s']:.1f} s, export {res['export_s']:.1f} s, total "
              f"{res['wall_s']:.1f} s ({n / res['wall_s']:,.0f}/s), peak RSS {rss / 1024:.0f} MB, "
              f"{res['selected']:,} selected", flush=True)
        print("    peak anonymous / file-backed MB by phase: " + ", ".join(
            f"{ph} {m['RssAnon'] / 1024:.0f} / {m['RssFile'] / 1024:.0f}"
            for ph, m in res["memory_kib"].items() if ph != "start"), flush=True)
        shutil.rmtree(root, ignore_errors=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"peak RSS {last[0]:,} vs {first[0]:,}: {last[3] / first[3]:.2f}x; time per "
              f"generation {last[2]['wall_s'] / last[0] * 1e6:.1f} us vs "
              f"{first[2]['wall_s'] / first[0] * 1e6:.1f} us")


if __name__ == "__main__":
    main()
