"""GRPO of a VLM from an SFT checkpoint or adapter (TRL GRPOTrainer) with recipe rewards.

The dataset needs ground-truth answers, so GRPO reads one of:

- the JSONL export (``<export>/jsonl/<name>_train.jsonl``): messages, image paths, question,
  options, answer, task, item_id;
- the run's items table (Parquet with the Item schema) plus ``image_store``: the prompt is
  written with the export's own prompt layout (question, lettered options, instruction);
- any datasets folder / Parquet / JSONL with ``prompt`` or ``messages`` and ``answer``
  columns (``options`` optional).

Starting from a LoRA adapter, the adapter is merged into its base first, so the KL
reference is the SFT model and GRPO trains a fresh adapter (or all weights) on top.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medrecipe.errors import UserError
from medrecipe.train.config import GRPOConfig, trainer_args
from medrecipe.train.data import load_export, record_in_manifest, write_dataset_record
from medrecipe.train.rewards import make_reward_functions
from medrecipe.train.sft import (
    _device_and_precision,
    _last_checkpoint,
    _write_log,
    count_parameters,
    load_for_training,
    peft_config_for,
)

log = logging.getLogger(__name__)

ITEM_COLUMNS = {"id", "source", "task", "question", "options", "answer", "images", "meta"}


def _load_any(path: str, split: str):
    import datasets

    p = Path(path)
    if p.is_file() and p.suffix in (".jsonl", ".json"):
        return datasets.Dataset.from_json(str(p))
    return load_export(p, split)


def _image_paths(values: list[Any], base: Path) -> list[Any]:
    out = []
    for v in values or []:
        if isinstance(v, str):
            candidate = Path(v)
            if not candidate.is_absolute():
                for root in (base, base.parent):
                    if (root / candidate).is_file():
                        candidate = root / candidate
                        break
            if not candidate.is_file():
                raise UserError(f"image {v!r} of the GRPO dataset does not exist")
            out.append(str(candidate))
        else:
            out.append(v)
    return out


def _prompt_from_messages(messages: list[dict], n_images: int) -> list[dict]:
    """Chat prompt (no assistant turn) with typed parts and one image part per image."""
    prompt: list[dict] = []
    for msg in messages:
        if msg["role"] == "assistant":
            break
        content = msg["content"]
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        else:
            parts = [
                {"type": "image"}
                if p.get("type") == "image"
                else {"type": "text", "text": p.get("text") or ""}
                for p in content
            ]
        prompt.append({"role": msg["role"], "content": parts})
    have = sum(1 for m in prompt for p in m["content"] if p["type"] == "image")
    if have < n_images:
        users = [m for m in prompt if m["role"] == "user"]
        if not users:
            raise UserError("a GRPO example has no user message")
        users[0]["content"] = [{"type": "image"}] * (n_images - have) + users[0]["content"]
    return prompt


def build_grpo_dataset(cfg: GRPOConfig):
    """Rows with prompt (chat), images, and the ground-truth columns the rewards read."""
    import datasets

    raw = _load_any(cfg.dataset, cfg.split)
    cols = set(raw.column_names)
    base = Path(cfg.dataset) if Path(cfg.dataset).is_dir() else Path(cfg.dataset).parent
    rows: list[dict[str, Any]] = []
    if ITEM_COLUMNS <= cols:
        from medrecipe.export import user_prompt

        store = None
        if cfg.image_store:
            from medrecipe.images import ImageStore

            store = ImageStore(cfg.image_store)
        for r in raw:
            refs = list(r.get("images") or [])
            if refs and store is None:
                raise UserError(
                    "the items table has images; set image_store to the run's image store"
                )
            paths = [str(store.path(ref)) for ref in refs] if refs else []
            text = user_prompt(r["question"], list(r["options"] or []), cfg.instruction)
            prompt = []
            if cfg.system_prompt:
                prompt.append(
                    {"role": "system", "content": [{"type": "text", "text": cfg.system_prompt}]}
                )
            prompt.append(
                {
                    "role": "user",
                    "content": [{"type": "image"}] * len(paths) + [{"type": "text", "text": text}],
                }
            )
            rows.append(_row(prompt, paths, r, r["id"]))
    elif "answer" in cols and ("messages" in cols or "prompt" in cols):
        for r in raw:
            images = _image_paths(list(r.get("images") or []), base)
            msgs = r["messages"] if "messages" in cols else r["prompt"]
            if isinstance(msgs, str):
                msgs = [{"role": "user", "content": msgs}]
            prompt = _prompt_from_messages(msgs, len(images))
            rows.append(_row(prompt, images, r, r.get("item_id") or r.get("id")))
    else:
        raise UserError(
            f"GRPO needs ground-truth answers but {cfg.dataset} has columns {sorted(cols)}; give "
            "the JSONL export (<export>/jsonl/<name>_train.jsonl), the run's items table with "
            "image_store, or a dataset with prompt/messages and answer columns"
        )
    if not rows:
        raise UserError(f"the GRPO dataset {cfg.dataset} is empty")
    ds = datasets.Dataset.from_list(rows)
    if any(r["images"] for r in rows):
        ds = ds.cast_column("images", datasets.Sequence(datasets.Image()))
    else:
        ds = ds.remove_columns("images")
    return ds, raw


def _row(prompt: list[dict], images: list[Any], r: dict[str, Any], item_id: Any) -> dict[str, Any]:
    options = r.get("options") or []
    if isinstance(options, dict):  # {"A": text, ...}
        options = [options[k] for k in sorted(options)]
    return {
        "prompt": prompt,
        "images": images,
        "answer": str(r["answer"]),
        "options": [str(o) for o in options],
        "task": r.get("task") or ("mm_reasoning" if options else "open_vqa"),
        "question": r.get("question") or "",
        "item_id": str(item_id or ""),
        "source": r.get("source") or "grpo",
    }


def build_grpo_trainer(
    cfg: GRPOConfig,
    out_dir: Path | None = None,
    reward_funcs: list[Callable[..., list[float]]] | None = None,
):
    """Build the TRL GRPOTrainer for a config; returns (trainer, dataset, raw dataset)."""
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    out = out_dir or cfg.resolved_output_dir("grpo")
    ds, raw = build_grpo_dataset(cfg)
    model, processor, _ = load_for_training(cfg)
    device, bf16 = _device_and_precision(cfg)
    peft_config = peft_config_for(model, cfg)
    accum = cfg.gradient_accumulation_steps()
    per_step = cfg.per_device_batch_size * cfg.world_size()
    if (per_step * accum) % cfg.num_generations:
        raise UserError(
            f"effective_batch_size {cfg.effective_batch_size} must be a multiple of "
            f"num_generations {cfg.num_generations} (each prompt is sampled that many times)"
        )
    funcs = reward_funcs or make_reward_functions(think_in_prompt=cfg.think_in_prompt)
    gc = cfg.gradient_checkpointing
    if gc is None:
        gc = device.startswith("cuda")
    args = TRLGRPOConfig(
        **trainer_args(cfg, str(out), bf16=bf16, gradient_checkpointing=gc,
                       gradient_accumulation_steps=accum),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon_low,
        epsilon_high=cfg.epsilon_high,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        mask_truncated_completions=cfg.mask_truncated_completions,
        reward_weights=[cfg.format_weight, cfg.correctness_weight]
        if reward_funcs is None
        else None,
        use_vllm=cfg.use_vllm,
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=ds,
        processing_class=processor,
        peft_config=peft_config,
    )
    return trainer, ds, raw


def run_grpo(cfg: GRPOConfig) -> Path:
    """Run GRPO per the config; returns the folder of the final checkpoint (or adapter)."""
    from medrecipe.config import config_hash

    started = time.time()
    out = cfg.resolved_output_dir("grpo")
    out.mkdir(parents=True, exist_ok=True)
    (out / "grpo_config.json").write_text(cfg.model_dump_json(indent=2))
    trainer, ds, _ = build_grpo_trainer(cfg, out)
    record = write_dataset_record(out, cfg.dataset, ds, config_hash(cfg), "train_grpo")
    record["start_model"] = cfg.model
    (out / "dataset.json").write_text(json.dumps(record, indent=2))
    trainable, total = count_parameters(trainer.model)
    resume = _last_checkpoint(out) if cfg.resume else None
    trainer.train(resume_from_checkpoint=resume)
    final = out / "final"
    trainer.save_model(str(final))
    trainer.processing_class.save_pretrained(str(final))
    _write_log(out, trainer, trainable, total)
    if cfg.run_dir:
        record_in_manifest(cfg.run_dir, "train_grpo", record, final, time.time() - started)
    return final
