"""Pairwise preference between the traces of two evaluation runs on the same items.

For every sample both runs have (same benchmark, item, seed and sample index), a judge
compares the two traces twice, once in each order. Run A *wins* a pair only when both
orders prefer A, *loses* only when both prefer B; anything else is a tie: an explicit
tie, the two orders disagreeing (the position decided, not the content), or a reply that
could not be parsed (counted separately, never a win).

Rates are averaged per item first (over its matched samples), then over items, with
bootstrap CIs over items. Position bias is the share of decisive verdicts (``"1"`` or
``"2"``, both orders pooled) that went to the trace shown first: 0.5 means none.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from medrecipe.config import TeacherConfig
from medrecipe.errors import UserError
from medrecipe.evaluate.judging import (
    JudgeClient,
    clip_text,
    parse_json_reply,
    reply_text,
    without_images,
)
from medrecipe.evaluate.metrics import bootstrap_ci
from medrecipe.evaluate.runner import load_results, read_samples
from medrecipe.schema import items_from_table
from medrecipe.store import atomic_write_text

OUTCOMES = ("win", "tie", "loss")


class PairwiseReply(BaseModel):
    """The judge's reply: which trace is better (or a tie) and why."""

    model_config = ConfigDict(extra="forbid")

    winner: Literal["1", "2", "tie"]
    reason: str = Field(min_length=1, max_length=1000)


def combine(a_first: str | None, b_first: str | None) -> str:
    """Outcome for run A from the verdict with A shown first and the one with B shown first."""
    pick1 = {"1": "a", "2": "b"}.get(a_first or "")
    pick2 = {"1": "b", "2": "a"}.get(b_first or "")
    if pick1 == pick2 == "a":
        return "win"
    if pick1 == pick2 == "b":
        return "loss"
    return "tie"


def summarize(pairs: Sequence[Mapping[str, Any]], *, resamples: int = 10_000, seed: int = 0,
              level: float = 0.95) -> dict[str, Any]:
    """Win / tie / loss rates with CIs, position bias and consistency of judged pairs.

    Each pair needs ``item_id``, ``a_first`` and ``b_first`` (verdicts "1" / "2" / "tie" or
    None when unparsed).
    """
    per_item: dict[str, list[str]] = defaultdict(list)
    verdicts: Counter = Counter()
    agree = 0
    for p in pairs:
        per_item[str(p["item_id"])].append(combine(p["a_first"], p["b_first"]))
        for v in (p["a_first"], p["b_first"]):
            verdicts[v if v is not None else "unparsed"] += 1
        pick1 = {"1": "a", "2": "b", "tie": "tie"}.get(p["a_first"] or "")
        pick2 = {"1": "b", "2": "a", "tie": "tie"}.get(p["b_first"] or "")
        agree += pick1 is not None and pick1 == pick2
    out: dict[str, Any] = {"n_pairs": len(pairs), "n_items": len(per_item), "ci_level": level}
    for outcome in OUTCOMES:
        vals = [sum(o == outcome for o in v) / len(v) for v in per_item.values()]
        lo, hi = bootstrap_ci(vals, resamples=resamples, seed=seed, level=level)
        out[outcome] = {"rate": sum(vals) / len(vals) if vals else None, "ci_low": lo, "ci_high": hi}
    decisive = verdicts["1"] + verdicts["2"]
    out["position_bias"] = {"first_wins": verdicts["1"] / decisive if decisive else None,
                            "decisive_verdicts": decisive}
    out["consistency"] = agree / len(pairs) if pairs else None
    out["verdicts"] = {k: verdicts[k] for k in ("1", "2", "tie", "unparsed")}
    return out


@dataclass
class PairwiseResult:
    """Files and numbers of one pairwise comparison."""

    out_dir: Path
    summary: dict[str, Any]

    @property
    def json(self) -> Path:
        return self.out_dir / "pairwise.json"

    @property
    def markdown(self) -> Path:
        return self.out_dir / "pairwise.md"


def _traced_benchmarks(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    common = [n for n in a["benchmarks"] if n in b["benchmarks"]]
    traced = [n for n in common if a["benchmarks"][n].get("trace")]
    return traced or common


def _has_text(sample: Mapping[str, Any]) -> bool:
    return bool((sample.get("text") or "").strip())


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def render_markdown(summary: dict[str, Any]) -> str:
    """Win / tie / loss table per benchmark."""
    lines = [f"# Pairwise preference: {summary['a']} vs {summary['b']}", "",
             f"Judge: {summary['judge']}. A win needs both orders to prefer the same trace; "
             "otherwise the pair is a tie. Rates in %, 95% bootstrap CIs over items.", "",
             "| Benchmark | Pairs | Win (A) | Tie | Loss (A) | First position wins | "
             "Orders agree | Unparsed verdicts |", "|---|---|---|---|---|---|---|---|"]
    for name, s in summary["benchmarks"].items():
        cells = [name, str(s["n_pairs"])]
        for o in OUTCOMES:
            r = s[o]
            cells.append(f"{_pct(r['rate'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]")
        cells += [_pct(s["position_bias"]["first_wins"]), _pct(s["consistency"]),
                  str(s["verdicts"]["unparsed"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_pairwise(run_a: str | Path, run_b: str | Path, judge: TeacherConfig | None = None,
                 out_dir: str | Path | None = None, *, benchmarks: Sequence[str] | None = None,
                 template: str | None = None, seed: int = 0, resamples: int = 10_000,
                 max_trace_chars: int = 30_000, cache_dir: str | Path | None = None,
                 progress: bool | None = None, backends: Mapping[str, Any] | None = None,
                 ) -> PairwiseResult:
    """Judge the traces of run A against run B in both orders; writes pairwise.json / .md."""
    from medrecipe.prompts import load_template

    ra, rb = load_results(run_a), load_results(run_b)
    trace_cfg = (ra.get("config") or {}).get("trace") or {}
    if judge is None:
        if not trace_cfg.get("judge"):
            raise UserError(f"{run_a} has no trace.judge in its recipe; give a judge model "
                            "(medrecipe eval pairwise A B --judge judge.yaml)")
        judge = TeacherConfig.model_validate(trace_cfg["judge"])
    tpl = load_template(template or trace_cfg.get("pairwise_template") or "trace_pairwise")
    names = list(benchmarks) if benchmarks else _traced_benchmarks(ra, rb)
    missing = [n for n in names if n not in ra["benchmarks"] or n not in rb["benchmarks"]]
    if missing or not names:
        raise UserError(f"both runs must have evaluated the benchmark(s) compared; missing: "
                        f"{', '.join(missing) or 'no benchmark in common'}")
    out = Path(out_dir) if out_dir is not None else Path(run_a).parent / (
        f"pairwise_{Path(run_a).name}_vs_{Path(run_b).name}")
    out.mkdir(parents=True, exist_ok=True)
    client = JudgeClient(judge, cache_dir or out / "cache", seed=seed, progress=progress,
                         backends=backends)
    samples_b = {(s["benchmark"], s["item_id"], s["seed"], s["sample"]): s
                 for s in read_samples(run_b)}
    samples_a = list(read_samples(run_a))
    jobs = []
    for name in names:
        items = {it.id: it for it in items_from_table(pq.read_table(
            Path(run_a) / "items" / f"{name}.parquet"))}
        for s in samples_a:
            if s["benchmark"] != name or s["item_id"] not in items:
                continue
            other = samples_b.get((name, s["item_id"], s["seed"], s["sample"]))
            if other is None or not _has_text(s) or not _has_text(other):
                continue
            jobs.append((name, items[s["item_id"]], s, other))
    prompts = []
    for _, item, sa, sb in jobs:
        ta, tb = clip_text(sa["text"], max_trace_chars), clip_text(sb["text"], max_trace_chars)
        route = f"{item.id}#{sa['seed']}.{sa['sample']}"
        plain = without_images(item)
        prompts.append((f"{route}#ab", tpl.render(plain, trace_1=ta, trace_2=tb,
                                                  answer_text=item.answer_text)))
        prompts.append((f"{route}#ba", tpl.render(plain, trace_1=tb, trace_2=ta,
                                                  answer_text=item.answer_text)))
    sampling = client.sampling(max_tokens=256, schema=("pairwise", PairwiseReply))
    gens = client.ask(prompts, template=tpl, sampling=sampling)

    def verdict(gen: Any) -> str | None:
        parsed = parse_json_reply(reply_text(gen), PairwiseReply)
        return parsed.winner if parsed is not None else None

    pairs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    lines = []
    for k, (name, item, sa, _) in enumerate(jobs):
        p = {"benchmark": name, "item_id": item.id, "seed": sa["seed"], "sample": sa["sample"],
             "a_first": verdict(gens[2 * k]), "b_first": verdict(gens[2 * k + 1])}
        p["outcome"] = combine(p["a_first"], p["b_first"])
        pairs[name].append(p)
        lines.append(json.dumps(p) + "\n")
    summary = {"a": ra.get("label") or ra.get("name"), "b": rb.get("label") or rb.get("name"),
               "run_a": str(run_a), "run_b": str(run_b), "judge": judge.model,
               "template_hash": tpl.hash, "judge_calls": client.tally.as_dict(),
               "benchmarks": {n: summarize(pairs[n], resamples=resamples, seed=seed)
                              for n in names}}
    atomic_write_text(out / "pairs.jsonl", "".join(lines))
    atomic_write_text(out / "pairwise.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "pairwise.md", render_markdown(summary))
    return PairwiseResult(out, summary)


__all__ = ["PairwiseReply", "PairwiseResult", "combine", "summarize", "run_pairwise",
           "render_markdown"]
