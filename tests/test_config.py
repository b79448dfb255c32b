"""Recipe validation: every problem is reported with its YAML path; overrides apply."""

from __future__ import annotations

import pytest
import yaml

from medrecipe.config import apply_overrides, config_hash, load_recipe
from medrecipe.errors import RecipeError


def _write(tmp_path, data) -> str:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


BASE = {
    "name": "t",
    "sources": [
        {"name": "a", "adapter": "generic", "path": "a.jsonl"},
        {"name": "bench", "adapter": "generic", "path": "b.jsonl", "role": "benchmark"},
    ],
    "teachers": {"r": {"model": "m", "base_url": "http://127.0.0.1:1/v1"}},
    "generate": {"routes": {"text": "r"}},
    "prepare": {"decontaminate": {"against": ["bench"]}},
}


def test_valid_recipe_loads_and_resolves_relative_paths(tmp_path):
    (tmp_path / "a.jsonl").write_text("")
    recipe, _ = load_recipe(_write(tmp_path, BASE))
    assert recipe.sources[0].path == str(tmp_path / "a.jsonl")
    # A path that does not exist next to the recipe is left as written (maybe a hub id).
    assert recipe.sources[1].path == "b.jsonl"


def test_every_error_names_its_yaml_path(tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(BASE))
    bad["sources"][0]["limit"] = -3
    bad["sources"][1]["role"] = "exam"
    bad["generate"]["n"] = 0
    bad["select"] = {"cap_per_question": "many"}
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, bad))
    locs = {loc for loc, _ in e.value.problems}
    assert {"sources.0.limit", "sources.1.role", "generate.n", "select.cap_per_question"} <= locs
    assert "recipe.yaml" in str(e.value)


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(BASE))
    bad["teachers"]["r"]["temprature"] = 0.3
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, bad))
    assert ("teachers.r.temprature", "Extra inputs are not permitted") in e.value.problems


def test_cross_references_are_checked(tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(BASE))
    bad["generate"]["routes"]["mm_reasoning"] = "nobody"
    bad["prepare"]["decontaminate"]["against"] = ["a"]  # a training source, not a benchmark
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, bad))
    text = str(e.value)
    assert "nobody" in text or "'a'" in text


def test_dotted_overrides(tmp_path):
    recipe, data = load_recipe(_write(tmp_path, BASE),
                               ["sources.0.limit=100", "generate.n=4", "select.val_fraction=0.1",
                                "teachers.r.sampling.temperature=0.0"])
    assert recipe.sources[0].limit == 100
    assert recipe.generate.n == 4
    assert recipe.select.val_fraction == pytest.approx(0.1)
    assert recipe.teachers["r"].sampling.temperature == 0.0
    assert data["sources"][0]["limit"] == 100


def test_bad_override_paths_are_user_errors():
    with pytest.raises(RecipeError, match="sources.5"):
        apply_overrides({"sources": [{}]}, ["sources.5.limit=1"])
    with pytest.raises(RecipeError, match="path.to.key=value"):
        apply_overrides({}, ["novalue"])


def test_config_hash_changes_with_content():
    assert config_hash({"a": 1}) == config_hash({"a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_packaged_recipes_validate():
    from medrecipe.cli import packaged_recipe
    from medrecipe.evaluate.config import load_eval_config

    octomed, _ = load_recipe(packaged_recipe("octomed"))
    assert octomed.generate.n == 16 and octomed.select.cap_per_question == 16
    assert octomed.select.pass_rate is None and octomed.select.difficulty is None
    ev = load_eval_config(packaged_recipe("eval_octomed"))
    assert {b.name for b in ev.benchmarks} >= {"medqa", "pmc_vqa", "brain_tumor"}
    assert ev.seeds == [0, 1, 2, 3, 4]
    omr = load_eval_config(packaged_recipe("eval_openmedreason"))
    assert [b.resolved().trace for b in omr.benchmarks] == [True, False, False]
    assert omr.trace.judge is not None and omr.trace.judge.model == "my-judge"
