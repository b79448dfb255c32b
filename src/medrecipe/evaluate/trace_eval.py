"""Trace scoring inside `medrecipe eval`: checklists, probes, scores and the Table-4 summary.

For every benchmark with ``trace`` on, after the model's samples are graded:

1. each item gets its checklist (from the item, the shared checklist store, or the judge);
   items without a reference trace, or whose checklist could not be built, are quarantined
   (``quarantine/trace_<bench>.parquet``) and left out of the trace metrics, the same for
   every model since the checklists are shared;
2. every sample's text is probed unit by unit (presence, then correctness of present units);
3. each sample gets a `TraceScore`; items are averaged over their samples, then over
   items with bootstrap CIs (`medrecipe.evaluate.trace.aggregate`).

Per-unit probe results with the judge's reasons go to ``trace_probes.jsonl``; each sample
row in ``samples.jsonl`` carries its trace score under ``trace``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medrecipe.evaluate.checklist import (
    ChecklistStore,
    build_checklists,
    checklists_hash,
    store_path,
)
from medrecipe.evaluate.config import EvalConfig, ResolvedBenchmark
from medrecipe.evaluate.judging import JudgeClient, JudgeTally
from medrecipe.evaluate.metrics import bootstrap_ci
from medrecipe.evaluate.probes import Trace, probe_traces
from medrecipe.evaluate.trace import TraceScore, aggregate, score_trace
from medrecipe.schema import ITEM_SCHEMA, Item, to_table
from medrecipe.store import Run, atomic_write_text

PROBES = "trace_probes.jsonl"


def checklist_folder(config: EvalConfig, run_dir: Path) -> Path:
    """Where the shared checklist store lives for this evaluation."""
    if config.trace.checklist_dir:
        return Path(config.trace.checklist_dir)
    return run_dir.resolve().parent / "checklists"


def route_of(sample: Mapping[str, Any]) -> str:
    """Routing id of one sample's trace: item, seed and sample index."""
    return f"{sample['item_id']}#{sample['seed']}.{sample['sample']}"


def score_traces(config: EvalConfig, run: Run, benches: Sequence[ResolvedBenchmark],
                 items_by_bench: Mapping[str, list[Item]], samples: list[dict[str, Any]], *,
                 backends: Mapping[str, Any] | None = None, progress: bool | None = None,
                 say: Callable[[str], None] = lambda _m: None,
                 ) -> tuple[dict[str, dict[str, Any]], JudgeTally]:
    """Trace summaries of the trace-scored benchmarks (samples gain a ``trace`` entry)."""
    from medrecipe.prompts import load_template

    tc = config.trace
    traced = [b for b in benches if b.trace]
    if not traced or tc.judge is None:
        return {}, JudgeTally()
    judge = JudgeClient(tc.judge, config.cache_dir or run.subdir("cache"), seed=tc.seed,
                        json_mode=tc.json_mode, progress=progress, backends=backends,
                        budget_usd=tc.budget_usd)
    templates = {name: load_template(getattr(tc, f"{name}_template"))
                 for name in ("checklist", "presence", "correctness")}
    store = ChecklistStore(store_path(checklist_folder(config, run.root), tc.judge.model))

    checklists: dict[str, Any] = {}
    builds = {}
    for bench in traced:
        items = items_by_bench[bench.name]
        build = build_checklists(items, judge, templates["checklist"], store,
                                 stage=f"trace_{bench.name}",
                                 max_tokens=tc.checklist_max_tokens)
        builds[bench.name] = build
        checklists.update(build.checklists)
        run.write_quarantine(f"trace_{bench.name}", build.quarantine)
        # The checklist travels with the item: the run's item table shows what was scored.
        stamped = [it.model_copy(update={"meta": {**it.meta, "checklist":
                                                  build.checklists[it.id].meta()}})
                   if it.id in build.checklists else it for it in items]
        run.write_table(f"items/{bench.name}",
                        to_table(stamped, ITEM_SCHEMA) if stamped else ITEM_SCHEMA.empty_table())
        say(f"{bench.name}: {len(build.checklists)} checklists "
            f"({dict(build.counts)}), {len(build.quarantine)} items without one")

    names = {b.name for b in traced}
    by_id = {it.id: it for b in traced for it in items_by_bench[b.name]}
    rows = [s for s in samples if s["benchmark"] in names and s["item_id"] in checklists]
    traces = [Trace(route_of(s), by_id[s["item_id"]], s.get("text")) for s in rows]
    results, counts = probe_traces(
        judge, traces, checklists, presence_template=templates["presence"],
        correctness_template=templates["correctness"], max_tokens=tc.probe_max_tokens,
        max_trace_chars=tc.max_trace_chars)

    per_item: dict[str, dict[str, list[TraceScore]]] = defaultdict(lambda: defaultdict(list))
    probe_lines = []
    for s in rows:
        probes = results[route_of(s)]
        ts = score_trace(p.unit() for p in probes)
        s["trace"] = ts.as_dict()
        per_item[s["benchmark"]][s["item_id"]].append(ts)
        units = checklists[s["item_id"]].units
        for k, (p, u) in enumerate(zip(probes, units, strict=True)):
            probe_lines.append(json.dumps({
                "benchmark": s["benchmark"], "item_id": s["item_id"], "seed": s["seed"],
                "sample": s["sample"], "unit": k, "axis": u.axis, "topic": u.topic,
                "claim": u.claim, "present": p.present, "correct": p.correct,
                "presence_status": p.presence_status,
                "correctness_status": p.correctness_status,
                "presence_reason": p.presence_reason,
                "correctness_reason": p.correctness_reason}, ensure_ascii=False) + "\n")
    atomic_write_text(run.root / PROBES, "".join(probe_lines))

    b = config.bootstrap
    out: dict[str, dict[str, Any]] = {}
    for bench in traced:
        build = builds[bench.name]
        summary = aggregate(per_item[bench.name], resamples=b.resamples, seed=b.seed,
                            level=b.level)
        scored = set(per_item[bench.name])
        acc_items: dict[str, list[bool]] = defaultdict(list)
        for s in samples:
            if s["benchmark"] == bench.name and s["item_id"] in scored:
                acc_items[s["item_id"]].append(s.get("correct") is True)
        accs = [sum(v) / len(v) for v in acc_items.values()]
        lo, hi = bootstrap_ci(accs, resamples=b.resamples, seed=b.seed, level=b.level)
        bench_counts: Counter = Counter()
        for s in rows:
            if s["benchmark"] == bench.name:
                for p in results[route_of(s)]:
                    bench_counts[f"presence_{p.presence_status}"] += 1
                    bench_counts[f"correctness_{p.correctness_status}"] += 1
        asked_p = sum(v for k, v in bench_counts.items()
                      if k.startswith("presence_") and k != "presence_no_trace")
        asked_c = sum(v for k, v in bench_counts.items()
                      if k.startswith("correctness_") and k != "correctness_not_asked")
        cls = build.checklists
        summary.update({
            "n_items_total": len(items_by_bench[bench.name]),
            "answer_accuracy": {"mean": sum(accs) / len(accs) if accs else None,
                                "ci_low": lo, "ci_high": hi, "n_items": len(accs)},
            "checklists": {
                "hash": checklists_hash(cls), "judge": tc.judge.model,
                "template_hash": templates["checklist"].hash, "counts": dict(build.counts),
                "without_checklist": len(build.quarantine),
                "mean_units": (sum(len(c.units) for c in cls.values()) / len(cls)) if cls else None,
            },
            "probes": dict(bench_counts),
            "unparsed_rate": {
                "presence": bench_counts["presence_unparsed"] / asked_p if asked_p else None,
                "correctness": bench_counts["correctness_unparsed"] / asked_c if asked_c else None},
            "failed_probes": bench_counts["presence_failed"] + bench_counts["correctness_failed"],
            "traces_without_text": sum(1 for s in rows if s["benchmark"] == bench.name
                                       and not (s.get("text") or "").strip()),
        })
        out[bench.name] = summary
    say(f"trace probes: {dict(counts)}")
    return out, judge.tally


__all__ = ["score_traces", "checklist_folder", "route_of", "PROBES"]
