"""Agreement rates per review dimension, and agreement between reviewers.

The agreement rate of a dimension is the share of reviewed items the reviewer marked
*yes* (the answer is correct, the reasoning is faithful, ...), with a bootstrap CI over
items; with several reviewers each item counts once per reviewer. When two or more
reviewers labelled the same items, each pair of reviewers also gets percent agreement
and Cohen's kappa per dimension.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from medrecipe.evaluate.agreement import agreement
from medrecipe.evaluate.metrics import bootstrap_ci
from medrecipe.review.labels import DIMENSIONS, LabelStore


def summarize_labels(store: LabelStore, item_ids: list[str], *, resamples: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """Per-dimension agreement rates (with CIs) and inter-reviewer agreement."""
    labels = store.latest()
    reviewers = sorted({r for r, _, _ in labels})
    known = set(item_ids)
    dims: dict[str, Any] = {}
    for key, title in DIMENSIONS:
        vals = [1.0 if v else 0.0 for (r, i, d), v in labels.items() if d == key and i in known]
        lo, hi = bootstrap_ci(vals, resamples=resamples, seed=seed)
        dims[key] = {"title": title, "n": len(vals),
                     "yes_rate": sum(vals) / len(vals) if vals else None,
                     "ci_low": lo, "ci_high": hi}
    pairs = []
    for r1, r2 in combinations(reviewers, 2):
        per_dim = {}
        for key, _ in DIMENSIONS:
            a = [labels.get((r1, i, key)) for i in item_ids]
            b = [labels.get((r2, i, key)) for i in item_ids]
            per_dim[key] = agreement(a, b)
        pairs.append({"reviewers": [r1, r2], "dimensions": per_dim})
    done = {i for i in item_ids
            if all(any((r, i, k) in labels for r in reviewers) for k, _ in DIMENSIONS)}
    return {"items": len(item_ids), "fully_reviewed": len(done), "reviewers": reviewers,
            "dimensions": dims, "between_reviewers": pairs}


def render_summary(summary: dict[str, Any]) -> str:
    """The summary as markdown."""
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    lines = ["# Expert review", "",
             f"{summary['fully_reviewed']} of {summary['items']} items reviewed on every "
             f"dimension; reviewers: {', '.join(summary['reviewers']) or 'none'}.", "",
             "| Dimension | Labelled | Agreement (% yes) | 95% CI |", "|---|---|---|---|"]
    for d in summary["dimensions"].values():
        ci = "–" if d["ci_low"] is None else f"{pct(d['ci_low'])}–{pct(d['ci_high'])}"
        lines.append(f"| {d['title']} | {d['n']} | {pct(d['yes_rate'])} | {ci} |")
    for p in summary["between_reviewers"]:
        lines += ["", f"Between {p['reviewers'][0]} and {p['reviewers'][1]}:", "",
                  "| Dimension | Items both labelled | Agreement (%) | Cohen's kappa |",
                  "|---|---|---|---|"]
        for key, title in DIMENSIONS:
            a = p["dimensions"][key]
            kappa = "–" if a["kappa"] is None else f"{a['kappa']:.2f}"
            lines.append(f"| {title} | {a['n']} | {pct(a['agreement'])} | {kappa} |")
    return "\n".join(lines) + "\n"


__all__ = ["summarize_labels", "render_summary"]
