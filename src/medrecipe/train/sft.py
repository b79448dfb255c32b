"""Supervised fine-tuning of a VLM on medrecipe's TRL export (TRL SFTTrainer).

Loss is on assistant tokens only. Who builds the batches is chosen per run
(`choose_collator`, config `collator: auto|trl|medrecipe`), logged and written to
train_summary.json:

- **TRL's own collator** (`DataCollatorForVisionLanguageModeling` with
  ``assistant_only_loss=True``) where TRL supports it for vision datasets: TRL >= 1.15 with
  transformers >= 5.18, a chat template with ``{% generation %}`` markers (or one TRL ships a
  training version of, such as Qwen2.5-VL's) whose mask includes the end-of-turn token, and
  an ``images`` column of `datasets.Image` features.
- **medrecipe's collator** (`VLMChatCollator`) everywhere else: TRL 0.29-1.14 refuses
  assistant-only loss for VLMs (up to 1.9 for any VLM, 1.10-1.14 for vision datasets), and
  every TRL up to 1.16 refuses padding-free batches and packing for vision datasets. It

  - labels assistant turns only in the ChatML chat format (Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
    InternVL); the turn's closing ``<|im_end|>`` is trained so the model learns to stop;
  - optionally makes padding-free batches: the examples of a batch are concatenated into one
    row with per-example position ids (including Qwen's 3-D M-RoPE positions), so no compute
    is spent on padding; attention stays within each example because the position ids
    restart (transformers builds a block-diagonal mask, or flash attention uses varlen
    kernels). The forward pass must run with ``use_cache=False`` (as training does): with a
    KV cache transformers does not look for packed sequences.

The two label the same tokens, except that TRL's training template for Qwen2.5-VL also
trains the newline after each assistant ``<|im_end|>`` (tests/test_train_sft.py compares them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medrecipe.errors import UserError
from medrecipe.train.config import SFTConfig, trainer_args
from medrecipe.train.data import (
    check_columns,
    load_export,
    record_in_manifest,
    resolve_image,
    write_dataset_record,
)

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- label masking


class ChatMLAssistantMask:
    """Finds assistant-turn token spans in ChatML-formatted token ids."""

    def __init__(self, tokenizer: Any, role: str = "assistant"):
        self.start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        unk = getattr(tokenizer, "unk_token_id", None)
        if self.start_id in (None, unk) or self.end_id in (None, unk):
            raise UserError(
                "assistant-only loss needs a ChatML chat format (<|im_start|>/<|im_end|>), as used "
                "by Qwen-VL and InternVL; this tokenizer has no such tokens"
            )
        self.tokenizer = tokenizer
        self.role = role
        self._header_cache: dict[tuple[int, ...], bool] = {}

    def mask(self, ids: Sequence[int]) -> list[bool]:
        """True at positions that belong to an assistant turn's content (and its end token)."""
        ids = list(ids)
        out = [False] * len(ids)
        i = 0
        n = len(ids)
        while i < n:
            if ids[i] != self.start_id:
                i += 1
                continue
            # The role header runs from after <|im_start|> to the first token holding a newline.
            j = i + 1
            while j < n and "\n" not in self.tokenizer.decode([ids[j]]):
                j += 1
            role = self.tokenizer.decode(ids[i + 1 : j + 1]).split("\n", 1)[0].strip()
            k = j + 1
            while k < n and ids[k] != self.end_id:
                k += 1
            if role == self.role:
                for t in range(j + 1, min(k + 1, n)):
                    out[t] = True
            i = k + 1
        return out


# --------------------------------------------------------------------------- collator


class VLMChatCollator:
    """Turns export rows (messages + images) into model batches with assistant-only labels."""

    def __init__(
        self,
        processor: Any,
        *,
        max_length: int | None = None,
        padding_free: bool = False,
        image_base: str | Path = ".",
        rope_index: Callable[..., Any] | None = None,
    ):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_length = max_length
        self.padding_free = padding_free
        self.image_base = Path(image_base)
        self.rope_index = rope_index
        self.masker = ChatMLAssistantMask(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        image_token = getattr(processor, "image_token", None)
        self.image_token_id = (
            self.tokenizer.convert_tokens_to_ids(image_token) if image_token else None
        )

    # one example -> dict of 1-D tensors (+ vision tensors)
    def encode(self, example: dict[str, Any]) -> dict[str, Any]:
        """Render, tokenize and label one example."""
        from medrecipe.vlm import normalize_messages

        raw_images = example.get("images")
        if raw_images is None and example.get("image") is not None:
            raw_images = [example["image"]]
        images = [resolve_image(v, self.image_base) for v in (raw_images or [])]
        messages, images = normalize_messages(example["messages"], images)
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError("an SFT example has no assistant message; check the export")
        text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=False
        )
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        enc = self.processor(**kwargs)
        ids = enc["input_ids"][0]
        keep = self.masker.mask(ids.tolist())
        labels = ids.clone()
        import torch

        labels[~torch.tensor(keep, dtype=torch.bool)] = IGNORE_INDEX
        out: dict[str, Any] = {"input_ids": ids, "labels": labels}
        if "mm_token_type_ids" in enc:
            out["mm_token_type_ids"] = enc["mm_token_type_ids"][0]
        for key in ("pixel_values", "image_grid_thw"):
            if key in enc:
                out[key] = enc[key]
        if self.max_length and ids.shape[0] > self.max_length:
            out = self._truncate(out)
        return out

    def _truncate(self, ex: dict[str, Any]) -> dict[str, Any]:
        ids = ex["input_ids"]
        if (
            self.image_token_id is not None
            and (ids[self.max_length :] == self.image_token_id).any()
        ):
            raise UserError(
                f"an example's image tokens extend past max_length={self.max_length}; raise "
                "max_length or lower image_max_pixels"
            )
        for key in ("input_ids", "labels", "mm_token_type_ids"):
            if key in ex:
                ex[key] = ex[key][: self.max_length]
        return ex

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        encoded = [self.encode(e) for e in examples]
        if self.padding_free:
            return pack_examples(encoded, self.rope_index)
        return pad_examples(encoded, self.pad_id)


def _vision_tensors(encoded: list[dict[str, Any]], batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    for key in ("pixel_values", "image_grid_thw"):
        parts = [e[key] for e in encoded if key in e]
        if parts:
            batch[key] = torch.cat(parts, dim=0)
    return batch


def pad_examples(encoded: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad encoded examples (input_ids, labels, mm_token_type_ids) into a batch."""
    import torch

    width = max(e["input_ids"].shape[0] for e in encoded)
    n = len(encoded)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    has_mm = "mm_token_type_ids" in encoded[0]
    mm = torch.zeros((n, width), dtype=torch.long) if has_mm else None
    for row, e in enumerate(encoded):
        length = e["input_ids"].shape[0]
        input_ids[row, :length] = e["input_ids"]
        labels[row, :length] = e["labels"]
        attention[row, :length] = 1
        if mm is not None:
            mm[row, :length] = e["mm_token_type_ids"]
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if mm is not None:
        batch["mm_token_type_ids"] = mm
    return _vision_tensors(encoded, batch)


def pack_examples(
    encoded: list[dict[str, Any]], rope_index: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """Concatenate encoded examples into one padding-free row with per-example positions.

    ``rope_index`` is the model's M-RoPE position function (Qwen-VL ``get_rope_index``);
    without it, plain 1-D positions are used.
    """
    import torch

    text_pos, rope_pos = [], []
    labels = []
    for e in encoded:
        length = e["input_ids"].shape[0]
        text_pos.append(torch.arange(length))
        lab = e["labels"].clone()
        lab[0] = IGNORE_INDEX  # never predict one example's first token from the previous one
        labels.append(lab)
        if rope_index is not None:
            pos, _ = rope_index(
                e["input_ids"][None],
                mm_token_type_ids=e["mm_token_type_ids"][None],
                image_grid_thw=e.get("image_grid_thw"),
                attention_mask=None,
            )
            rope_pos.append(pos[:, 0, :].to(torch.long))  # (3, length)
    input_ids = torch.cat([e["input_ids"] for e in encoded])[None]
    text = torch.cat(text_pos)[None]
    if rope_index is not None:
        # (4, 1, L): row 0 is the plain text position that transformers uses to find
        # where each packed example starts; rows 1-3 are M-RoPE (time, height, width).
        position_ids = torch.cat([text[None], torch.cat(rope_pos, dim=1)[:, None, :]], dim=0)
    else:
        position_ids = text
    batch = {
        "input_ids": input_ids,
        "labels": torch.cat(labels)[None],
        "position_ids": position_ids,
    }
    if "mm_token_type_ids" in encoded[0]:
        batch["mm_token_type_ids"] = torch.cat([e["mm_token_type_ids"] for e in encoded])[None]
    return _vision_tensors(encoded, batch)


# --------------------------------------------------------------------------- collator choice

# Verified against TRL's SFTTrainer source and runs on the tiny Qwen2.5-VL, TRL 0.29.0-1.16.0:
# 0.29-1.9 refuse assistant_only_loss, padding_free and packing for any VLM; 1.10-1.14 for
# vision datasets; 1.15+ accept assistant_only_loss for vision datasets with transformers
# >= 5.18 (the processor's assistant mask) and still refuse padding_free and packing.
TRL_VISION_ASSISTANT_LOSS = "1.15.0"
TRANSFORMERS_VISION_ASSISTANT_MASK = "5.18.0.dev0"  # the bound TRL itself checks


@dataclass(frozen=True)
class CollatorChoice:
    """Which collator builds SFT batches, and why."""

    collator: Literal["trl", "medrecipe"]
    reason: str
    chat_template: str | None = None  # TRL's training template, when it swaps one in

    def describe(self) -> str:
        who = "TRL's collator" if self.collator == "trl" else "medrecipe's collator"
        return f"assistant-only labels by {who}: {self.reason}"


def _installed_version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _images_are_image_features(ds: Any) -> str | None:
    """None when the dataset's images column holds datasets.Image features, else why not."""
    import datasets

    features = getattr(ds, "features", None) or {}
    col = "images" if "images" in features else "image" if "image" in features else None
    if col is None:
        return "the dataset has no images column (TRL would treat it as a text dataset)"
    feat = features[col]
    inner = getattr(feat, "feature", feat)
    if not isinstance(inner, datasets.Image):
        return f"the dataset's {col!r} column holds {type(inner).__name__}, not datasets.Image"
    return None


def trl_refusal(cfg: SFTConfig, processor: Any, ds: Any, *, trl_version: str | None = None,
                transformers_version: str | None = None) -> tuple[str | None, str | None]:
    """(why TRL's own collator cannot do assistant-only loss here or None, training template).

    The training template is TRL's patched chat template when the processor's has no
    generation markers but TRL knows a training version of it.
    """
    from packaging.version import Version

    trl_v = trl_version or _installed_version("trl")
    tf_v = transformers_version or _installed_version("transformers")
    if cfg.padding_free:
        return (f"TRL {trl_v} refuses padding-free batches for vision datasets "
                "(every release up to 1.16)"), None
    if Version(trl_v) < Version(TRL_VISION_ASSISTANT_LOSS):
        return (f"TRL {trl_v} refuses assistant_only_loss for vision-language models "
                f"(supported from TRL {TRL_VISION_ASSISTANT_LOSS})"), None
    if Version(tf_v) < Version(TRANSFORMERS_VISION_ASSISTANT_MASK):
        return (f"TRL needs transformers>=5.18 for assistant-only loss on vision datasets; "
                f"{tf_v} is installed"), None
    problem = _images_are_image_features(ds)
    if problem:
        return problem, None
    from trl.chat_template_utils import (
        get_training_chat_template,
        has_generation_markers,
        is_chat_template_stop_token_trained,
    )

    template = getattr(processor, "chat_template", None)
    if not template:
        return "the processor has no chat template", None
    training = None
    if not has_generation_markers(template):
        try:
            training = get_training_chat_template(processor)
        except ValueError:
            return ("the chat template has no {% generation %} markers and TRL has no "
                    "training version of it"), None
    if not is_chat_template_stop_token_trained(processor, chat_template=training):
        return ("TRL's assistant mask for this chat template leaves out the end-of-turn token, "
                "so the model would not learn to stop"), None
    return None, training


def choose_collator(cfg: SFTConfig, processor: Any, ds: Any, *, trl_version: str | None = None,
                    transformers_version: str | None = None) -> CollatorChoice:
    """TRL's own collator where it supports assistant-only loss for this run, else ours.

    `cfg.collator` forces one: `trl` fails (UserError naming the reason) where TRL refuses.
    """
    if cfg.collator == "medrecipe":
        why = "padding-free batches" if cfg.padding_free else "asked for"
        return CollatorChoice("medrecipe", f"collator: medrecipe in the config ({why})")
    refusal, training = trl_refusal(cfg, processor, ds, trl_version=trl_version,
                                    transformers_version=transformers_version)
    if refusal is None:
        how = ("TRL's training chat template (the model's has no generation markers)"
               if training else "the chat template's generation markers")
        source = "collator: trl in the config" if cfg.collator == "trl" else "TRL supports it"
        return CollatorChoice("trl", f"{source}; assistant tokens from {how}", training)
    if cfg.collator == "trl":
        raise UserError(f"collator: trl is not possible here: {refusal}; use collator: auto")
    return CollatorChoice("medrecipe", refusal)


# --------------------------------------------------------------------------- model setup


def _inner(model: Any) -> Any:
    """The backbone holding the vision tower and language model (model.model for HF VLMs)."""
    return getattr(model, "model", model)


def vision_tower(model: Any) -> tuple[str, Any] | None:
    """(qualified name, module) of the vision encoder, or None for text-only models."""
    inner = _inner(model)
    prefix = "model." if inner is not model else ""
    for attr in ("visual", "vision_tower", "vision_model"):
        module = getattr(inner, attr, None)
        if module is not None:
            return prefix + attr, module
    return None


def projector(model: Any) -> tuple[str, Any] | None:
    """(qualified name, module) of the vision-to-language projector, or None."""
    inner = _inner(model)
    prefix = "model." if inner is not model else ""
    tower = vision_tower(model)
    if tower is not None and getattr(tower[1], "merger", None) is not None:  # Qwen-VL
        return tower[0] + ".merger", tower[1].merger
    for attr in ("multi_modal_projector", "mm_projector"):
        module = getattr(inner, attr, None)
        if module is not None:
            return prefix + attr, module
    return None


def freeze_modules(model: Any, *, vision: bool, projector_frozen: bool) -> None:
    """Set requires_grad on the vision tower and projector as configured (in place)."""
    tower = vision_tower(model)
    proj = projector(model)
    if tower is not None:
        for p in tower[1].parameters():
            p.requires_grad_(not vision)
    if proj is not None:
        for p in proj[1].parameters():
            p.requires_grad_(not projector_frozen)


def lora_config(settings: Any, modules_to_save: list[str] | None = None) -> Any:
    """peft LoraConfig for the language model's projections."""
    from peft import LoraConfig

    names = list(settings.target_modules)
    if settings.language_model_only:
        target: Any = r".*language_model\..*\.(" + "|".join(map(_re_escape, names)) + r")"
    else:
        target = names
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target,
        modules_to_save=modules_to_save or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _re_escape(text: str) -> str:
    import re

    return re.escape(text)


def projector_frozen(cfg: Any) -> bool:
    """Default: trained with full fine-tuning, frozen with LoRA (adapters only)."""
    if cfg.freeze_projector is not None:
        return bool(cfg.freeze_projector)
    return cfg.finetuning == "lora"


def _device_and_precision(cfg: Any) -> tuple[str, bool]:
    import torch

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device is cuda but no GPU is visible; set device: cpu")
    bf16 = cfg.bf16
    if bf16 is None:
        bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    if bf16 and device == "cpu":
        bf16 = bool(cfg.bf16)  # only when asked for explicitly
    return device, bool(bf16)


def load_for_training(cfg: Any) -> tuple[Any, Any, bool]:
    """Load model + processor, apply freezing, return (model, processor, uses_lora_from_adapter)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from medrecipe.vlm import load_processor, model_type_of

    device, bf16 = _device_and_precision(cfg)
    src = Path(cfg.model)
    adapter = (src / "adapter_config.json").is_file()
    base = (
        json.loads((src / "adapter_config.json").read_text())["base_model_name_or_path"]
        if adapter
        else cfg.model
    )
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if model_type_of(base) is None:
        raise UserError(
            f"cannot read a model config from {base!r}; give a local checkpoint folder or a hub id "
            "present in the Hugging Face cache"
        )
    try:
        model = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load {base!r} as a vision-language model: {exc}") from exc
    if adapter:
        from peft import PeftModel

        # Merge the earlier stage's adapter so it becomes part of the starting (and reference) model.
        model = PeftModel.from_pretrained(model, str(src)).merge_and_unload()
    processor_src = str(src) if (src / "tokenizer_config.json").is_file() else base
    processor = load_processor(
        processor_src, min_pixels=cfg.image_min_pixels, max_pixels=cfg.image_max_pixels
    )
    model.config.use_cache = False
    text_cfg = getattr(model.config, "text_config", None)
    if text_cfg is not None:
        text_cfg.use_cache = False
    if cfg.finetuning == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_modules(
            model, vision=cfg.freeze_vision_tower, projector_frozen=projector_frozen(cfg)
        )
    return model, processor, adapter


def peft_config_for(model: Any, cfg: Any) -> Any:
    """The LoRA config for a model (base weights frozen first), or None for full fine-tuning."""
    if cfg.finetuning != "lora":
        return None
    for p in model.parameters():
        p.requires_grad_(False)
    return lora_config(cfg.lora, lora_modules_to_save(model, cfg))


def lora_modules_to_save(model: Any, cfg: Any) -> list[str]:
    """Whole modules trained next to the adapters (vision tower / projector when unfrozen)."""
    keep: list[str] = []
    tower = vision_tower(model)
    if tower is not None and not cfg.freeze_vision_tower:
        keep.append(tower[0].rsplit(".", 1)[-1])
    elif not projector_frozen(cfg):
        proj = projector(model)
        if proj is not None:
            keep.append(proj[0].rsplit(".", 1)[-1])
    return keep


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


# --------------------------------------------------------------------------- trainer


def _sft_trainer_class():
    from trl import SFTTrainer

    class _SFTTrainer(SFTTrainer):
        """SFTTrainer that counts real tokens in padding-free batches with 3-D position ids."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            pos = inputs.get("position_ids")
            before = getattr(self, "_total_train_tokens", None)
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if (
                pos is not None
                and pos.ndim == 3
                and before is not None
                and self.model.training
                and "attention_mask" not in inputs
            ):
                # TRL counts position_ids.size(1) tokens, which is the batch dim for 3-D ids.
                self._total_train_tokens = (
                    before + int(pos.shape[-1]) * self.accelerator.num_processes
                )
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

    return _SFTTrainer


def _last_checkpoint(out: Path) -> str | None:
    ckpts = sorted(
        (p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(ckpts[-1]) if ckpts else None


def build_sft_trainer(cfg: SFTConfig, out_dir: Path | None = None):
    """Build the TRL SFTTrainer (model, data, collator) for a config; returns (trainer, dataset).

    The collator is chosen by `choose_collator`; the trainer's `collator_choice` says which
    and why.
    """
    from trl import SFTConfig as TRLSFTConfig

    out = out_dir or cfg.resolved_output_dir("sft")
    ds = load_export(cfg.dataset, cfg.split)
    check_columns(ds, ["messages"], cfg.dataset)
    model, processor, _ = load_for_training(cfg)
    device, bf16 = _device_and_precision(cfg)
    peft_config = peft_config_for(model, cfg)
    choice = choose_collator(cfg, processor, ds)
    log.info("SFT %s", choice.describe())
    if choice.collator == "trl":
        # TRL builds DataCollatorForVisionLanguageModeling itself (swapping in its training
        # chat template when the model's has no generation markers) and truncates to max_length.
        collator = None
        trl_masking = dict(assistant_only_loss=True, max_length=cfg.max_length)
    else:
        rope_index = getattr(_inner(model), "get_rope_index", None) if cfg.padding_free else None
        dataset_path = Path(cfg.dataset)
        collator = VLMChatCollator(
            processor,
            max_length=cfg.max_length,
            padding_free=cfg.padding_free,
            image_base=dataset_path if dataset_path.is_dir() else dataset_path.parent,
            rope_index=rope_index,
        )
        # Our collator labels and truncates; TRL's own switches stay off (it refuses them here).
        trl_masking = dict(assistant_only_loss=False, max_length=None)
    gc = cfg.gradient_checkpointing
    if gc is None:
        gc = device.startswith("cuda")
    args = TRLSFTConfig(
        **trainer_args(cfg, str(out), bf16=bf16, gradient_checkpointing=gc),
        dataset_kwargs={"skip_prepare_dataset": True},
        packing=False,
        padding_free=False,  # TRL refuses it for vision datasets; VLMChatCollator does it
        use_cpu=device == "cpu",
        disable_tqdm=True,
        **trl_masking,
    )
    trainer = _sft_trainer_class()(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=collator,
        processing_class=processor,
        peft_config=peft_config,
    )
    trainer.collator_choice = choice
    return trainer, ds


def run_sft(cfg: SFTConfig, report: Callable[[str], Any] | None = None) -> Path:
    """Fine-tune per the config; returns the folder of the final checkpoint (or adapter).

    `report` (e.g. the console's print) is told which collator labels the batches and why.
    """
    from medrecipe.config import config_hash

    started = time.time()
    out = cfg.resolved_output_dir("sft")
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_config.json").write_text(cfg.model_dump_json(indent=2))
    trainer, ds = build_sft_trainer(cfg, out)
    if report is not None:
        report(trainer.collator_choice.describe())
    record = write_dataset_record(out, cfg.dataset, ds, config_hash(cfg), "train_sft")
    trainable, total = count_parameters(trainer.model)
    log.info("training %s of %s parameters on %d examples", trainable, total, len(ds))
    resume = _last_checkpoint(out) if cfg.resume else None
    trainer.train(resume_from_checkpoint=resume)
    final = out / "final"
    trainer.save_model(str(final))
    trainer.processing_class.save_pretrained(str(final))
    _write_log(out, trainer, trainable, total, trainer.collator_choice)
    if cfg.finetuning == "lora" and cfg.merge_lora:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(str(out / "merged"))
        trainer.processing_class.save_pretrained(str(out / "merged"))
    if cfg.run_dir:
        record_in_manifest(cfg.run_dir, "train_sft", record, final, time.time() - started)
    return final


def _write_log(out: Path, trainer: Any, trainable: int, total: int,
               choice: CollatorChoice | None = None) -> None:
    with open(out / "train_log.jsonl", "w") as fh:
        for row in trainer.state.log_history:
            fh.write(json.dumps(row) + "\n")
    summary = {
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    if choice is not None:
        summary.update(collator=choice.collator, collator_reason=choice.reason)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
