"""Teacher generation: backends, the engine (cache, flow control, cost) and the generate stage."""

from medrecipe.generate.backends import (
    Backend,
    BackendError,
    ChatRequest,
    ChatResponse,
    Completion,
    make_backend,
)
from medrecipe.generate.cache import RequestCache, request_key
from medrecipe.generate.engine import Engine, EngineResult, GenRequest, request_for
from medrecipe.generate.stage import build_requests, generate_stage, route

__all__ = [
    "Backend",
    "BackendError",
    "ChatRequest",
    "ChatResponse",
    "Completion",
    "Engine",
    "EngineResult",
    "GenRequest",
    "RequestCache",
    "build_requests",
    "generate_stage",
    "make_backend",
    "request_for",
    "request_key",
    "route",
]
