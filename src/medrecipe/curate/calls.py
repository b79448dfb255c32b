"""Model calls of the curation steps: cached engine requests whose replies must parse.

`ask(...)` sends one prompt per key through the generation Engine (cache, limits, retries
on transport errors, cost, budget) and parses every reply with the step's parser
(`parse(key, text)`, raising ParseError). A reply
that does not parse is re-asked as a new sample of the same request (sample index 1, 2, ...,
each cached on its own), up to `parse_retries` times; if none parses, the key ends as
`unparsed` with the parser's message. It is never treated as a pass.

Outcomes per key: `ok` (value parsed), `unparsed`, `failed` (the request failed after the
engine's retries; a later run tries again), `pending` (not sent: the budget ran out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrecipe.config import SamplingConfig, TeacherConfig
from medrecipe.console import progress_enabled
from medrecipe.curate import ParseError
from medrecipe.generate import Engine, GenRequest
from medrecipe.generate.budget import Budget
from medrecipe.images import ImageStore
from medrecipe.prompts import PromptTemplate
from medrecipe.schema import Generation


@dataclass
class Prompt:
    """One prompt to send: a routing key (also the replay item id) and rendered messages."""

    key: str
    messages: list[dict[str, Any]]


@dataclass
class Reply:
    """What became of one prompt: the parsed value, or why there is none."""

    key: str
    status: str  # ok | unparsed | failed | pending
    value: Any = None
    text: str | None = None  # the last raw reply
    error: str | None = None  # parse message or request error
    attempts: int = 0  # replies received (parsed or not)
    generations: list[Generation] = field(default_factory=list)  # every sample used


@dataclass
class AskResult:
    """Replies by key plus what the calls cost and whether every prompt got an answer."""

    replies: dict[str, Reply]
    spend_usd: float = 0.0
    requests_sent: int = 0
    cached: int = 0
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        """True when nothing failed or waits for budget (unparsed replies are final)."""
        return all(r.status in ("ok", "unparsed") for r in self.replies.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.replies.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out


@dataclass
class Caller:
    """Everything a step needs to send its prompts: teachers, cache, images, budget."""

    teachers: Mapping[str, TeacherConfig]
    cache_dir: str | Path
    images: ImageStore | None
    budget: Budget = field(default_factory=Budget)
    progress: bool | None = None
    backends: Mapping[str, Any] | None = None  # test hook: backend objects per teacher

    def _run(self, reqs: list[GenRequest], teacher: str, description: str,
             result: AskResult) -> list[Generation]:
        engine = Engine({teacher: self.teachers[teacher]}, self.cache_dir, images=self.images,
                        budget_usd=self.budget.remaining(),
                        progress=progress_enabled(self.progress),
                        backends={teacher: self.backends[teacher]}
                        if self.backends and teacher in self.backends else None,
                        description=description)
        res = engine.run(reqs)
        self.budget.spent(res.spend_usd)
        result.spend_usd += res.spend_usd
        result.requests_sent += res.requests_sent
        result.cached += res.cached
        result.stopped = result.stopped or res.stopped
        return res.generations

    def ask(self, prompts: Sequence[Prompt], teacher: str, template: PromptTemplate,
            parse: Callable[[str, str | None], Any], sampling: SamplingConfig,
            parse_retries: int = 0, description: str = "curate") -> AskResult:
        """Send every prompt, re-asking unparseable replies as new samples (see module doc)."""
        replies = {p.key: Reply(p.key, "pending") for p in prompts}
        result = AskResult(replies)
        todo = list(prompts)
        for attempt in range(parse_retries + 1):
            if not todo:
                break
            # n = attempt + 1: samples 0..attempt-1 are the cached earlier replies, only the
            # newest sample is fetched.
            reqs = [GenRequest(item_id=p.key, teacher=teacher, messages=p.messages,
                               n=attempt + 1, template=template.name,
                               template_hash=template.hash, sampling=sampling) for p in todo]
            label = description if attempt == 0 else f"{description} (re-ask {attempt})"
            gens = self._run(reqs, teacher, label, result)
            newest = {g.item_id: g for g in gens if g.sample_index == attempt}
            retry: list[Prompt] = []
            for p in todo:
                reply = replies[p.key]
                g = newest.get(p.key)
                if g is None:  # not launched: the budget stopped new calls
                    reply.status = "pending"
                    continue
                reply.generations.append(g)
                if g.error:
                    reply.status, reply.error = "failed", g.error
                    continue
                reply.attempts += 1
                reply.text = g.text
                try:
                    reply.value = parse(p.key, g.text)
                except ParseError as e:
                    reply.status, reply.error = "unparsed", str(e)
                    retry.append(p)
                    continue
                reply.status, reply.error = "ok", None
            todo = retry
        return result

    def sample(self, prompts: Sequence[Prompt], teacher: str, template: PromptTemplate,
               sampling: SamplingConfig, n: int, description: str = "curate") -> AskResult:
        """n samples per prompt; a reply's `generations` holds them, sorted by sample index."""
        result = AskResult({p.key: Reply(p.key, "pending") for p in prompts})
        reqs = [GenRequest(item_id=p.key, teacher=teacher, messages=p.messages, n=n,
                           template=template.name, template_hash=template.hash,
                           sampling=sampling) for p in prompts]
        for g in self._run(reqs, teacher, description, result):
            result.replies[g.item_id].generations.append(g)
        for reply in result.replies.values():
            reply.generations.sort(key=lambda g: g.sample_index)
            errors = [g.error for g in reply.generations if g.error]
            if len(reply.generations) < n:
                reply.status = "pending"
            elif errors:
                reply.status, reply.error = "failed", errors[0]
            else:
                reply.status = "ok"
            reply.attempts = sum(1 for g in reply.generations if not g.error)
        return result
