"""OpenMedReason-Bench trace scores: presence, correctness and score per axis, joint trace score.

A checklist holds atomic units, each on one axis (perception, knowledge, rationale). Two
probes judge a candidate trace against each unit: *presence* (does the trace engage with
the unit's topic) and, for present units only, *correctness* (does it state the claim
accurately). For one trace and one axis a:

    P_a = present units / all units of a
    C_a = correct units / present units of a
    S_a = P_a * C_a
    trace score = mean of S_a over the axes

Edge cases (the same everywhere in medrecipe):

- **An axis without units** in an item's checklist: P_a, C_a and S_a are None (undefined,
  not zero) and the trace score is the mean of S_a over the axes that do have units. A
  checklist with no units at all gives a trace score of None; such an item is left out of
  the trace aggregate (and counted).
- **No present units** on an axis that has units: P_a = 0, C_a is None (nothing was
  asked, so there is nothing to be right about) and S_a = 0.
- **A probe that could not be parsed** is never credited. An unparsed presence probe
  arrives here as ``present=False``; an unparsed (or failed) correctness probe of a
  present unit arrives as ``correct=None`` and counts as not correct (it stays in the
  denominator of C_a). Both are counted by the probe layer and reported; ``unparsed``
  here counts present units whose correctness is None.
- ``correct`` is only read for present units (correctness is never asked otherwise).

Aggregation is per item first (the mean over that item's samples of each defined value),
then over items, with percentile bootstrap confidence intervals over items. An item
contributes to the mean of C_a only where C_a is defined for it, and likewise for every
other value, so each mean says over how many items it was taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medrecipe.evaluate.metrics import bootstrap_ci

AXES: tuple[str, ...] = ("perception", "knowledge", "rationale")
AXIS_TITLES = {"perception": "Perception", "knowledge": "Knowledge", "rationale": "Rationale"}
METRICS: tuple[str, ...] = ("presence", "correctness", "score")

Unit = tuple[str, bool, "bool | None"]


@dataclass(frozen=True)
class TraceScore:
    """Scores of one candidate trace against one checklist (see the module docstring)."""

    presence: dict[str, float | None]
    correctness: dict[str, float | None]
    score: dict[str, float | None]
    trace_score: float | None
    units: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    correct: dict[str, int] = field(default_factory=dict)
    unparsed: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"presence": dict(self.presence), "correctness": dict(self.correctness),
                "score": dict(self.score), "trace_score": self.trace_score,
                "units": dict(self.units), "present": dict(self.present),
                "correct": dict(self.correct), "unparsed": dict(self.unparsed)}


def score_trace(units: Iterable[Sequence[Any]]) -> TraceScore:
    """Per-axis presence, correctness and score, and the trace score, of one trace's probe results."""
    n = dict.fromkeys(AXES, 0)
    present = dict.fromkeys(AXES, 0)
    correct = dict.fromkeys(AXES, 0)
    unparsed = dict.fromkeys(AXES, 0)
    for unit in units:
        axis, is_present, is_correct = unit
        if axis not in n:
            raise ValueError(f"unknown axis {axis!r}; expected one of {', '.join(AXES)}")
        n[axis] += 1
        if is_present is True:
            present[axis] += 1
            if is_correct is True:
                correct[axis] += 1
            elif is_correct is None:
                unparsed[axis] += 1
    pres: dict[str, float | None] = {}
    corr: dict[str, float | None] = {}
    score: dict[str, float | None] = {}
    for a in AXES:
        if n[a] == 0:
            pres[a] = corr[a] = score[a] = None
            continue
        pres[a] = present[a] / n[a]
        corr[a] = correct[a] / present[a] if present[a] else None
        # P_a = 0 makes S_a = 0 even though C_a is undefined.
        score[a] = pres[a] * corr[a] if corr[a] is not None else 0.0
    defined = [s for s in score.values() if s is not None]
    trace = sum(defined) / len(defined) if defined else None
    return TraceScore(presence=pres, correctness=corr, score=score, trace_score=trace,
                      units=n, present=present, correct=correct, unparsed=unparsed)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def item_means(scores: Sequence[TraceScore]) -> dict[str, float | None]:
    """One item's value of every metric: the mean over its samples where defined."""
    out: dict[str, float | None] = {}
    for metric in METRICS:
        for a in AXES:
            out[f"{metric}.{a}"] = _mean(getattr(s, metric)[a] for s in scores)
    out["trace_score"] = _mean(s.trace_score for s in scores)
    return out


def _summary(values: Sequence[float], resamples: int, seed: int, level: float) -> dict[str, Any]:
    lo, hi = bootstrap_ci(values, resamples=resamples, seed=seed, level=level)
    return {"mean": _mean(values), "ci_low": lo, "ci_high": hi, "n_items": len(values)}


def aggregate(per_item: Mapping[str, Sequence[TraceScore]], *, resamples: int = 10_000,
              seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Means over items (each item first averaged over its samples) with bootstrap CIs over items."""
    rows = {item: item_means(scores) for item, scores in per_item.items() if scores}
    out: dict[str, Any] = {"n_items": len(rows),
                           "n_samples": sum(len(s) for s in per_item.values()),
                           "ci_level": level, "axes": {}}
    for a in AXES:
        entry: dict[str, Any] = {}
        for metric in METRICS:
            vals = [r[f"{metric}.{a}"] for r in rows.values() if r[f"{metric}.{a}"] is not None]
            entry[metric] = _summary(vals, resamples, seed, level)
        entry["units"] = sum(s.units.get(a, 0) for ss in per_item.values() for s in ss[:1])
        entry["unparsed"] = sum(s.unparsed.get(a, 0) for ss in per_item.values() for s in ss)
        out["axes"][a] = entry
    traces = [r["trace_score"] for r in rows.values() if r["trace_score"] is not None]
    out["trace_score"] = _summary(traces, resamples, seed, level)
    return out


__all__ = ["AXES", "AXIS_TITLES", "METRICS", "TraceScore", "score_trace", "item_means",
           "aggregate"]
