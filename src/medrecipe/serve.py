"""`medrecipe serve`: a saved model folder behind `transformers serve` (OpenAI-compatible).

Folders that medrecipe saves (the tiny test model, SFT checkpoints, merged LoRA) have the
layout of a hub Qwen-VL checkpoint, so stock `transformers serve`, vLLM and LLaMA-Factory load
them directly on a machine with torchvision. Without torchvision, the stock processor cannot
be built (its video processor needs torchvision); this command installs medrecipe's loader
hook (`medrecipe.vlm.allow_missing_video_processor`) in the server's process and then hands
the arguments to `transformers serve` unchanged. Images and text work; videos are refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from medrecipe.errors import UserError

log = logging.getLogger("medrecipe.serve")


def _needs_layout(folder: Path) -> bool:
    """A Qwen-VL folder saved before medrecipe wrote the hub layout lacks a video entry."""
    proc = folder / "processor_config.json"
    if not proc.is_file():
        return False
    data = json.loads(proc.read_text())
    return "video_processor" not in data or not (folder / "preprocessor_config.json").is_file()


def prepare_folder(model: str) -> str | None:
    """Complete an older medrecipe folder's processor files in place (additive; weights untouched).

    Returns a line describing what was written, or None when nothing was needed.
    """
    folder = Path(model)
    if not folder.is_dir():
        return None  # a hub id: transformers resolves it from the local cache
    from medrecipe import vlm

    model_type = vlm.model_type_of(folder)
    if model_type not in vlm.OFFLINE_PROCESSORS or not _needs_layout(folder):
        return None
    processor = vlm.load_processor(folder)
    vlm.write_hub_layout(folder, processor, model_type)
    return (f"{folder}: added the processor files stock loaders read "
            "(processor_config.json video entry, preprocessor_config.json)")


def serve_args(model: str, host: str, port: int, extra: Sequence[str]) -> list[str]:
    """The `transformers serve` command line for a model, address and pass-through options."""
    return ["serve", model, "--host", host, "--port", str(port), *extra]


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000,
          extra: Sequence[str] = ()) -> None:
    """Run `transformers serve` on one model with the torchvision-free loader hook installed."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
        from transformers.cli.transformers import app
    except ImportError as exc:
        raise UserError(
            f"medrecipe serve needs transformers' serving extras ({exc.name} is missing): "
            "pip install 'medrecipe[serve]'"
        ) from exc
    from medrecipe import vlm

    if Path(model).exists() and not Path(model).is_dir():
        raise UserError(f"{model} is a file; give a model folder or a hub id")
    note = prepare_folder(model)
    if note:
        log.warning(note)
    hooked = vlm.allow_missing_video_processor()
    if hooked:
        log.warning("torchvision is not installed: the processor loads without a video "
                    "processor (images and text only)")
    app(serve_args(model, host, port, extra), standalone_mode=True)
