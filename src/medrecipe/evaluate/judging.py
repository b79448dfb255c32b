"""A judge model on the generation engine, for the trace benchmark's checklist, probes and pairs.

Every judgement is a teacher call on the same engine the teachers use (cache, limits,
retries, cost, budget). Identical prompts within a batch share one request. Replies are
parsed strictly against a pydantic schema: a reply that does not parse is None (counted
by the caller), never a default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from medrecipe.config import SamplingConfig, TeacherConfig
from medrecipe.schema import Generation, Item

M = TypeVar("M", bound=BaseModel)

JUDGE = "trace_judge"
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


def parse_json_reply(text: str | None, model: type[M]) -> M | None:
    """The reply as `model` when it is exactly one JSON object of that schema (a code fence around it is allowed)."""
    if not text:
        return None
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None


def json_schema_format(name: str, model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAI `response_format` asking for JSON that follows `model`'s schema."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": model.model_json_schema()}}


def without_images(item: Item) -> Item:
    """A copy of `item` without images: the trace judges read text only (and cost less)."""
    return item.model_copy(update={"images": []}) if item.images else item


@dataclass
class JudgeTally:
    """What the judge calls cost, summed over batches."""

    requests_sent: int = 0
    cached: int = 0
    failures: int = 0
    spend_usd: float = 0.0
    not_launched: int = 0
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class JudgeClient:
    """Sends rendered judge prompts through the engine and returns one generation per prompt."""

    def __init__(self, cfg: TeacherConfig, cache: str | Path, *, seed: int = 0,
                 max_tokens: int = 1024, json_mode: bool = True, progress: bool | None = None,
                 backends: Mapping[str, Any] | None = None, budget_usd: float | None = None,
                 name: str = JUDGE):
        from medrecipe.generate import Engine

        self.cfg = cfg
        self.name = name
        self.seed = seed
        self.max_tokens = max_tokens
        self.json_mode = json_mode
        self.tally = JudgeTally()
        self.engine = Engine({name: cfg}, cache=cache, budget_usd=budget_usd, progress=progress,
                             backends={k: v for k, v in (backends or {}).items() if k == name},
                             description="trace judge")

    def sampling(self, max_tokens: int | None = None, schema: tuple[str, type[BaseModel]] | None = None,
                 seed: int | None = None) -> SamplingConfig:
        """Greedy, short, seeded sampling (a JSON schema asked for when json_mode is on)."""
        extra = {"response_format": json_schema_format(*schema)} if schema and self.json_mode else {}
        return SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=max_tokens or self.max_tokens,
                              seed=self.seed if seed is None else seed, extra=extra)

    def ask(self, prompts: Sequence[tuple[str, list[dict[str, Any]]]], *, template: Any,
            sampling: SamplingConfig, source: str = "") -> list[Generation | None]:
        """Generations for (routing id, messages) prompts, in order; None where none came back."""
        from medrecipe.generate import GenRequest, request_key
        from medrecipe.prompts import image_refs

        keys: list[str] = []
        requests = []
        seen: set[str] = set()
        for route, messages in prompts:
            k = request_key(self.cfg.backend, self.cfg.model, sampling, messages,
                            image_refs(messages), 0)
            keys.append(k)
            if k in seen:
                continue
            seen.add(k)
            requests.append(GenRequest(item_id=route, teacher=self.name, messages=messages, n=1,
                                       source=source, template=template.name,
                                       template_hash=template.hash, sampling=sampling))
        if not requests:
            return []
        res = self.engine.run(requests)
        t = self.tally
        t.requests_sent += res.requests_sent
        t.cached += res.cached
        t.failures += res.failures
        t.spend_usd += res.spend_usd
        t.not_launched += res.not_launched
        t.complete = t.complete and res.complete
        by_key = {g.key: g for g in res.generations}
        return [by_key.get(k) for k in keys]


def clip_text(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, keeping its opening (findings) and ending (conclusion)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n[...]\n" + text[-half:]


def reply_text(gen: Generation | None) -> str | None:
    """The answer part of a judge generation, None when it failed or never came back."""
    if gen is None or gen.error or gen.text is None:
        return None
    # A reasoning judge's thinking (joined in front by the engine) is not part of its verdict.
    return gen.text.rsplit("</think>", 1)[-1]


__all__ = ["JUDGE", "JudgeClient", "JudgeTally", "clip_text", "json_schema_format", "parse_json_reply",
           "reply_text", "without_images"]
