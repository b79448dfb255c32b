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


# --------------------------------------------------------------------------- values that cannot work


def _with(path: str, value):
    import copy

    data = copy.deepcopy(BASE)
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize("path, value", [
    ("generate.budget_usd", 0),
    ("generate.budget_usd", -1.5),
    ("teachers.r.timeout_s", 0),
    ("teachers.r.sampling", {"max_tokens": -5}),
    ("teachers.r.sampling", {"temperature": -3}),
    ("teachers.r.sampling", {"top_p": 0}),
    ("teachers.r.requests_per_minute", -10),
    ("teachers.r.tokens_per_minute", 0),
    ("select.pass_rate", {"min_correct": 9, "max_correct": 3}),
    ("select.difficulty", {"judge": "r", "min_rating": 7, "max_rating": 2}),
])
def test_values_that_cannot_work_fail_validation_with_their_path(tmp_path, path, value):
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, _with(path, value)))
    top = path.split(".")[0]
    assert any(loc.startswith(top) for loc, _ in e.value.problems), e.value.problems


@pytest.mark.parametrize("url", ["htps://127.0.0.1/v1", "127.0.0.1:8000/v1", "ftp://host/v1",
                                 "http://host:port/v1", "https:///v1"])
def test_base_url_must_be_http_or_https(tmp_path, url):
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, _with("teachers.r.base_url", url)))
    assert e.value.problems[0][0] == "teachers.r.base_url"


def test_an_api_key_never_goes_over_plain_http_to_another_host(tmp_path):
    remote = _with("teachers.r", {"model": "m", "base_url": "http://10.1.2.3:8000/v1",
                                  "api_key_env": "SOME_KEY"})
    with pytest.raises(RecipeError, match="unencrypted"):
        load_recipe(_write(tmp_path, remote))
    remote["teachers"]["r"]["allow_insecure_http"] = True
    assert load_recipe(_write(tmp_path, remote))[0].teachers["r"].allow_insecure_http
    for ok in ("https://api.example.com/v1", "http://127.0.0.1:9/v1", "http://localhost:9/v1",
               "http://[::1]:9/v1", "http://10.1.2.3:8000/v1"):  # the last one: no key
        t = {"model": "m", "base_url": ok}
        if "10.1.2.3" not in ok:
            t["api_key_env"] = "SOME_KEY"
        r, _ = load_recipe(_write(tmp_path, _with("teachers.r", t)))
        assert r.teachers["r"].base_url == ok


def test_preflight_reports_missing_key_variable_and_template_before_any_work(tmp_path,
                                                                               monkeypatch):
    from medrecipe.config import preflight

    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    data = _with("teachers.r", {"model": "m", "base_url": "http://127.0.0.1:9/v1",
                                "api_key_env": "NOT_SET_ANYWHERE",
                                "template": "prompts/mine.j2"})
    r, _ = load_recipe(_write(tmp_path, data))
    with pytest.raises(RecipeError) as e:
        preflight(r)
    locs = dict(e.value.problems)
    assert "NOT_SET_ANYWHERE" in locs["teachers.r.api_key_env"]
    assert "mine.j2" in locs["teachers.r.template"]
    # The template next to the recipe is found (relative to the recipe file), the key is set.
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "mine.j2").write_text("@@user\n{{ question }}\n")
    monkeypatch.setenv("NOT_SET_ANYWHERE", "sk-x")
    r, _ = load_recipe(_write(tmp_path, data))
    preflight(r)


def test_choice_judge_is_off_by_default_and_must_name_a_teacher(tmp_path):
    recipe, _ = load_recipe(_write(tmp_path, BASE))
    assert recipe.grade.choice_judge is None and recipe.grade.choice_judge_template == "judge_choice"
    bad = yaml.safe_load(yaml.safe_dump(BASE))
    bad["grade"] = {"choice_judge": "nobody"}
    with pytest.raises(RecipeError, match="grade.choice_judge names unknown teacher 'nobody'"):
        load_recipe(_write(tmp_path, bad))
    ok = yaml.safe_load(yaml.safe_dump(BASE))
    ok["grade"] = {"choice_judge": "r", "choice_judge_budget_usd": 1.5}
    recipe, _ = load_recipe(_write(tmp_path, ok))
    assert recipe.grade.choice_judge == "r" and recipe.grade.choice_judge_budget_usd == 1.5
