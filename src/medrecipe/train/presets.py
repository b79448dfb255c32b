"""Named training presets taken from the two papers' reported settings.

A preset fills in the fields a config does not set; anything written in the YAML wins.

- ``octomed``: OctoMed's supervised fine-tuning of Qwen2.5-VL-7B-Instruct -- full
  fine-tuning, learning rate 5e-5, cosine schedule with linear warm-up, effective batch
  128 (the paper's ablation setting; its final model used 512), 3 epochs. The paper does
  not say whether the vision encoder was trained; this preset trains every weight (set
  ``freeze_vision_tower: true`` to keep the encoder fixed as LLaMA-Factory does by default).
- ``openmedreason_lora``: OpenMedReason's LoRA fine-tuning on the language model's
  attention and MLP projections with the vision tower frozen. The paper does not fix the
  adapter size here, so the values are this project's choices: rank 64, alpha 128
  (scale 2), dropout 0.05, learning rate 1e-4 (LoRA typically needs ~10x the full
  fine-tuning rate), cosine with 3% warm-up, effective batch 64, 3 epochs.
- ``openmedreason_grpo``: GRPO after the LoRA stage with a format and an exact-match
  correctness reward. Again this project's choices where the paper is silent: 8
  generations per prompt, KL coefficient 0.04, clipping 0.2 / 0.28 (asymmetric, "clip
  higher"), DAPO token-level loss, completions up to 1024 tokens, learning rate 1e-5 on
  a fresh LoRA adapter.
"""

from __future__ import annotations

from typing import Any

SFT_PRESETS: dict[str, dict[str, Any]] = {
    "octomed": {
        "finetuning": "full",
        "learning_rate": 5e-5,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.03,
        "effective_batch_size": 128,
        "epochs": 3,
        "freeze_vision_tower": False,
        "weight_decay": 0.0,
    },
    "openmedreason_lora": {
        "finetuning": "lora",
        "lora": {
            "r": 64,
            "alpha": 128,
            "dropout": 0.05,
            "target_modules": [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            "language_model_only": True,
        },
        "freeze_vision_tower": True,
        "learning_rate": 1e-4,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.03,
        "effective_batch_size": 64,
        "epochs": 3,
    },
}

GRPO_PRESETS: dict[str, dict[str, Any]] = {
    "openmedreason_grpo": {
        "finetuning": "lora",
        "lora": {"r": 64, "alpha": 128, "dropout": 0.05, "language_model_only": True},
        "freeze_vision_tower": True,
        "num_generations": 8,
        "beta": 0.04,
        "epsilon_low": 0.2,
        "epsilon_high": 0.28,
        "loss_type": "dapo",
        "max_completion_length": 1024,
        "learning_rate": 1e-5,
        "temperature": 1.0,
    },
}


def merge_preset(data: dict[str, Any], presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return data with the named preset's values filled in beneath the explicit ones."""
    name = data.get("preset")
    if name is None:
        return data
    if name not in presets:
        return data  # the model's Literal validator reports the bad name with its field
    return _deep_merge(presets[name], data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
