"""The whole evaluation with the tiny local model (transformers_local) on every category."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medrecipe.evaluate import eval_config_from_data, load_results, run_eval
from medrecipe.evaluate.metrics import benchmark_summary

FIX = Path(__file__).parent / "fixtures" / "eval"


def _benchmarks():
    return [
        {"name": "medqa", "path": str(FIX / "medqa_test.jsonl")},
        {"name": "pmc_vqa", "path": str(FIX / "pmc_vqa" / "test_clean.csv")},
        {"name": "brain_tumor", "path": str(FIX / "brain_tumor" / "Testing")},
    ]


@pytest.mark.slow
def test_tiny_model_runs_the_whole_evaluation(tiny_vlm, tmp_path):
    cfg = eval_config_from_data({
        "name": "tiny", "seeds": [0, 1], "pass_k": [1, 2],
        "model": {"backend": "transformers_local", "model": str(tiny_vlm), "device": "cpu"},
        "sampling": {"max_tokens": 12},
        "forced_end": {"max_tokens": 4},
        "bootstrap": {"resamples": 200},
        "benchmarks": _benchmarks(),
    })
    res = run_eval(cfg, tmp_path / "run")
    out = load_results(tmp_path / "run")
    sizes = {"medqa": 4, "pmc_vqa": 3, "brain_tumor": 8}
    assert out["complete"] is True and out["samples"] == 2 * sum(sizes.values())
    assert set(out["categories"]) == {"text", "mm_reasoning", "mm_classification"}
    for name, n in sizes.items():
        b = out["benchmarks"][name]
        assert b["n_items"] == n and b["n_samples"] == 2 * n
        assert 0.0 <= b["accuracy"] <= 1.0 and set(b["accuracy_by_seed"]) == {"0", "1"}
        assert out["datasets"][name]["n_items"] == n and out["datasets"][name]["content_hash"]
    assert "macro_f1" in out["benchmarks"]["brain_tumor"]
    assert "macro_f1" not in out["benchmarks"]["medqa"]
    assert out["versions"]["transformers"] and out["config"]["model"]["model"] == str(tiny_vlm)
    assert out["token_count_method"] == "tokenizer"

    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == out["samples"]
    for r in rows:
        # never a guessed answer: an unparsed sample is not credited
        if r["answer"] is None:
            assert r["correct"] is not True
        else:
            assert r["correct"] == (r["answer"] == r["gold"])
        assert r["completion_tokens"] > 0 and r["text"] is not None
    # the reported numbers are those of the written samples
    again = benchmark_summary([r for r in rows if r["benchmark"] == "brain_tumor"],
                              classification=True, pass_ks=(1, 2), bootstrap_resamples=200)
    assert again["accuracy"] == out["benchmarks"]["brain_tumor"]["accuracy"]
    assert pq.read_table(tmp_path / "run" / "generations.parquet").num_rows == out["samples"]
    assert pq.read_table(tmp_path / "run" / "verdicts.parquet").num_rows == out["samples"]
    assert res.requests_sent >= out["samples"]

    # a second run is answered from the cache entirely
    again_run = run_eval(cfg, tmp_path / "run")
    assert again_run.requests_sent == 0 and again_run.results["benchmarks"] == out["benchmarks"]
