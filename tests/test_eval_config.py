"""Evaluation recipes and the benchmark registry."""

from __future__ import annotations

import pytest

from medrecipe.errors import RecipeError, UserError
from medrecipe.evaluate import BENCHMARKS, load_eval_config
from medrecipe.evaluate.config import eval_config_from_data
from medrecipe.evaluate.registry import OCTOMED_SUITE, benchmarks_by_category, get_benchmark


def test_octomed_suite_is_registered_by_category():
    by_cat = benchmarks_by_category("octomed")
    assert [b.name for b in by_cat["text"]] == OCTOMED_SUITE["text"]
    assert [b.name for b in by_cat["mm_reasoning"]] == OCTOMED_SUITE["mm_reasoning"]
    assert [b.name for b in by_cat["mm_classification"]] == OCTOMED_SUITE["mm_classification"]
    assert BENCHMARKS["medmcqa"].hf_split == "validation"
    assert BENCHMARKS["medqa"].hf_split == "test"
    assert all(b.classification for b in by_cat["mm_classification"])
    omr = {b.name for bs in benchmarks_by_category("openmedreason").values() for b in bs}
    assert {"openmedreason_bench", "slake", "vqa_rad", "pathvqa", "jama", "ham10000", "eyepacs",
            "hyperkvasir", "vindr_cxr", "vindr_mammo", "busi"} == omr
    with pytest.raises(UserError, match="unknown benchmark 'medqaa'"):
        get_benchmark("medqaa")


def _data(**kw):
    data = {"name": "t", "model": {"backend": "openai_compat", "model": "m"},
            "benchmarks": [{"name": "medqa", "path": "/data/medqa.jsonl"}]}
    data.update(kw)
    return data


def test_defaults_follow_octomed_and_registry_fills_the_source():
    cfg = eval_config_from_data(_data())
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_tokens) == (0.6, 0.95, 8192)
    assert cfg.seeds == [0, 1, 2, 3, 4]
    assert cfg.template == "eval_boxed"
    b = cfg.benchmarks[0].resolved()
    assert (b.source.adapter, b.source.hf_split, b.category) == ("medqa", "test", "text")
    assert b.source.role == "benchmark" and b.source.path == "/data/medqa.jsonl"


def test_custom_benchmark_needs_adapter_and_category():
    with pytest.raises(RecipeError, match=r"benchmarks\.0.*give `adapter` and `category`"):
        eval_config_from_data(_data(benchmarks=[{"name": "mine", "path": "x.jsonl"}]))
    cfg = eval_config_from_data(_data(benchmarks=[
        {"name": "mine", "path": "x.jsonl", "adapter": "generic", "category": "mm_classification"}]))
    assert cfg.benchmarks[0].resolved().classification is True


def test_misplaced_sampling_and_impossible_pass_k_are_reported_with_paths():
    with pytest.raises(RecipeError, match="set `sampling` at the top level"):
        eval_config_from_data(_data(model={"model": "m", "sampling": {"temperature": 0}}))
    with pytest.raises(RecipeError, match="hub id 'GBaker/MedQA-USMLE-4-options'"):
        eval_config_from_data(_data(benchmarks=[{"name": "medqa"}]))
    with pytest.raises(RecipeError, match="pass_k 6 needs"):
        eval_config_from_data(_data(pass_k=[1, 6]))
    cfg = eval_config_from_data(_data(pass_k=[1, 6], samples_per_seed=2))
    assert cfg.pass_k == [1, 6]


def test_load_eval_config_resolves_paths_and_overrides(tmp_path):
    (tmp_path / "medqa.jsonl").write_text("{}\n")
    p = tmp_path / "eval.yaml"
    p.write_text("name: t\nmodel: {model: m}\nbenchmarks:\n  - {name: medqa, path: medqa.jsonl}\n")
    cfg = load_eval_config(p, ["sampling.temperature=0.0", "seeds=[1, 2]"])
    assert cfg.benchmarks[0].path == str(tmp_path / "medqa.jsonl")
    assert cfg.sampling.temperature == 0.0 and cfg.seeds == [1, 2]
