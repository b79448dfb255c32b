"""Write a LLaMA-Factory training YAML (and its dataset_info.json entry) for a sharegpt export.

``llamafactory-cli train <yaml>`` then fine-tunes with the preset's hyper-parameters. The
YAML keys are LLaMA-Factory's documented argument names; the dataset entry declares the
export's sharegpt layout (``messages`` with role/content tags and an ``images`` list).

What the config leaves out is derived and said: the dataset is the one export entry in the
folder's dataset_info.json; GPU count and bf16 come from torch on the machine that writes
the YAML (1 GPU and no bf16 without CUDA); preprocessing workers from ``os.cpu_count()``.
Each derived value is listed in the YAML's header comment and returned for the console.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Hardware:
    """What the machine writing the YAML has: CUDA devices, bf16 support, CPUs."""

    gpus: int | None  # None: torch is not installed, so unknown
    bf16: bool | None
    cpus: int


def detect_hardware() -> Hardware:
    """This machine's CUDA device count and bf16 support (via torch, when installed) and CPUs."""
    cpus = os.cpu_count() or 1
    try:
        import torch
    except ImportError:
        return Hardware(gpus=None, bf16=None, cpus=cpus)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Hardware(gpus=n, bf16=bool(n) and bool(torch.cuda.is_bf16_supported()), cpus=cpus)


@dataclass
class Settings:
    """The hardware-dependent values written to the YAML, and how each was chosen."""

    num_gpus: int
    bf16: bool
    workers: int
    notes: list[str] = field(default_factory=list)


def resolve_settings(cfg: LlamaFactoryConfig, hw: Hardware) -> Settings:
    """num_gpus, bf16 and preprocessing workers: the config's, else derived from `hw`."""
    notes = []
    if cfg.num_gpus is not None:
        gpus = cfg.num_gpus
        notes.append(f"num_gpus: {gpus} (from the config)")
    elif hw.gpus:
        gpus = hw.gpus
        notes.append(f"num_gpus: {gpus} (torch.cuda.device_count() on this machine)")
    else:
        gpus = 1
        why = "torch is not installed here" if hw.gpus is None else "no CUDA device here"
        notes.append(f"num_gpus: 1 ({why}; set num_gpus for the training machine)")
    if cfg.bf16 is not None:
        bf16 = cfg.bf16
        notes.append(f"bf16: {str(bf16).lower()} (from the config)")
    elif hw.bf16 is None:
        bf16 = False
        notes.append("bf16: false (torch is not installed here, support unknown; set bf16)")
    else:
        bf16 = hw.bf16
        where = "supported by CUDA on this machine" if bf16 else (
            "not supported by this machine's GPU" if hw.gpus else "no CUDA device here")
        notes.append(f"bf16: {str(bf16).lower()} ({where})")
    if cfg.preprocessing_workers is not None:
        workers = cfg.preprocessing_workers
        notes.append(f"preprocessing_num_workers: {workers} (from the config)")
    else:
        workers = min(16, hw.cpus)
        notes.append(f"preprocessing_num_workers: {workers} (min(16, {hw.cpus} CPUs here))")
    notes.append("trust_remote_code: " + ("true (from the config)" if cfg.trust_remote_code
                                          else "not set (set trust_remote_code: true to allow it)"))
    return Settings(num_gpus=gpus, bf16=bf16, workers=workers, notes=notes)


def training_arguments(cfg: LlamaFactoryConfig, settings: Settings | None = None,
                       dataset_name: str | None = None) -> dict[str, Any]:
    """The LLaMA-Factory argument mapping for this config (what the YAML holds)."""
    settings = settings or resolve_settings(cfg, detect_hardware())
    preset = SFT_PRESETS.get(cfg.preset or "", {})
    finetuning = _setting(cfg, "finetuning", preset, "full")
    effective = _setting(cfg, "effective_batch_size", preset, 128)
    per_step = cfg.per_device_batch_size * settings.num_gpus
    if effective % per_step:
        raise UserError(
            f"effective_batch_size {effective} is not a multiple of per_device_batch_size x "
            f"num_gpus = {per_step} ({settings.notes[0]}); change one of them"
        )
    args: dict[str, Any] = {
        "model_name_or_path": cfg.model,
        "image_max_pixels": cfg.image_max_pixels,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": finetuning,
        "freeze_vision_tower": bool(_setting(cfg, "freeze_vision_tower", preset, True)),
        "freeze_multi_modal_projector": (
            cfg.freeze_projector if cfg.freeze_projector is not None else finetuning == "lora"
        ),
        "dataset": dataset_name or cfg.dataset_name,
        "dataset_dir": str(Path(cfg.dataset_dir).resolve()),
        "template": cfg.template,
        "cutoff_len": cfg.cutoff_len,
        "overwrite_cache": True,
        "preprocessing_num_workers": settings.workers,
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
        "bf16": settings.bf16,
        "ddp_timeout": 180000000,
    }
    if cfg.trust_remote_code:
        args["trust_remote_code"] = True
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


def _read_info(info_path: Path) -> dict[str, Any]:
    if not info_path.is_file():
        return {}
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{info_path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise UserError(f"{info_path} must be a JSON object of dataset entries")
    return info


def export_entries(ddir: Path, info: dict[str, Any]) -> list[str]:
    """Names of the medrecipe exports in a dataset folder: entries <name> whose file is
    <name>_train.json (how the export registers its train split), else such unregistered files."""
    registered = [
        name for name, e in info.items()
        if isinstance(e, dict) and e.get("file_name") == f"{name}_train.json"
        and (ddir / e["file_name"]).is_file()
    ]
    if registered:
        return registered
    return sorted(p.name[: -len("_train.json")] for p in ddir.glob("*_train.json"))


def pick_dataset(cfg: LlamaFactoryConfig, ddir: Path, info: dict[str, Any]
                 ) -> tuple[str, str, str]:
    """(dataset name, its file in ddir, how it was chosen) for the YAML's `dataset`."""
    if cfg.dataset_name is not None:
        name, how = cfg.dataset_name, "from the config"
    else:
        names = export_entries(ddir, info)
        if not names:
            raise UserError(
                f"no export in {ddir}: dataset_info.json has {sorted(info) or 'no entries'} and "
                "there is no <name>_train.json; run the export or set dataset_name"
            )
        if len(names) > 1:
            raise UserError(
                f"{ddir} holds several exports ({', '.join(sorted(names))}); set dataset_name to one of them"
            )
        name, how = names[0], f"the export in {ddir / 'dataset_info.json'}"
    if cfg.dataset_file is not None:
        if not (ddir / cfg.dataset_file).is_file():
            raise UserError(f"dataset_file {cfg.dataset_file} is not in {ddir}")
        return name, cfg.dataset_file, how
    entry = info.get(name)
    if isinstance(entry, dict) and entry.get("file_name") and (ddir / entry["file_name"]).is_file():
        return name, entry["file_name"], how
    candidates = [f"{name}_train.json", f"{name}.json"]
    file_name = next((c for c in candidates if (ddir / c).is_file()), None)
    if file_name is None:
        known = export_entries(ddir, info)
        raise UserError(
            f"no export file {' or '.join(candidates)} in {ddir}; set dataset_file or "
            f"dataset_name" + (f" (exports there: {', '.join(known)})" if known else "")
        )
    return name, file_name, how


@dataclass
class LlamaFactoryPlan:
    """What `write_llamafactory` writes: the YAML arguments and the dataset it names."""

    args: dict[str, Any]
    dataset_name: str
    file_name: str
    notes: list[str]
    yaml_path: Path
    info_path: Path


def plan_llamafactory(cfg: LlamaFactoryConfig, hardware: Hardware | None = None
                      ) -> LlamaFactoryPlan:
    """Decide the dataset and every argument (deriving what the config leaves out)."""
    ddir = Path(cfg.dataset_dir)
    if not ddir.is_dir():
        raise UserError(f"dataset_dir {ddir} does not exist; run the export first")
    info_path = ddir / "dataset_info.json"
    name, file_name, how = pick_dataset(cfg, ddir, _read_info(info_path))
    settings = resolve_settings(cfg, hardware or detect_hardware())
    args = training_arguments(cfg, settings, name)
    out = Path(cfg.config_path) if cfg.config_path else ddir / f"train_{cfg.preset or 'sft'}.yaml"
    notes = [f"dataset: {name} ({how})", *settings.notes]
    return LlamaFactoryPlan(args, name, file_name, notes, out, info_path)


def write_llamafactory(cfg: LlamaFactoryConfig, plan: LlamaFactoryPlan | None = None
                       ) -> list[Path]:
    """Write the training YAML and the dataset's dataset_info.json entry; returns both paths."""
    plan = plan or plan_llamafactory(cfg)
    info = _read_info(plan.info_path)
    entry = dataset_entry(plan.file_name)
    if info.get(plan.dataset_name) != entry:
        info[plan.dataset_name] = entry
        plan.info_path.write_text(json.dumps(info, indent=2) + "\n")
    out = plan.yaml_path
    out.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "# LLaMA-Factory SFT config written by medrecipe.",
        f"# Run: llamafactory-cli train {out}",
        "# Derived or assumed (the machine that wrote this file may not be the one that trains):",
        *(f"#   {n}" for n in plan.notes),
    ]
    out.write_text("\n".join(header) + "\n" + yaml.safe_dump(plan.args, sort_keys=False))
    return [out, plan.info_path]
