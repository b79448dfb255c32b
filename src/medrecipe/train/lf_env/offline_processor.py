"""Let a LLaMA-Factory environment without torchvision load Qwen-VL processors (images only).

transformers 5.x builds every Qwen2-VL / Qwen2.5-VL / Qwen3-VL processor with a video
processor, and video processors need torchvision. Where torchvision cannot be imported,
``install()`` makes ``AutoProcessor`` build these processors without one, so image and text
training works; videos then fail loudly. Where torchvision imports, nothing is changed.

This file runs inside the LLaMA-Factory environment and imports nothing from medrecipe.
"""

from __future__ import annotations

import importlib

# processor class name -> (module, class) of the transformers processors patched here
_QWEN_VL = {
    "Qwen2VLProcessor": "transformers.models.qwen2_vl",
    "Qwen2_5_VLProcessor": "transformers.models.qwen2_5_vl",
    "Qwen3VLProcessor": "transformers.models.qwen3_vl",
}


def torchvision_works() -> bool:
    """True when torchvision imports (an installed but broken build counts as missing)."""
    try:
        importlib.import_module("torchvision")
    except Exception:
        return False
    return True


def _without_video(base: type) -> type:
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template,
                      **kwargs)

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__})


_INSTALLED: list[str] = []


def install(classes: dict[str, type] | None = None) -> list[str]:
    """Patch AutoProcessor where torchvision is missing; returns the processor names patched.

    ``classes`` maps stock processor names to replacements (medrecipe passes its own
    ``Offline*`` classes, which also save the hub layout); by default each stock class gets
    a subclass without a video processor. A second call changes nothing.
    """
    if _INSTALLED or torchvision_works():
        return list(_INSTALLED)
    from transformers.models.auto import processing_auto

    offline: dict[str, type] = dict(classes or {})
    for name, module in _QWEN_VL.items():
        if name in offline:
            continue
        try:
            base = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        offline[name] = _without_video(base)
    stock = processing_auto.processor_class_from_name

    def processor_class_from_name(class_name: str):
        return offline.get(class_name) or stock(class_name)

    processing_auto.processor_class_from_name = processor_class_from_name
    for name, module in _QWEN_VL.items():  # folders without processor_class: by model type
        if name not in offline:
            continue
        config_name = name.replace("Processor", "Config")
        config = getattr(importlib.import_module(module), config_name, None)
        if config is not None:
            processing_auto.AutoProcessor.register(config, offline[name], exist_ok=True)
    _INSTALLED.extend(sorted(offline))
    return list(_INSTALLED)
