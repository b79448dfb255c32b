"""Presence and correctness probes: a judge reads a candidate trace against one checklist unit.

Two separate questions per unit: *presence* (does the trace engage with the unit's topic,
whatever it concludes) and, only for units judged present, *correctness* (does it state
the claim accurately). Each reply must be exactly ``{"answer": "yes" | "no", "reason":
"..."}``; anything else is unparsed, counted, and never credited (an unparsed presence
probe means not present; an unparsed correctness probe means not correct).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medrecipe.evaluate.checklist import ItemChecklist
from medrecipe.evaluate.judging import (
    JudgeClient,
    clip_text,
    parse_json_reply,
    reply_text,
    without_images,
)
from medrecipe.schema import Item


class ProbeReply(BaseModel):
    """A probe's reply: yes or no with a short reason."""

    model_config = ConfigDict(extra="forbid")

    answer: Literal["yes", "no"]
    reason: str = Field(min_length=1, max_length=1000)


@dataclass
class ProbeResult:
    """Both probes of one unit on one trace."""

    axis: str
    present: bool | None = None  # None: not parsed (or the request failed)
    correct: bool | None = None  # None: not asked, not parsed or failed
    presence_status: str = "ok"  # ok | unparsed | failed | no_trace
    correctness_status: str = "not_asked"  # ok | unparsed | failed | not_asked
    presence_reason: str | None = None
    correctness_reason: str | None = None

    def unit(self) -> tuple[str, bool, bool | None]:
        """The (axis, present, correct) triple `score_trace` reads; unparsed is never credited."""
        return (self.axis, self.present is True, self.correct if self.present is True else None)


@dataclass
class Trace:
    """A candidate trace to judge: a routing id, its item, and its text (None: no response)."""

    route: str
    item: Item
    text: str | None


def _read(gen: Any) -> tuple[str, ProbeReply | None, str | None]:
    text = reply_text(gen)
    if text is None:
        return "failed", None, None
    parsed = parse_json_reply(text, ProbeReply)
    if parsed is None:
        return "unparsed", None, text[:300]
    return "ok", parsed, parsed.reason


def probe_traces(judge: JudgeClient, traces: Sequence[Trace],
                 checklists: Mapping[str, ItemChecklist], *, presence_template: Any,
                 correctness_template: Any, max_tokens: int = 256,
                 max_trace_chars: int = 30_000, seed: int | None = None,
                 ) -> tuple[dict[str, list[ProbeResult]], Counter]:
    """Probe results per trace route (one per checklist unit, in checklist order) and counts."""
    counts: Counter = Counter()
    results: dict[str, list[ProbeResult]] = {}
    asks: list[tuple[str, int, Item, str, Any]] = []  # (route, unit index, item, trace, unit)
    for tr in traces:
        cl = checklists.get(tr.item.id)
        if cl is None:
            continue
        results[tr.route] = [ProbeResult(axis=u.axis) for u in cl.units]
        if tr.text is None or not tr.text.strip():
            counts["no_trace"] += 1
            for r in results[tr.route]:
                r.presence_status = "no_trace"
            continue
        text = clip_text(tr.text, max_trace_chars)
        counts["clipped"] += text != tr.text
        for k, u in enumerate(cl.units):
            asks.append((tr.route, k, tr.item, text, u))

    sampling = judge.sampling(max_tokens=max_tokens, schema=("probe", ProbeReply), seed=seed)

    def ask(probe: str, template: Any, todo: list[tuple[str, int, Item, str, Any]]) -> list:
        """Ask one probe for every (trace, unit) in `todo`; returns those answered yes."""
        prompts = [(f"{route}#u{k}#{probe}",
                    template.render(without_images(item), trace=text, axis=u.axis,
                                    topic=u.topic, claim=u.claim))
                   for route, k, item, text, u in todo]
        yes = []
        for job, gen in zip(todo, judge.ask(prompts, template=template, sampling=sampling),
                            strict=True):
            status, reply, reason = _read(gen)
            r = results[job[0]][job[1]]
            setattr(r, f"{probe}_status", status)
            setattr(r, f"{probe}_reason", reason)
            counts[f"{probe}_{status}"] += 1
            if reply is not None:
                setattr(r, "present" if probe == "presence" else "correct", reply.answer == "yes")
                if reply.answer == "yes":
                    yes.append(job)
        return yes

    # Correctness is asked only of the units the presence probe found in the trace.
    ask("correctness", correctness_template, ask("presence", presence_template, asks))
    return results, counts


__all__ = ["ProbeReply", "ProbeResult", "Trace", "probe_traces"]
