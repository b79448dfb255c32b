"""A local Hugging Face VLM or LLM run in-process (transformers), behind the backend interface.

The model loads on the first call (`medrecipe.vlm.load_model_and_processor`, which handles
Qwen-VL processors without torchvision). Calls run one at a time in a worker thread so the
event loop stays responsive; `n` maps to `num_return_sequences`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from medrecipe.config import TeacherConfig
from medrecipe.errors import UserError
from medrecipe.generate.backends import BackendError, ChatRequest, ChatResponse, Completion

if TYPE_CHECKING:
    from medrecipe.images import ImageStore


class TransformersLocalBackend:
    """Generation with a local transformers model (`TeacherConfig.model` is its path or id)."""

    name = "transformers_local"
    supports_n = True

    def __init__(self, teacher: TeacherConfig, images: ImageStore | None = None,
                 name: str = ""):
        self.teacher = teacher
        self.label = name or teacher.model
        self.images = images
        self._model: Any = None
        self._processor: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"TransformersLocalBackend(model={self.teacher.model!r})"

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            from medrecipe.vlm import load_model_and_processor
        except ImportError as e:
            raise UserError(f"teacher {self.label!r} uses transformers_local, which needs the "
                            f"training extras (pip install 'medrecipe[train]'): {e}") from None
        self._model, self._processor = load_model_and_processor(
            self.teacher.model, device=self.teacher.device, dtype=self.teacher.dtype)

    def _with_pixels(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for p in content:
                    if p.get("type") == "image" and isinstance(p.get("image"), str):
                        if self.images is None:
                            raise BackendError("image parts need an image store, and none was "
                                               "given", retryable=False)
                        try:
                            parts.append({"type": "image", "image": self.images.open(p["image"])})
                        except Exception as e:  # noqa: BLE001 - fails this sample only
                            raise BackendError(f"image {p['image']}: {e}",
                                               retryable=False) from None
                    else:
                        parts.append(p)
                content = parts
            out.append({**m, "content": content})
        return out

    def _generate(self, request: ChatRequest) -> ChatResponse:
        from medrecipe.vlm import generate_chat

        self._load()
        t0 = time.perf_counter()
        s = request.sampling
        greedy = not s.temperature or s.temperature <= 0
        # Greedy decoding gives one answer however often it is asked; generate it once.
        k = 1 if greedy else request.n
        try:
            rows = generate_chat(self._model, self._processor,
                                 [self._with_pixels(request.messages)],
                                 max_new_tokens=s.max_tokens, temperature=s.temperature,
                                 top_p=s.top_p, num_return_sequences=k, seed=request.seed)
        except BackendError:
            raise
        except Exception as e:  # noqa: BLE001 - a model error fails these samples, not the run
            raise BackendError(f"local generation failed: {type(e).__name__}: {e}",
                               retryable=False) from None
        outs = rows[0] * request.n if greedy else rows[0]
        completions = [Completion(text=o.text, reasoning=None, finish_reason=o.finish_reason,
                                  completion_tokens=o.completion_tokens) for o in outs]
        return ChatResponse(completions=completions,
                            prompt_tokens=outs[0].prompt_tokens if outs else 0,
                            completion_tokens=sum(o.completion_tokens for o in outs),
                            latency_s=time.perf_counter() - t0)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Generate `request.n` completions with the local model."""
        async with self._lock:
            return await asyncio.to_thread(self._generate, request)

    async def aclose(self) -> None:
        """Drop the model."""
        self._model = None
        self._processor = None
