"""Write a LLaMA-Factory training YAML (and its dataset_info.json entry) for a sharegpt export.

``llamafactory-cli train <yaml>`` then fine-tunes with the preset's hyper-parameters. The
YAML keys are LLaMA-Factory's documented argument names; the dataset entry declares the
export's sharegpt layout (``messages`` with role/content tags and an ``images`` list).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from medrecipe.errors import UserError
from medrecipe.train.config import LlamaFactoryConfig, LoraSettings
from medrecipe.train.presets import SFT_PRESETS

SHAREGPT_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def dataset_entry(file_name: str) -> dict[str, Any]:
    """dataset_info.json entry for a sharegpt file with messages + images."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": dict(SHAREGPT_TAGS),
    }


def _setting(cfg: LlamaFactoryConfig, name: str, preset: dict[str, Any], default: Any) -> Any:
    value = getattr(cfg, name)
    if value is not None:
        return value
    return preset.get(name, default)


def training_arguments(cfg: LlamaFactoryConfig) -> dict[str, Any]:
    """The LLaMA-Factory argument mapping for this config (what the YAML holds)."""
    preset = SFT_PRESETS.get(cfg.preset or "", {})
    finetuning = _setting(cfg, "finetuning", preset, "full")
    effective = _setting(cfg, "effective_batch_size", preset, 128)
    per_step = cfg.per_device_batch_size * cfg.num_gpus
    if effective % per_step:
        raise UserError(
            f"effective_batch_size {effective} is not a multiple of per_device_batch_size x "
            f"num_gpus = {per_step}; change one of them"
        )
    args: dict[str, Any] = {
        "model_name_or_path": cfg.model,
        "image_max_pixels": cfg.image_max_pixels,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": finetuning,
        "freeze_vision_tower": bool(_setting(cfg, "freeze_vision_tower", preset, True)),
        "freeze_multi_modal_projector": (
            cfg.freeze_projector if cfg.freeze_projector is not None else finetuning == "lora"
        ),
        "dataset": cfg.dataset_name,
        "dataset_dir": str(Path(cfg.dataset_dir).resolve()),
        "template": cfg.template,
        "cutoff_len": cfg.cutoff_len,
        "overwrite_cache": True,
        "preprocessing_num_workers": 16,
        "output_dir": cfg.output_dir,
        "logging_steps": cfg.logging_steps,
        "save_steps": cfg.save_steps,
        "plot_loss": True,
        "overwrite_output_dir": False,
        "report_to": "none",
        "per_device_train_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": effective // per_step,
        "learning_rate": float(_setting(cfg, "learning_rate", preset, 5e-5)),
        "num_train_epochs": float(_setting(cfg, "epochs", preset, 3)),
        "lr_scheduler_type": _setting(cfg, "lr_scheduler", preset, "cosine"),
        "warmup_ratio": float(_setting(cfg, "warmup_ratio", preset, 0.03)),
        "bf16": cfg.bf16,
        "ddp_timeout": 180000000,
    }
    if cfg.image_min_pixels is not None:
        args["image_min_pixels"] = cfg.image_min_pixels
    if finetuning == "lora":
        lora = cfg.lora or LoraSettings(**preset.get("lora", {}))
        args.update(
            {
                "lora_rank": lora.r,
                "lora_alpha": lora.alpha,
                "lora_dropout": lora.dropout,
                # LLaMA-Factory keeps adapters out of the vision tower when it is frozen.
                "lora_target": ",".join(lora.target_modules),
            }
        )
    if cfg.deepspeed:
        args["deepspeed"] = cfg.deepspeed
    args.update(cfg.extra)
    return args


def write_llamafactory(cfg: LlamaFactoryConfig) -> list[Path]:
    """Write the training YAML and add the dataset to dataset_info.json; returns both paths."""
    ddir = Path(cfg.dataset_dir)
    if not ddir.is_dir():
        raise UserError(f"dataset_dir {ddir} does not exist; run the export first")
    file_name = cfg.dataset_file
    if file_name is None:
        candidates = [f"{cfg.dataset_name}_train.json", f"{cfg.dataset_name}.json"]
        file_name = next((c for c in candidates if (ddir / c).is_file()), None)
        if file_name is None:
            raise UserError(
                f"no export file {' or '.join(candidates)} in {ddir}; set dataset_file or dataset_name"
            )
    elif not (ddir / file_name).is_file():
        raise UserError(f"dataset_file {file_name} is not in {ddir}")
    info_path = ddir / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{info_path} is not valid JSON: {exc}") from exc
    info[cfg.dataset_name] = dataset_entry(file_name)
    info_path.write_text(json.dumps(info, indent=2) + "\n")

    args = training_arguments(cfg)
    out = Path(cfg.config_path) if cfg.config_path else ddir / f"train_{cfg.preset or 'sft'}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# LLaMA-Factory SFT config written by medrecipe.\n# Run: llamafactory-cli train {out}\n"
    )
    out.write_text(header + yaml.safe_dump(args, sort_keys=False))
    return [out, info_path]
