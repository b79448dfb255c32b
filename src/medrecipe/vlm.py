"""Load vision-language models and processors offline, and generate from chat messages.

Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors in transformers 5.x insist on a video
processor, and the video processor needs torchvision, which this project cannot rely on.
Two things follow:

- The ``Offline*`` subclasses below drop the video processor (images and text only) and
  are registered with ``AutoProcessor``. When they save a folder they write it in the layout
  of a hub checkpoint (stock ``processor_class``, a video processor entry, the legacy
  ``preprocessor_config.json``), so stock transformers, vLLM and LLaMA-Factory load it as
  they load ``Qwen/Qwen2.5-VL-*`` on a machine that has torchvision.
- On a machine without torchvision, importing this module (or calling
  :func:`allow_missing_video_processor`) makes stock ``AutoProcessor`` load such a folder
  with ``video_processor=None``: images and text work, videos are refused. ``medrecipe
  serve`` runs ``transformers serve`` with this hook installed.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrecipe.errors import UserError
from medrecipe.train.lf_env import offline_processor

try:  # transformers is an optional ("train") dependency
    from transformers import AutoProcessor
    from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLConfig, Qwen2VLProcessor
    from transformers.models.qwen3_vl import Qwen3VLConfig, Qwen3VLProcessor
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "medrecipe.vlm needs the training extras: pip install 'medrecipe[train]'"
    ) from exc


# model_type -> (stock processor class name, video processor class name)
_STOCK_NAMES: dict[str, tuple[str, str]] = {
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}


class _HubLayout:
    """Mixin: ``save_pretrained`` writes a folder that stock loaders open like a hub model."""

    _model_type: str = ""

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        write_hub_layout(save_directory, self, self._model_type)
        return result


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_hub_layout(folder: str | Path, processor: Any, model_type: str) -> None:
    """Rewrite a saved processor folder so it loads as a hub Qwen-VL checkpoint does.

    - ``processor_config.json`` names the stock processor class and holds a
      ``video_processor`` entry (transformers 5 reads its sub-processors from there);
    - ``preprocessor_config.json`` and ``video_preprocessor_config.json`` hold the image
      and video settings for loaders that read the per-processor files (transformers 4.x,
      as pinned by LLaMA-Factory and older vLLM releases);
    - ``tokenizer_config.json`` names the stock processor class too.

    The video settings are the image processor's (patch, merge and temporal sizes, mean and
    std); other video options keep their library defaults.
    """
    folder = Path(folder)
    stock, video_type = _STOCK_NAMES[model_type]
    image = processor.image_processor.to_dict()
    image.pop("processor_class", None)
    image["image_processor_type"] = image.get("image_processor_type") or "Qwen2VLImageProcessor"
    size = image.get("size") or {}
    # transformers 4.x Qwen2-VL image processors read min_pixels / max_pixels.
    if "shortest_edge" in size:
        image.setdefault("min_pixels", size["shortest_edge"])
    if "longest_edge" in size:
        image.setdefault("max_pixels", size["longest_edge"])
    video = {
        key: image[key]
        for key in (
            "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
            "do_convert_rgb", "do_normalize", "do_rescale", "rescale_factor",
        )
        if key in image
    }
    video["video_processor_type"] = video_type

    proc_file = folder / "processor_config.json"
    proc = _read_json(proc_file)
    proc["processor_class"] = stock
    proc.setdefault("image_processor", dict(image))
    proc.setdefault("video_processor", dict(video))
    _write_json(proc_file, proc)
    _write_json(folder / "preprocessor_config.json", {**image, "processor_class": stock})
    _write_json(folder / "video_preprocessor_config.json", {**video, "processor_class": stock})
    tok_file = folder / "tokenizer_config.json"
    if tok_file.is_file():
        tok = _read_json(tok_file)
        tok["processor_class"] = stock
        _write_json(tok_file, tok)


class OfflineQwen2VLProcessor(_HubLayout, Qwen2VLProcessor):
    """Qwen2-VL processor without the torchvision-backed video processor."""

    _model_type = "qwen2_vl"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class OfflineQwen2_5_VLProcessor(_HubLayout, Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the torchvision-backed video processor."""

    _model_type = "qwen2_5_vl"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class OfflineQwen3VLProcessor(_HubLayout, Qwen3VLProcessor):
    """Qwen3-VL processor without the torchvision-backed video processor."""

    _model_type = "qwen3_vl"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


# model_type -> processor class that works without torchvision
OFFLINE_PROCESSORS: dict[str, type] = {
    "qwen2_vl": OfflineQwen2VLProcessor,
    "qwen2_5_vl": OfflineQwen2_5_VLProcessor,
    "qwen3_vl": OfflineQwen3VLProcessor,
}

for _config_cls, _proc_cls in (
    (Qwen2VLConfig, OfflineQwen2VLProcessor),
    (Qwen2_5_VLConfig, OfflineQwen2_5_VLProcessor),
    (Qwen3VLConfig, OfflineQwen3VLProcessor),
):
    AutoProcessor.register(_config_cls, _proc_cls, exist_ok=True)


def torchvision_available() -> bool:
    """Whether torchvision imports here (an installed but broken build counts as missing)."""
    return offline_processor.torchvision_works()


def allow_missing_video_processor() -> bool:
    """Let stock ``AutoProcessor`` load Qwen-VL folders when torchvision is missing.

    A saved folder names the stock processor class (``Qwen2_5_VLProcessor``), whose video
    processor needs torchvision. Where torchvision does not import, ``AutoProcessor``
    resolves those names to the ``Offline*`` classes above (images and text; videos are
    refused), so code that loads a processor by name (``transformers serve``, TRL, a user's
    script) works. Where torchvision imports nothing changes. The patch itself lives in
    ``train/lf_env/offline_processor.py``, which LLaMA-Factory's environment runs without
    medrecipe. Returns whether the hook is active.
    """
    classes = {_STOCK_NAMES[t][0]: cls for t, cls in OFFLINE_PROCESSORS.items()}
    return bool(offline_processor.install(classes))


allow_missing_video_processor()


def model_type_of(path: str | Path) -> str | None:
    """Return the ``model_type`` recorded in a checkpoint's config.json, or None."""
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("model_type")
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if base and base != str(path):
            return model_type_of(base)
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(path)).model_type
    except Exception:
        return None


def load_processor(
    path: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> Any:
    """Load the processor of a local checkpoint or hub id, without needing torchvision."""
    model_type = model_type_of(path)
    cls = OFFLINE_PROCESSORS.get(model_type or "")
    try:
        processor = (
            cls.from_pretrained(str(path)) if cls else AutoProcessor.from_pretrained(str(path))
        )
    except OSError as exc:
        raise UserError(
            f"cannot load a processor from {path!s}: {exc}. Give a local checkpoint folder "
            "or a hub id that is in the local Hugging Face cache."
        ) from exc
    if min_pixels is not None or max_pixels is not None:
        set_pixel_limits(processor, min_pixels=min_pixels, max_pixels=max_pixels)
    return processor


def set_pixel_limits(
    processor: Any, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> None:
    """Change the image processor's min/max pixel budget (Qwen-style smart resize) in place."""
    ip = getattr(processor, "image_processor", None)
    if ip is None:
        raise UserError("this processor has no image processor; remove min_pixels/max_pixels")
    size = dict(getattr(ip, "size", None) or {})
    if "shortest_edge" in size or "longest_edge" in size or hasattr(ip, "max_pixels"):
        if min_pixels is not None:
            size["shortest_edge"] = int(min_pixels)
        if max_pixels is not None:
            size["longest_edge"] = int(max_pixels)
        ip.size = size
        # Older processors also read these attributes directly.
        if min_pixels is not None and hasattr(ip, "min_pixels"):
            ip.min_pixels = int(min_pixels)
        if max_pixels is not None and hasattr(ip, "max_pixels"):
            ip.max_pixels = int(max_pixels)
    else:
        raise UserError(
            f"{type(ip).__name__} has no pixel budget; min_pixels/max_pixels apply to Qwen-VL models only"
        )


def _resolve_dtype(dtype: Any, device: str):
    import torch

    if dtype is None or dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16"}
    name = names.get(str(dtype), str(dtype))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise UserError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    return value


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_and_processor(
    path: str | Path,
    device: str | None = None,
    dtype: Any = None,
    model_kind: str = "auto",
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """Load a VLM (or causal LM) and its processor from a local folder, hub id or LoRA adapter.

    model_kind is "vlm" (image-text-to-text), "causal_lm" (text only) or "auto" (from the config).
    A folder holding a peft adapter is loaded on top of its base model and merged.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    device = device or default_device()
    torch_dtype = _resolve_dtype(dtype, device)
    path = str(path)
    adapter_cfg = Path(path) / "adapter_config.json"
    base_path = path
    if adapter_cfg.is_file():
        base_path = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
    if model_kind == "auto":
        model_kind = "vlm" if model_type_of(base_path) in _vlm_model_types() else "causal_lm"
    if model_kind not in ("vlm", "causal_lm"):
        raise UserError(f"model_kind must be auto, vlm or causal_lm, not {model_kind!r}")
    auto_cls = AutoModelForImageTextToText if model_kind == "vlm" else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = auto_cls.from_pretrained(base_path, **kwargs)
    except OSError as exc:
        raise UserError(f"cannot load model {base_path!r}: {exc}") from exc
    if adapter_cfg.is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    model.to(device)
    model.eval()
    # The adapter folder normally holds a copy of the processor; fall back to the base model.
    proc_src = path if (Path(path) / "tokenizer_config.json").is_file() else base_path
    processor = load_processor(proc_src)
    return model, processor


def _vlm_model_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


# ---------------------------------------------------------------------------------------
# generation


@dataclass
class ChatCompletion:
    """One generated response."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (an end token was produced) or "length"


def _image_from_ref(value: Any):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    if isinstance(value, dict):  # {"url": ...} (OpenAI) or {"bytes": ..., "path": ...} (datasets)
        if value.get("bytes"):
            return _image_from_ref(value["bytes"])
        return _image_from_ref(value.get("url") or value.get("path"))
    if isinstance(value, (str, Path)):
        text = str(value)
        if text.startswith("data:"):
            return _image_from_ref(base64.b64decode(text.split(",", 1)[1]))
        if text.startswith("file://"):
            text = text[len("file://") :]
        if not Path(text).is_file():
            raise UserError(f"image {text!r} does not exist")
        with Image.open(text) as im:
            return im.convert("RGB")
    raise UserError(f"cannot read an image from a {type(value).__name__}")


def normalize_messages(messages: Sequence[dict], images: Sequence[Any] | None = None):
    """Turn chat messages into processor form and collect their images in order.

    Image parts may carry the image inline ({"type": "image", "image": PIL/path/bytes},
    or OpenAI's {"type": "image_url", "image_url": {"url": "data:..."}}); parts of type
    "image" without a payload take the next image from ``images``.
    """
    queue = list(images or [])
    out_messages: list[dict] = []
    found: list[Any] = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str) or content is None:
            out_messages.append({"role": msg["role"], "content": content or ""})
            continue
        parts = []
        for part in content:
            kind = part.get("type")
            if kind in ("image", "image_url"):
                payload = part.get("image") if kind == "image" else part.get("image_url")
                if payload is None:
                    if not queue:
                        raise UserError("a message has more image parts than images were given")
                    payload = queue.pop(0)
                found.append(_image_from_ref(payload))
                parts.append({"type": "image"})
            elif kind == "text":
                parts.append({"type": "text", "text": part.get("text") or ""})
        out_messages.append({"role": msg["role"], "content": parts})
    if queue:
        raise UserError(f"{len(queue)} image(s) were given but the messages have no part for them")
    return out_messages, found


def generate_chat(
    model: Any,
    processor: Any,
    conversations: Sequence[Sequence[dict]],
    *,
    images: Sequence[Sequence[Any]] | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
    continue_final_message: bool | None = None,
) -> list[list[ChatCompletion]]:
    """Generate responses for a batch of chat conversations (with images) with a local model.

    Returns one list of ``num_return_sequences`` completions per conversation. A temperature
    of 0 means greedy decoding. A conversation ending in an assistant message is continued
    (no new assistant turn) unless `continue_final_message` is False; this is how a forced
    end of thinking resumes a truncated response.
    """
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    texts, batch_images = [], []
    for i, conv in enumerate(conversations):
        msgs, imgs = normalize_messages(conv, images[i] if images else None)
        cont = continue_final_message
        if cont is None:
            cont = bool(msgs) and msgs[-1].get("role") == "assistant"
        texts.append(
            processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=not cont,
                                          continue_final_message=cont)
        )
        batch_images.append(imgs)
    proc_kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
    if any(batch_images):
        proc_kwargs["images"] = [im for imgs in batch_images for im in imgs]
    tokenizer = getattr(processor, "tokenizer", processor)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only batch generation needs left padding
    try:
        inputs = processor(**proc_kwargs, padding_side="left")
    finally:
        tokenizer.padding_side = old_side
    inputs = inputs.to(model.device)
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "num_return_sequences": num_return_sequences,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if temperature and temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(**inputs, **gen_kwargs)
    prompt_len = inputs["input_ids"].shape[1]
    prompt_counts = inputs["attention_mask"].sum(dim=1).tolist()
    new_tokens = out[:, prompt_len:]
    eos_ids = _eos_ids(model, tokenizer)
    results: list[list[ChatCompletion]] = []
    for i in range(len(conversations)):
        row = []
        for j in range(num_return_sequences):
            seq = new_tokens[i * num_return_sequences + j].tolist()
            stop_at = next((k for k, t in enumerate(seq) if t in eos_ids), None)
            kept = seq if stop_at is None else seq[:stop_at]
            text = tokenizer.decode(kept, skip_special_tokens=False)
            row.append(
                ChatCompletion(
                    text=_strip_special(text, tokenizer),
                    prompt_tokens=int(prompt_counts[i]),
                    completion_tokens=len(kept) + (0 if stop_at is None else 1),
                    finish_reason="length" if stop_at is None else "stop",
                )
            )
        results.append(row)
    return results


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _strip_special(text: str, tokenizer: Any) -> str:
    # Keep reasoning tags such as <think> that may be registered as special tokens; drop
    # only the chat-format control tokens.
    for tok in (
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ):
        text = text.replace(tok, "")
    pad = getattr(tokenizer, "pad_token", None)
    if pad:
        text = text.replace(pad, "")
    return text
