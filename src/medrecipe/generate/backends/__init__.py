"""Backends: one async interface over an endpoint, a local model or a file of old answers.

A backend turns one ChatRequest (rendered chat messages, sampling parameters, `n`) into
one ChatResponse (completions with text, reasoning, finish reason, token usage). It does
no caching, retrying, rate limiting or cost accounting: the engine owns those. Failures
are raised as BackendError, with `retryable` saying whether trying again may help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from medrecipe.config import SamplingConfig, TeacherConfig
from medrecipe.errors import UserError

if TYPE_CHECKING:
    from medrecipe.images import ImageStore

__all__ = [
    "Backend",
    "BackendError",
    "ChatRequest",
    "ChatResponse",
    "Completion",
    "join_reasoning",
    "make_backend",
]


@dataclass
class ChatRequest:
    """One call to a backend: messages (image parts hold ImageStore refs) and sampling."""

    messages: list[dict[str, Any]]
    model: str
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    n: int = 1
    seed: int | None = None  # the seed sent with this call
    item_id: str | None = None
    sample_indices: tuple[int, ...] = (0,)


@dataclass
class Completion:
    """One choice: the trace text (reasoning joined in front), the raw reasoning, why it ended."""

    text: str | None
    reasoning: str | None = None
    finish_reason: str | None = None
    completion_tokens: int | None = None  # per choice, when the backend knows it


@dataclass
class ChatResponse:
    """All choices of one call, with the call's token usage and latency."""

    completions: list[Completion]
    prompt_tokens: int = 0
    completion_tokens: int = 0  # summed over choices
    latency_s: float = 0.0


class BackendError(Exception):
    """A failed call; `retryable` tells the engine whether to try again."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 retry_after: float | None = None, auth: bool = False,
                 unhealthy: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.auth = auth  # the endpoint rejected the credentials: stop the whole run
        # The server looks down or broken (no connection, no answer in time, a 5xx): the
        # engine's health tracking counts it against this endpoint, not against the request.
        self.unhealthy = unhealthy


@runtime_checkable
class Backend(Protocol):
    """What the engine needs from a backend."""

    name: str
    supports_n: bool

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer one request with `request.n` completions (or raise BackendError)."""
        ...

    async def aclose(self) -> None:
        """Release connections, models and files."""
        ...


def join_reasoning(content: str | None, reasoning: str | None) -> str | None:
    """The trace as one text: "<think>reasoning</think>" followed by the content."""
    if not reasoning:
        return content
    return f"<think>{reasoning}</think>{content or ''}"


def make_backend(teacher: TeacherConfig, images: ImageStore | None = None,
                 name: str = "") -> Backend:
    """Construct the backend a teacher config asks for."""
    label = name or teacher.model
    if teacher.backend == "openai_compat":
        from medrecipe.generate.backends.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(teacher, images=images, name=label)
    if teacher.backend == "transformers_local":
        from medrecipe.generate.backends.transformers_local import TransformersLocalBackend

        return TransformersLocalBackend(teacher, images=images, name=label)
    if teacher.backend == "replay":
        from medrecipe.generate.backends.replay import ReplayBackend

        return ReplayBackend(teacher, name=label)
    raise UserError(f"teacher {label!r}: unknown backend {teacher.backend!r}")
