"""Training configuration models (YAML in, validated, with presets and dotted overrides)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medrecipe.config import read_yaml, resolve_path, validate_model
from medrecipe.errors import UserError
from medrecipe.train.presets import GRPO_PRESETS, SFT_PRESETS, merge_preset

LANGUAGE_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Model):
    """LoRA adapter settings (peft)."""

    r: int = Field(default=64, ge=1)
    alpha: int = Field(default=128, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(LANGUAGE_PROJECTIONS))
    # Restrict the adapters to the language model: Qwen-VL's vision blocks reuse the names
    # gate_proj/up_proj/down_proj, so a bare name list would also adapt the vision MLPs.
    language_model_only: bool = True


class _TrainCommon(_Model):
    """Fields shared by SFT and GRPO."""

    model: str = Field(description="local checkpoint folder, LoRA adapter folder or hub id")
    dataset: str = Field(
        description="medrecipe TRL export (datasets.save_to_disk folder or Parquet)"
    )
    split: str = "train"
    output_dir: str | None = None
    run_dir: str | None = Field(
        default=None, description="run directory whose manifest records this training"
    )
    finetuning: Literal["full", "lora"] = "full"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    freeze_vision_tower: bool = True
    freeze_projector: bool | None = Field(
        default=None, description="None: trained with full fine-tuning, frozen with LoRA"
    )
    learning_rate: float = Field(default=5e-5, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    epochs: float = Field(default=3, gt=0)
    max_steps: int = Field(
        default=-1, description="stop after this many optimizer steps (-1: epochs)"
    )
    effective_batch_size: int = Field(default=128, ge=1)
    per_device_batch_size: int = Field(default=1, ge=1)
    image_max_pixels: int | None = Field(default=262144, ge=784)
    image_min_pixels: int | None = Field(default=None, ge=1)
    bf16: bool | None = Field(default=None, description="None: on when the GPU supports it")
    gradient_checkpointing: bool | None = Field(default=None, description="None: on with a GPU")
    attn_implementation: str | None = Field(
        default=None, description="sdpa, eager or flash_attention_2 (None: library default)"
    )
    seed: int = 0
    logging_steps: int = Field(default=10, ge=1)
    save_steps: int | None = Field(default=None, ge=1, description="None: save only at the end")
    save_total_limit: int = Field(default=2, ge=1)
    report_to: list[str] = Field(default_factory=list)
    dataloader_num_workers: int = Field(default=0, ge=0)
    resume: bool = Field(
        default=True, description="continue from the last checkpoint in output_dir"
    )
    device: str | None = Field(default=None, description="cpu or cuda (None: what is available)")

    def world_size(self) -> int:
        """Number of training processes (torchrun / accelerate set WORLD_SIZE)."""
        return int(os.environ.get("WORLD_SIZE", "1"))

    def gradient_accumulation_steps(self) -> int:
        """Accumulation steps that give effective_batch_size on this many processes."""
        per_step = self.per_device_batch_size * self.world_size()
        if self.effective_batch_size % per_step:
            raise UserError(
                f"effective_batch_size {self.effective_batch_size} is not a multiple of "
                f"per_device_batch_size x processes = {per_step}; change one of them"
            )
        return self.effective_batch_size // per_step

    def resolved_output_dir(self, stage: str) -> Path:
        """output_dir, or <run_dir>/train/<stage> when only a run directory is given."""
        if self.output_dir:
            return Path(self.output_dir)
        if self.run_dir:
            return Path(self.run_dir) / "train" / stage
        raise UserError("set output_dir (or run_dir) in the training config")


def trainer_args(cfg: _TrainCommon, out: str, *, bf16: bool, gradient_checkpointing: bool,
                 gradient_accumulation_steps: int | None = None) -> dict[str, Any]:
    """Keyword arguments shared by TRL's SFTConfig and GRPOConfig, from our settings."""
    gc = gradient_checkpointing
    return dict(
        output_dir=out,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps or cfg.gradient_accumulation_steps(),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        bf16=bf16,
        gradient_checkpointing=gc,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        report_to=cfg.report_to or "none",
        seed=cfg.seed,
        dataloader_num_workers=cfg.dataloader_num_workers,
        remove_unused_columns=False,
    )


class SFTConfig(_TrainCommon):
    """`medrecipe train sft` settings."""

    preset: Literal["octomed", "openmedreason_lora"] | None = None
    max_length: int = Field(default=8192, ge=16, description="tokens per example, images included")
    padding_free: bool = Field(
        default=False,
        description="concatenate a batch into one row without padding (flash attention on GPU)",
    )
    merge_lora: bool = Field(default=False, description="also save base+adapter merged")
    collator: Literal["auto", "trl", "medrecipe"] = Field(
        default="auto",
        description=(
            "who builds batches with assistant-only labels: trl (TRL's own collator with "
            "assistant_only_loss), medrecipe (ours, also padding-free), auto: trl where the "
            "installed TRL supports it for vision data, else medrecipe"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return merge_preset(data, SFT_PRESETS) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _collator_fits(self) -> SFTConfig:
        if self.collator == "trl" and self.padding_free:
            raise ValueError("collator: trl cannot do padding_free (TRL refuses padding-free "
                             "batches for vision datasets); use collator: auto or medrecipe")
        return self


class GRPOConfig(_TrainCommon):
    """`medrecipe train grpo` settings."""

    preset: Literal["openmedreason_grpo"] | None = None
    finetuning: Literal["full", "lora"] = "lora"
    learning_rate: float = Field(default=1e-5, gt=0)
    effective_batch_size: int = Field(default=64, ge=1)
    per_device_batch_size: int = Field(default=8, ge=1)
    epochs: float = Field(default=1, gt=0)
    num_generations: int = Field(default=8, ge=2, description="completions sampled per prompt")
    max_completion_length: int = Field(default=1024, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    beta: float = Field(default=0.04, ge=0, description="KL coefficient against the start model")
    epsilon_low: float = Field(default=0.2, gt=0, description="lower clip range")
    epsilon_high: float = Field(default=0.28, gt=0, description="upper clip range (clip higher)")
    loss_type: Literal["grpo", "dapo", "bnpo", "dr_grpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated_completions: bool = True
    format_weight: float = 1.0
    correctness_weight: float = 1.0
    think_in_prompt: bool = Field(
        default=False,
        description="the chat template already opens <think> in the generation prompt",
    )
    instruction: str = Field(
        default=(
            "Reason step by step inside <think></think>, then give only the final answer "
            "inside <answer></answer>."
        ),
        description="appended to prompts built from an items table",
    )
    system_prompt: str | None = Field(
        default=None, description="system message for prompts built from an items table"
    )
    image_store: str | None = Field(
        default=None, description="image store root, when dataset is an items Parquet table"
    )
    use_vllm: bool = False

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return merge_preset(data, GRPO_PRESETS) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _check_clip(self) -> GRPOConfig:
        if self.epsilon_high < self.epsilon_low:
            raise ValueError("epsilon_high must be at least epsilon_low")
        return self


class LlamaFactoryConfig(_Model):
    """`medrecipe train llamafactory` settings: where the export is and what to write."""

    preset: Literal["octomed", "openmedreason_lora"] | None = "octomed"
    model: str = Field(description="model_name_or_path for LLaMA-Factory")
    dataset_dir: str = Field(description="folder holding the sharegpt export and dataset_info.json")
    dataset_name: str | None = Field(
        default=None,
        description="dataset_info.json entry to train on (default: the one export entry there)",
    )
    dataset_file: str | None = Field(
        default=None, description="export file inside dataset_dir (default: <dataset_name>_train.json)"
    )
    output_dir: str = Field(description="where llamafactory-cli writes checkpoints")
    config_path: str | None = Field(
        default=None, description="YAML to write (default: <dataset_dir>/train_<preset>.yaml)"
    )
    template: str = "qwen2_vl"
    finetuning: Literal["full", "lora"] | None = None
    lora: LoraSettings | None = None
    freeze_vision_tower: bool | None = None
    freeze_projector: bool | None = Field(
        default=None, description="None: trained with full fine-tuning, frozen with LoRA"
    )
    learning_rate: float | None = None
    lr_scheduler: str | None = None
    warmup_ratio: float | None = None
    epochs: float | None = None
    effective_batch_size: int | None = None
    per_device_batch_size: int = Field(default=1, ge=1)
    num_gpus: int | None = Field(
        default=None, ge=1, description="default: torch.cuda.device_count() here (1 without CUDA)"
    )
    cutoff_len: int = Field(default=8192, ge=16)
    image_max_pixels: int = Field(default=262144, ge=784)
    image_min_pixels: int | None = None
    bf16: bool | None = Field(default=None, description="default: whether CUDA here supports bf16")
    preprocessing_workers: int | None = Field(
        default=None, ge=1, description="default: min(16, os.cpu_count())"
    )
    trust_remote_code: bool = False
    deepspeed: str | None = Field(default=None, description="path of a DeepSpeed config, if any")
    logging_steps: int = 10
    save_steps: int = 500
    extra: dict[str, Any] = Field(default_factory=dict, description="more keys copied verbatim")


def config_from_data(cls: type[BaseModel], data: Any, path: str | None = None):
    """Validate config data; errors list every problem with its field path."""
    return validate_model(cls, data, path, what="training config")


def load_config(cls: type[BaseModel], path: str | Path, overrides: list[str] | None = None):
    """Read a training YAML (with `a.b=value` overrides) into the given config model.

    Relative model/dataset/output paths resolve against the YAML file's folder when they exist
    there, so configs can sit next to their data.
    """
    data, base = read_yaml(path, overrides, cls)
    if isinstance(data, dict):
        for key in ("model", "dataset", "dataset_dir", "image_store"):
            if isinstance(data.get(key), str):
                data[key] = resolve_path(data[key], base)
    return config_from_data(cls, data, str(path))


def load_sft_config(path: str | Path, overrides: list[str] | None = None) -> SFTConfig:
    """Load an SFT config YAML."""
    return load_config(SFTConfig, path, overrides)


def load_grpo_config(path: str | Path, overrides: list[str] | None = None) -> GRPOConfig:
    """Load a GRPO config YAML."""
    return load_config(GRPOConfig, path, overrides)


def load_llamafactory_config(
    path: str | Path, overrides: list[str] | None = None
) -> LlamaFactoryConfig:
    """Load a LLaMA-Factory export config YAML."""
    return load_config(LlamaFactoryConfig, path, overrides)
