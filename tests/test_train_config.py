"""Training configs: presets, YAML loading with field-named errors, batch arithmetic."""

from __future__ import annotations

import pytest

from medrecipe.errors import RecipeError, UserError
from medrecipe.train.config import GRPOConfig, SFTConfig, load_grpo_config, load_sft_config


def test_octomed_preset_fills_the_papers_settings():
    cfg = SFTConfig(preset="octomed", model="m", dataset="d", output_dir="o")
    assert cfg.finetuning == "full"
    assert cfg.learning_rate == 5e-5 and cfg.lr_scheduler == "cosine" and cfg.warmup_ratio > 0
    assert cfg.effective_batch_size == 128 and cfg.epochs == 3


def test_explicit_values_win_over_the_preset():
    cfg = SFTConfig(
        preset="openmedreason_lora", model="m", dataset="d", learning_rate=3e-4, lora={"r": 8}
    )
    assert cfg.finetuning == "lora" and cfg.freeze_vision_tower is True
    assert cfg.learning_rate == 3e-4
    assert cfg.lora.r == 8 and cfg.lora.alpha == 128  # the rest of the preset's LoRA stays


def test_yaml_errors_name_the_field(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model: m\ndataset: d\nlearning_rate: -1\nlora:\n  r: 0\nbogus: 1\n")
    with pytest.raises(RecipeError) as err:
        load_sft_config(path)
    text = str(err.value)
    assert "learning_rate" in text and "lora.r" in text and "bogus" in text and str(path) in text
    with pytest.raises(RecipeError) as err:
        from medrecipe.train.config import config_from_data

        config_from_data(SFTConfig, {"model": "m", "dataset": "d", "preset": "nope"})
    assert "preset" in str(err.value)


def test_yaml_relative_paths_and_overrides(tmp_path):
    (tmp_path / "export").mkdir()
    path = tmp_path / "grpo.yaml"
    path.write_text("preset: openmedreason_grpo\nmodel: ckpt\ndataset: export\n")
    cfg = load_grpo_config(path, ["num_generations=4", "beta=0.0"])
    assert cfg.dataset == str(tmp_path / "export")
    assert cfg.model == "ckpt"  # not a folder there: kept as a hub id
    assert cfg.num_generations == 4 and cfg.beta == 0.0
    assert cfg.epsilon_high > cfg.epsilon_low and cfg.loss_type == "dapo"


def test_batch_arithmetic(monkeypatch):
    cfg = SFTConfig(model="m", dataset="d", effective_batch_size=128, per_device_batch_size=2)
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert cfg.gradient_accumulation_steps() == 8
    cfg = SFTConfig(model="m", dataset="d", effective_batch_size=100, per_device_batch_size=3)
    with pytest.raises(UserError, match="effective_batch_size"):
        cfg.gradient_accumulation_steps()


def test_grpo_clip_range_must_be_ordered():
    with pytest.raises(Exception, match="epsilon_high"):
        GRPOConfig(model="m", dataset="d", epsilon_low=0.3, epsilon_high=0.2)
