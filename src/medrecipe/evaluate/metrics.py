"""Evaluation metrics: pure functions over per-sample results.

Conventions used everywhere in this module:

- A *sample* is one graded response: a mapping with at least ``item_id``, ``seed``,
  ``sample`` (index within the seed), ``answer`` (extracted answer or None) and
  ``correct`` (True / False / None). ``None`` for ``correct`` means not gradable (no
  answer was found, or the request failed); it counts as wrong in every accuracy, because
  an unparsed response is never credited.
- Accuracy of one seed is the mean over items of the item's mean correctness among that
  seed's samples. Accuracy over seeds is reported as mean and sample standard deviation
  (n - 1 in the denominator; 0.0 for a single seed).
- Majority vote runs over ``vote_samples`` samples per item drawn evenly across seeds
  (sample 0 of each seed in seed order, then sample 1 of each seed, ...), so one seed's
  samples never fill the vote. Answers vote by graded equivalence class: option letters
  as they are, open answers by their normalised form with yes/no replies read as yes/no
  ("no fracture" and "no" are one vote). Samples with no answer are one ``[invalid]``
  vote each by default (as in lm-evaluation-harness; an item that most samples fail to
  answer is wrong), or are left out with ``invalid="drop"``. Ties are broken in favour
  of the tied answer whose first vote came earliest in the draw order, so the result
  never depends on hashing or on the order of a dictionary.
- A benchmark with no items yields ``None`` for every rate and is left out of category
  averages.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Sample = Mapping[str, Any]


# --------------------------------------------------------------------------- basics


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; 0.0 for one value; None for none)."""
    vals = [float(v) for v in values]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def rate(flags: Iterable[bool]) -> float | None:
    """Fraction of true flags (None when there are none)."""
    flags = list(flags)
    return sum(1 for f in flags if f) / len(flags) if flags else None


def _order_key(s: Sample) -> tuple[int, int]:
    return (int(s.get("seed") or 0), int(s.get("sample") or 0))


def _by_item(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped per item (item order = first appearance), each sorted by (seed, sample)."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(str(s["item_id"]), []).append(s)
    for g in groups.values():
        g.sort(key=_order_key)
    return groups


# --------------------------------------------------------------------------- accuracy


def seed_accuracies(samples: Iterable[Sample]) -> dict[int, float]:
    """Accuracy of each seed: mean over items of that seed's mean correctness per item."""
    per_seed: dict[int, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        per_seed[int(s.get("seed") or 0)][str(s["item_id"])].append(s.get("correct") is True)
    out = {}
    for seed in sorted(per_seed):
        items = per_seed[seed]
        out[seed] = sum(sum(v) / len(v) for v in items.values()) / len(items)
    return out


def accuracy_over_seeds(samples: Iterable[Sample]) -> tuple[float | None, float | None]:
    """Mean and standard deviation of per-seed accuracy."""
    return mean_std(list(seed_accuracies(samples).values()))


def item_scores(samples: Iterable[Sample]) -> list[float]:
    """Per-item score: the item's mean correctness over all its samples (for bootstrap CIs)."""
    return [sum(s.get("correct") is True for s in g) / len(g) for g in _by_item(samples).values()]


def category_averages(benchmark_accuracy: Mapping[str, float | None],
                      categories: Mapping[str, str]) -> dict[str, float | None]:
    """Unweighted mean of benchmark accuracies per category; empty benchmarks (None) are skipped."""
    acc: dict[str, list[float]] = defaultdict(list)
    seen: list[str] = []
    for bench, cat in categories.items():
        if cat not in seen:
            seen.append(cat)
        value = benchmark_accuracy.get(bench)
        if value is not None:
            acc[cat].append(float(value))
    return {cat: (sum(acc[cat]) / len(acc[cat]) if acc[cat] else None) for cat in seen}


# --------------------------------------------------------------------------- voting


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """Most frequent non-None answer; ties go to the answer voted for first; None if all abstain."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    for a in answers:  # first occurrence among the tied answers wins
        if a is not None and counts[a] == best:
            return a
    raise AssertionError("unreachable")


INVALID_VOTE = "[invalid]"


def vote_class(answer: str | None) -> str | None:
    """The equivalence class an answer votes for: a letter, or a normalised open answer."""
    from medrecipe.answers import normalize_open, yes_no_reading

    if answer is None:
        return None
    a = answer.strip()
    if len(a) == 1 and a.isalpha():
        return a.upper()
    norm = normalize_open(a)
    return yes_no_reading(norm) or norm


def vote_draw(group: Sequence[Sample], k: int | None) -> list[Sample]:
    """k samples of one item taken evenly across seeds (round robin over seeds by sample index)."""
    by_seed: dict[int, list[Sample]] = defaultdict(list)
    for s in sorted(group, key=_order_key):
        by_seed[int(s.get("seed") or 0)].append(s)
    order: list[Sample] = []
    depth = max((len(v) for v in by_seed.values()), default=0)
    for j in range(depth):
        order.extend(v[j] for _, v in sorted(by_seed.items()) if j < len(v))
    return order if k is None else order[:k]


def majority_vote_accuracy(samples: Iterable[Sample], k: int | None = None,
                           invalid: str = "count") -> float | None:
    """Accuracy of the per-item majority vote over k samples drawn evenly across seeds.

    The vote is graded with the verdict already given to a sample in the winning class, so
    voting never re-grades; an item whose vote is won by [invalid] (or whose samples all
    abstain) is wrong.
    """
    if invalid not in ("count", "drop"):
        raise ValueError(f"invalid must be 'count' or 'drop', not {invalid!r}")
    groups = _by_item(samples)
    if not groups:
        return None
    right = 0
    for g in groups.values():
        votes = vote_draw(g, k)
        classes = [vote_class(s.get("answer")) for s in votes]
        if invalid == "count":
            classes = [INVALID_VOTE if c is None else c for c in classes]
        winner = majority_vote(classes)
        if winner is None or winner == INVALID_VOTE:
            continue
        right += any(c == winner and s.get("correct") is True for c, s in zip(classes, votes, strict=True))
    return right / len(groups)


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples per item (n={n})")
    # math.comb is exact and returns 0 when k > n - c, which gives 1.0 as it should.
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(samples: Iterable[Sample], k: int) -> float | None:
    """Mean over items of the unbiased pass@k; None when some item has fewer than k samples."""
    groups = _by_item(samples)
    if not groups:
        return None
    vals = []
    for g in groups.values():
        n = len(g)
        if n < k:
            return None
        vals.append(pass_at_k(n, sum(s.get("correct") is True for s in g), k))
    return sum(vals) / len(vals)


def pass_at_k_curve(samples: Iterable[Sample]) -> dict[str, float]:
    """Mean pass@k for every k from 1 to the fewest samples any item has (the curve to plot)."""
    groups = _by_item(samples)
    if not groups:
        return {}
    n_min = min(len(g) for g in groups.values())
    flat = [s for g in groups.values() for s in g]
    return {str(k): v for k in range(1, n_min + 1)
            if (v := mean_pass_at_k(flat, k)) is not None}


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(values: Sequence[float], *, resamples: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap confidence interval of the mean over items (resampled with replacement)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return None, None
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=float)
    # Chunked so that 10,000 resamples of a large benchmark do not need one huge matrix.
    chunk = max(1, 2_000_000 // arr.size)
    done = 0
    while done < resamples:
        m = min(chunk, resamples - done)
        idx = rng.integers(0, arr.size, size=(m, arr.size))
        means[done:done + m] = arr[idx].mean(axis=1)
        done += m
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------- classification


def _labels(y_true: Sequence[str], y_pred: Sequence[str | None]) -> list[str]:
    return sorted({*y_true, *(p for p in y_pred if p is not None)})


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float | None:
    """Macro-averaged F1 over the classes seen in truth or predictions.

    An abstention (None) is a miss for the true class and a false positive for no class.
    A class with no true and no predicted instance cannot occur; a class with precision
    and recall both zero scores F1 = 0.
    """
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    if not y_true:
        return None
    scores = []
    for c in _labels(y_true, y_pred):
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return sum(scores) / len(scores)


def balanced_accuracy(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float | None:
    """Mean per-class recall over the classes present in the truth (abstentions are misses)."""
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    if not y_true:
        return None
    recalls = []
    for c in sorted(set(y_true)):
        idx = [i for i, t in enumerate(y_true) if t == c]
        recalls.append(sum(1 for i in idx if y_pred[i] == c) / len(idx))
    return sum(recalls) / len(recalls)


def classification_over_seeds(samples: Iterable[Sample]) -> dict[str, float | None]:
    """Macro-F1 and balanced accuracy per seed (first sample of each item), as mean and std.

    Each sample needs ``gold_label`` (the true class) and ``pred_label`` (the predicted
    class, or None when no valid option was extracted).
    """
    per_seed: dict[int, dict[str, Sample]] = defaultdict(dict)
    for s in sorted(samples, key=_order_key):
        per_seed[int(s.get("seed") or 0)].setdefault(str(s["item_id"]), s)
    f1s, baccs = [], []
    for seed in sorted(per_seed):
        rows = list(per_seed[seed].values())
        y_true = [str(r["gold_label"]) for r in rows]
        y_pred = [r.get("pred_label") for r in rows]
        f1s.append(macro_f1(y_true, y_pred))
        baccs.append(balanced_accuracy(y_true, y_pred))
    f1_mean, f1_std = mean_std([v for v in f1s if v is not None])
    ba_mean, ba_std = mean_std([v for v in baccs if v is not None])
    return {"macro_f1": f1_mean, "macro_f1_std": f1_std,
            "balanced_accuracy": ba_mean, "balanced_accuracy_std": ba_std}


# --------------------------------------------------------------------------- per benchmark


def _mean(values: Iterable[float | int | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def benchmark_summary(samples: Sequence[Sample], *, classification: bool = False,
                      pass_ks: Sequence[int] = (1,), vote_k: int | None = None,
                      vote_invalid: str = "count",
                      bootstrap_resamples: int = 10_000, bootstrap_seed: int = 0,
                      level: float = 0.95) -> dict[str, Any]:
    """Every metric of one benchmark from its graded samples (see module docstring)."""
    groups = _by_item(samples)
    seeds = seed_accuracies(samples)
    acc_mean, acc_std = mean_std(list(seeds.values()))
    lo, hi = bootstrap_ci(item_scores(samples), resamples=bootstrap_resamples,
                          seed=bootstrap_seed, level=level)
    n_per_item = sorted({len(g) for g in groups.values()})
    out: dict[str, Any] = {
        "n_items": len(groups),
        "n_samples": len(samples),
        "samples_per_item": n_per_item[0] if len(n_per_item) == 1 else n_per_item,
        "accuracy": acc_mean,
        "accuracy_std": acc_std,
        "accuracy_by_seed": {str(k): v for k, v in seeds.items()},
        "ci_low": lo,
        "ci_high": hi,
        "ci_level": level,
        "majority_vote": majority_vote_accuracy(samples, vote_k, vote_invalid),
        "vote_k": vote_k if vote_k is not None else (max(n_per_item) if n_per_item else None),
        "vote_samples": vote_k if vote_k is not None else (max(n_per_item) if n_per_item else None),
        "vote_invalid": vote_invalid,
        # Which samples voted (the same draw for every item): "seed/sample" in draw order.
        "vote_draw": [f"{s.get('seed')}/{s.get('sample')}"
                      for s in vote_draw(next(iter(groups.values())), vote_k)] if groups else [],
        "pass_at_k": {str(k): mean_pass_at_k(samples, k) for k in pass_ks},
        "pass_at_k_curve": pass_at_k_curve(samples),
        "parse_failure_rate": rate(s.get("answer") is None for s in samples),
        "unterminated_rate": rate(s.get("terminated") is False for s in samples),
        "forced_end_rate": rate(bool(s.get("forced_end")) for s in samples),
        "error_rate": rate(bool(s.get("error")) for s in samples),
        "mean_thinking_tokens": _mean(s.get("thinking_tokens") for s in samples),
        "mean_answer_tokens": _mean(s.get("answer_tokens") for s in samples),
        "mean_completion_tokens": _mean(s.get("completion_tokens") for s in samples),
    }
    if classification:
        out.update(classification_over_seeds(samples) if samples else
                   {"macro_f1": None, "macro_f1_std": None,
                    "balanced_accuracy": None, "balanced_accuracy_std": None})
    return out
