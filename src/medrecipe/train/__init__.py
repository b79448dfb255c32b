"""Training a student VLM on a recipe's export: TRL SFT and GRPO, rewards, LLaMA-Factory configs.

Importing this package is cheap; torch, transformers and TRL load when training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medrecipe.train.config import (
    GRPOConfig,
    LlamaFactoryConfig,
    LoraSettings,
    SFTConfig,
    load_grpo_config,
    load_llamafactory_config,
    load_sft_config,
)

__all__ = [
    "GRPOConfig",
    "LlamaFactoryConfig",
    "LoraSettings",
    "SFTConfig",
    "load_grpo_config",
    "load_llamafactory_config",
    "load_sft_config",
    "run_grpo",
    "run_sft",
    "write_llamafactory",
]


def run_sft(config: SFTConfig, report: Callable[[str], Any] | None = None) -> Path:
    """Supervised fine-tuning; returns the final checkpoint (or adapter) folder.

    `report` is told which collator labels the batches (TRL's or medrecipe's) and why."""
    from medrecipe.train.sft import run_sft as _run

    return _run(config, report)


def run_grpo(config: GRPOConfig) -> Path:
    """GRPO with the format and correctness rewards; returns the final checkpoint folder."""
    from medrecipe.train.grpo import run_grpo as _run

    return _run(config)


def write_llamafactory(config: LlamaFactoryConfig) -> list[Path]:
    """Write the LLaMA-Factory training YAML and dataset_info.json; returns their paths."""
    from medrecipe.train.llamafactory import write_llamafactory as _write

    return _write(config)
