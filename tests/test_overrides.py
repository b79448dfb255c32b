"""`-o path=value` overrides: values are converted by the target field's type; free-form
places keep YAML 1.1 words (yes/no/on/off) as strings; quoted values are strings."""

from __future__ import annotations

import math

import pytest
import yaml

from medrecipe.config import load_recipe
from medrecipe.errors import RecipeError
from medrecipe.evaluate.config import load_eval_config
from medrecipe.overrides import apply_overrides, parse_override_value
from medrecipe.train.config import LlamaFactoryConfig, load_llamafactory_config, load_sft_config

RECIPE = {
    "name": "t",
    "sources": [
        {"name": "a", "adapter": "generic", "path": "a.jsonl"},
        {"name": "b", "adapter": "generic", "path": "b.jsonl"},
    ],
    "teachers": {"r": {"model": "m", "base_url": "http://127.0.0.1:1/v1"}},
    "generate": {"routes": {"text": "r"}},
}


def _write(tmp_path, data, name="cfg.yaml") -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.fixture
def lf_yaml(tmp_path):
    return _write(tmp_path, {"model": "m", "dataset_dir": str(tmp_path), "output_dir": "out"})


def test_free_form_extra_keeps_no_as_a_string_and_llamafactory_yaml_says_no(lf_yaml):
    cfg = load_llamafactory_config(lf_yaml, ["extra.save_strategy=no", "extra.flag=on",
                                             "extra.plain=yes"])
    assert cfg.extra == {"save_strategy": "no", "flag": "on", "plain": "yes"}
    # what LLaMA-Factory reads back from a YAML dump of it is the string, not false
    assert yaml.safe_load(yaml.safe_dump(cfg.extra))["save_strategy"] == "no"


def test_free_form_values_follow_the_yaml_core_schema(lf_yaml):
    cfg = load_llamafactory_config(lf_yaml, [
        "extra.a=true", "extra.b=false", "extra.c=null", "extra.d=12", "extra.e=1e-5",
        "extra.f=0x10", "extra.g=2024-01-01", "extra.h=1.16.0", "extra.i=[x, 2, off]",
        "extra.j={k: on, n: 3}", "extra.k=a: b", "extra.l=",
    ])
    assert cfg.extra == {"a": True, "b": False, "c": None, "d": 12, "e": 1e-5, "f": 16,
                         "g": "2024-01-01", "h": "1.16.0", "i": ["x", 2, "off"],
                         "j": {"k": "on", "n": 3}, "k": "a: b", "l": None}


def test_quoted_values_are_always_the_string_inside(lf_yaml):
    cfg = load_llamafactory_config(lf_yaml, ['extra.a="1"', "extra.b='true'", 'extra.c=["1", 2]',
                                             'extra.d="[x]"', "template='7'"])
    assert cfg.extra == {"a": "1", "b": "true", "c": ["1", 2], "d": "[x]"}
    assert cfg.template == "7"


def test_bool_fields_take_yaml_1_1_words(lf_yaml):
    for word, value in [("no", False), ("false", False), ("off", False), ("0", False),
                        ("yes", True), ("True", True), ("on", True), ("1", True)]:
        assert load_llamafactory_config(lf_yaml, [f"bf16={word}"]).bf16 is value


def test_typed_fields_are_converted_by_their_annotation(tmp_path, lf_yaml):
    cfg = load_llamafactory_config(lf_yaml, ["num_gpus=4", "learning_rate=1e-5", "preset=null",
                                             "lora.r=8", "lora.target_modules=[q_proj, v_proj]",
                                             "model=123"])
    assert cfg.num_gpus == 4 and cfg.learning_rate == pytest.approx(1e-5)
    assert cfg.preset is None and cfg.model == "123"  # a str field keeps the text
    assert cfg.lora is not None and cfg.lora.r == 8
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    sft = load_sft_config(_write(tmp_path, {"model": "m", "dataset": "d"}, "sft.yaml"),
                          ["report_to=[none]", "freeze_projector=no", "bf16=null",
                           "image_max_pixels=1_000_000", "epochs=2"])
    assert sft.report_to == ["none"] and sft.freeze_projector is False and sft.bf16 is None
    assert sft.image_max_pixels == 1_000_000 and sft.epochs == 2.0


def test_list_index_paths_and_dict_values_reach_nested_models(tmp_path):
    recipe, data = load_recipe(_write(tmp_path, RECIPE), [
        "sources.1.limit=100", "sources.0.options.flag=off", "sources.1.options.n=3",
        "teachers.r.sampling.temperature=0", "teachers.r.sampling.extra.reasoning_effort=no",
        "prepare.balance.per_class=equal", "executor=ray",
    ])
    assert recipe.sources[1].limit == 100
    assert recipe.sources[0].options == {"flag": "off"}  # adapter options are free-form
    assert recipe.sources[1].options == {"n": 3}
    assert recipe.teachers["r"].sampling.temperature == 0.0
    assert recipe.teachers["r"].sampling.extra == {"reasoning_effort": "no"}
    assert recipe.executor.kind == "ray"  # a model's shorthand string still reaches it
    assert data["sources"][1]["limit"] == 100


def test_union_fields_pick_the_member_the_text_fits(tmp_path):
    path = _write(tmp_path, RECIPE)
    r, _ = load_recipe(path, ["prepare.balance.per_class=7"])
    assert r.prepare.balance.per_class == 7
    r, _ = load_recipe(path, ["prepare.balance.per_class=equal"])
    assert r.prepare.balance.per_class == "equal"
    with pytest.raises(RecipeError, match=r"prepare\.balance\.per_class.*an integer or one of "
                                          r"'equal'.*'some'"):
        load_recipe(path, ["prepare.balance.per_class=some"])


@pytest.mark.parametrize("override, expected", [
    ("bf16=maybe", r"bf16: override 'bf16=maybe': expected a boolean \(true/false, yes/no"),
    ("num_gpus=four", r"num_gpus: override 'num_gpus=four': expected an integer or null, got 'four'"),
    ("lora.r=[1]", r"lora\.r: override 'lora\.r=\[1\]': expected an integer"),
    ("preset=huge", r"preset: .*expected one of 'octomed', 'openmedreason_lora' or null"),
    ("lora.target_modules=[a, [b]", r"lora\.target_modules: .*not a valid YAML .*flow"),
    ("lora.r=[[1]]", r"lora\.r: .*expected an integer"),
    ("learning_rate=fast", r"learning_rate: .*expected a number or null, got 'fast'"),
])
def test_a_value_that_does_not_fit_names_the_override_and_the_type(lf_yaml, override, expected):
    with pytest.raises(RecipeError, match=expected):
        load_llamafactory_config(lf_yaml, [override])


def test_list_element_type_is_checked_inside_flow_collections(tmp_path):
    path = _write(tmp_path, {"model": "m", "dataset": "d"})
    with pytest.raises(RecipeError, match=r"image_max_pixels: .*expected an integer or null, "
                                          r"got '\[1\]'"):
        load_sft_config(path, ["image_max_pixels=[1]"])
    # elements are converted by the element type: yes/no in a list[bool], numbers in a list[str]
    assert parse_override_value("[yes, no, '1']", list[bool]) == [True, False, "1"]
    assert parse_override_value("[1, 2.5]", list[str]) == ["1", "2.5"]
    assert parse_override_value("{a: 1, b: no}", dict[str, bool]) == {"a": True, "b": False}


def test_unknown_keys_are_free_form_and_validation_names_them(lf_yaml):
    with pytest.raises(RecipeError, match="not_a_field"):
        load_llamafactory_config(lf_yaml, ["not_a_field=no"])
    data = apply_overrides({}, ["not_a_field=no"], LlamaFactoryConfig)
    assert data == {"not_a_field": "no"}


def test_without_a_model_every_value_is_free_form():
    data = apply_overrides({"a": [{"b": 1}]}, ["a.0.b=no", "a.0.c=.inf", "d=-2"])
    assert data["a"][0]["b"] == "no" and math.isinf(data["a"][0]["c"]) and data["d"] == -2


def test_eval_recipe_overrides_are_typed(tmp_path):
    path = _write(tmp_path, {
        "name": "e",
        "model": {"model": "m", "base_url": "http://127.0.0.1:1/v1"},
        "benchmarks": [{"name": "b", "adapter": "generic", "path": "b.jsonl", "category": "text"}],
    })
    cfg = load_eval_config(path, ["sampling.extra.stream=no", "benchmarks.0.limit=5"])
    assert cfg.sampling.extra == {"stream": "no"}
    assert cfg.benchmarks[0].limit == 5
