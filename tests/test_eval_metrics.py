"""Evaluation metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from medrecipe.evaluate import metrics as m


def _s(item, seed, correct, answer="A", sample=0, **kw):
    return {"item_id": item, "seed": seed, "sample": sample, "correct": correct,
            "answer": answer, **kw}


def test_accuracy_mean_and_sample_std_over_seeds():
    # seed 0: 2/4 right, seed 1: 3/4, seed 2: 4/4 -> mean 0.75, sample std 0.25
    rows = []
    for seed, right in ((0, 2), (1, 3), (2, 4)):
        for i in range(4):
            rows.append(_s(f"q{i}", seed, i < right))
    assert m.seed_accuracies(rows) == {0: 0.5, 1: 0.75, 2: 1.0}
    mean, std = m.accuracy_over_seeds(rows)
    assert mean == pytest.approx(0.75)
    assert std == pytest.approx(0.25)


def test_unparsed_counts_as_wrong_and_single_seed_std_is_zero():
    rows = [_s("a", 0, True), _s("b", 0, None, answer=None), _s("c", 0, False, answer="B")]
    mean, std = m.accuracy_over_seeds(rows)
    assert mean == pytest.approx(1 / 3)
    assert std == 0.0


def test_category_average_is_unweighted_over_benchmarks_and_skips_empty():
    acc = {"medqa": 0.6, "headqa": 0.8, "mmlu": None, "pmc": 0.5}
    cats = {"medqa": "text", "headqa": "text", "mmlu": "text", "pmc": "mm_reasoning",
            "bt": "mm_classification"}
    assert m.category_averages(acc, cats) == {
        "text": pytest.approx(0.7), "mm_reasoning": pytest.approx(0.5), "mm_classification": None}


def test_majority_vote_excludes_abstentions():
    assert m.majority_vote([None, None, "B", "A", "B", None, None]) == "B"
    assert m.majority_vote([None, None]) is None
    assert m.majority_vote([]) is None


def test_majority_vote_tie_goes_to_first_voted_answer():
    assert m.majority_vote(["C", "A", "A", "C"]) == "C"
    assert m.majority_vote([None, "A", "C", "C", "A"]) == "A"
    # abstentions never win, even when they are the plurality
    assert m.majority_vote([None, None, None, "D", "B"]) == "D"


def test_majority_vote_accuracy_orders_samples_by_seed_before_voting():
    # item x: seed 1 says A (right), seed 0 says B (wrong): a 1-1 tie, seed 0 comes first -> B
    rows = [_s("x", 1, True, "A"), _s("x", 0, False, "B"),
            # item y: two of three say C (right), one abstains
            _s("y", 0, True, "C"), _s("y", 1, None, None), _s("y", 2, True, "C"),
            # item z: all abstain -> wrong
            _s("z", 0, None, None), _s("z", 1, None, None)]
    assert m.majority_vote_accuracy(rows) == pytest.approx(1 / 3)
    # voting on only the first sample of each item: x->B wrong, y->C right, z wrong
    assert m.majority_vote_accuracy(rows, k=1) == pytest.approx(1 / 3)
    assert m.majority_vote_accuracy([]) is None


def test_pass_at_k_unbiased_estimator():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert m.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # k=1 is the plain fraction correct
    assert m.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # k = n: 1 when any sample is right, 0 otherwise
    assert m.pass_at_k(4, 1, 4) == 1.0
    assert m.pass_at_k(4, 0, 4) == 0.0
    # n - c < k: certain success
    assert m.pass_at_k(5, 4, 2) == 1.0
    with pytest.raises(ValueError):
        m.pass_at_k(3, 1, 4)


def test_mean_pass_at_k_over_items():
    rows = [_s("a", s, s == 0) for s in range(4)] + [_s("b", s, False) for s in range(4)]
    # item a: n=4,c=1,k=2 -> 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5 ; item b: 0
    assert m.mean_pass_at_k(rows, 2) == pytest.approx(0.25)
    assert m.mean_pass_at_k(rows, 4) == pytest.approx(0.5)
    assert m.mean_pass_at_k(rows, 5) is None


def test_bootstrap_ci_is_seeded_and_has_the_normal_width():
    values = [1.0] * 200 + [0.0] * 200
    lo, hi = m.bootstrap_ci(values, resamples=10_000, seed=7)
    assert (lo, hi) == m.bootstrap_ci(values, resamples=10_000, seed=7)
    assert lo < 0.5 < hi
    # normal approximation: half-width 1.96 * sqrt(0.25 / 400) = 0.049
    assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / 400), rel=0.08)
    assert m.bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert m.bootstrap_ci([]) == (None, None)


def test_macro_f1_and_balanced_accuracy_by_hand():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", None, "a"]
    # a: tp2 fp1 fn1 -> F1 = 4/6 ; b: tp1 fp1 fn1 -> 2/4 ; c: tp0 fp0 fn1 -> 0
    assert m.macro_f1(y_true, y_pred) == pytest.approx((4 / 6 + 0.5 + 0.0) / 3)
    # recalls: a 2/3, b 1/2, c 0
    assert m.balanced_accuracy(y_true, y_pred) == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert m.macro_f1([], []) is None
    assert m.balanced_accuracy([], []) is None


def test_benchmark_summary_rates_tokens_and_classification():
    rows = [
        _s("a", 0, True, "A", gold_label="cat", pred_label="cat", terminated=True,
           forced_end=False, thinking_tokens=10, answer_tokens=2, completion_tokens=12),
        _s("b", 0, None, None, gold_label="dog", pred_label=None, terminated=False,
           forced_end=True, thinking_tokens=30, answer_tokens=0, completion_tokens=30),
        _s("a", 1, False, "B", gold_label="cat", pred_label="dog", terminated=True,
           forced_end=False, thinking_tokens=20, answer_tokens=4, completion_tokens=24),
        _s("b", 1, True, "B", gold_label="dog", pred_label="dog", terminated=True,
           forced_end=False, thinking_tokens=40, answer_tokens=6, completion_tokens=46),
    ]
    out = m.benchmark_summary(rows, classification=True, pass_ks=(1, 2),
                              bootstrap_resamples=200)
    assert out["n_items"] == 2 and out["n_samples"] == 4 and out["samples_per_item"] == 2
    assert out["accuracy"] == pytest.approx(0.5) and out["accuracy_std"] == pytest.approx(0.0)
    assert out["parse_failure_rate"] == pytest.approx(0.25)
    assert out["unterminated_rate"] == pytest.approx(0.25)
    assert out["forced_end_rate"] == pytest.approx(0.25)
    assert out["mean_thinking_tokens"] == pytest.approx(25.0)
    assert out["mean_answer_tokens"] == pytest.approx(3.0)
    # pass@2 with n=2: each item has one right sample -> 1.0
    assert out["pass_at_k"] == {"1": pytest.approx(0.5), "2": pytest.approx(1.0)}
    # vote: a = tie A/B -> A (seed 0 first) right; b = [invalid] (seed 0) ties B and
    # comes first -> wrong by default; with unparsed samples dropped b = only B -> right
    assert out["majority_vote"] == pytest.approx(0.5)
    assert out["vote_invalid"] == "count" and out["vote_draw"] == ["0/0", "1/0"]
    dropped = m.benchmark_summary(rows, vote_invalid="drop", bootstrap_resamples=10)
    assert dropped["majority_vote"] == pytest.approx(1.0)
    # seed 0: truth [cat, dog], pred [cat, None]: F1 cat 1, dog 0 -> 0.5 ; bal acc 0.5
    # seed 1: truth [cat, dog], pred [dog, dog]: F1 cat 0, dog 2/3 -> 1/3 ; bal acc 0.5
    assert out["macro_f1"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert out["balanced_accuracy"] == pytest.approx(0.5)


def test_empty_benchmark_summary_has_no_numbers():
    out = m.benchmark_summary([], classification=True, pass_ks=(1,))
    assert out["n_items"] == 0
    for key in ("accuracy", "accuracy_std", "ci_low", "ci_high", "majority_vote",
                "parse_failure_rate", "unterminated_rate", "mean_thinking_tokens",
                "macro_f1", "balanced_accuracy"):
        assert out[key] is None, key
    assert out["pass_at_k"] == {"1": None}
