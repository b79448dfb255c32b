"""`score_trace` and the per-item-then-over-items aggregate, against hand computations."""

from __future__ import annotations

import pytest

from medrecipe.evaluate.trace import aggregate, score_trace


def test_mixed_axes_match_a_hand_computation():
    units = [
        # perception: 4 units, 3 present; of those 1 correct, 1 wrong, 1 unparsed
        ("perception", True, True), ("perception", True, False), ("perception", True, None),
        ("perception", False, None),
        # knowledge: both present and correct
        ("knowledge", True, True), ("knowledge", True, True),
        # rationale: units exist, none present
        ("rationale", False, None), ("rationale", False, None),
    ]
    ts = score_trace(units)
    assert ts.presence == {"perception": 0.75, "knowledge": 1.0, "rationale": 0.0}
    assert ts.correctness["perception"] == pytest.approx(1 / 3)
    assert ts.correctness["knowledge"] == 1.0
    assert ts.correctness["rationale"] is None  # nothing present: correctness undefined
    assert ts.score == {"perception": pytest.approx(0.25), "knowledge": 1.0, "rationale": 0.0}
    assert ts.trace_score == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    assert ts.unparsed == {"perception": 1, "knowledge": 0, "rationale": 0}
    assert ts.units == {"perception": 4, "knowledge": 2, "rationale": 2}


def test_an_axis_without_units_is_undefined_and_left_out_of_the_trace_score():
    ts = score_trace([("perception", True, True), ("perception", False, None),
                      ("rationale", True, False)])
    assert ts.presence == {"perception": 0.5, "knowledge": None, "rationale": 1.0}
    assert ts.correctness == {"perception": 1.0, "knowledge": None, "rationale": 0.0}
    assert ts.score == {"perception": 0.5, "knowledge": None, "rationale": 0.0}
    assert ts.trace_score == pytest.approx(0.25)  # mean over the two axes that have units


def test_an_empty_checklist_has_no_trace_score():
    ts = score_trace([])
    assert ts.trace_score is None
    assert set(ts.presence.values()) == {None} and set(ts.score.values()) == {None}


def test_correct_is_read_only_for_present_units_and_axes_are_checked():
    # a stray "correct" on an absent unit must not raise correctness or the score
    ts = score_trace([("knowledge", False, True), ("knowledge", True, False)])
    assert ts.presence["knowledge"] == 0.5 and ts.correctness["knowledge"] == 0.0
    assert ts.score["knowledge"] == 0.0
    with pytest.raises(ValueError, match="unknown axis 'vision'"):
        score_trace([("vision", True, True)])


def test_aggregate_averages_each_item_first_then_over_items():
    a1 = score_trace([("perception", True, True), ("perception", True, False)])  # S_p 0.5
    a2 = score_trace([("perception", True, True), ("perception", True, True)])  # S_p 1.0
    b1 = score_trace([("perception", True, False), ("perception", False, None),
                      ("knowledge", False, None)])  # S_p 0, S_k 0, trace 0
    out = aggregate({"a": [a1, a2], "b": [b1]}, resamples=200)
    p = out["axes"]["perception"]
    # item a: mean of its two samples (0.75); pooled over samples it would be 0.5
    assert p["score"]["mean"] == pytest.approx((0.75 + 0.0) / 2)
    assert p["presence"]["mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert p["correctness"]["mean"] == pytest.approx((0.75 + 0.0) / 2)
    k = out["axes"]["knowledge"]
    # only item b has knowledge units, and none present: correctness is defined for no item
    assert k["presence"] == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_items": 1}
    assert k["correctness"]["mean"] is None and k["correctness"]["n_items"] == 0
    assert out["trace_score"]["mean"] == pytest.approx((0.75 + 0.0) / 2)
    assert out["n_items"] == 2 and out["n_samples"] == 3
    lo, hi = out["trace_score"]["ci_low"], out["trace_score"]["ci_high"]
    assert 0.0 <= lo <= out["trace_score"]["mean"] <= hi <= 0.75
    assert out["axes"]["perception"]["units"] == 2 + 2  # one checklist per item, counted once
