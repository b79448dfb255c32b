"""Scripted trace judges for the local chat server: they read the prompt and answer by keywords.

Used by the tests and by ``benchmarks/trace_judge.py`` in place of a real judge model.
They are not clever, but they really read what they are sent, so a perturbed trace moves
their answers for the right reason:

- checklist: every sentence of the reference trace becomes a unit; the section decides
  the axis (perception / interpretation -> knowledge / justification -> rationale); the
  topic is the sentence's content words before its first linking verb ("shows", "is",
  "causes", ...), the claim is the sentence.
- presence: yes when the trace contains the topic's content words (all of them, or at
  least half for the lenient judge).
- correctness: yes when one sentence of the trace contains all of the claim's content
  words (at least 75 % for the lenient judge).
- pairwise: the trace whose reasoning (final \\boxed{} answer left out) holds more of the
  correct option's words, then more distinct content words, wins; equal counts are a tie (or "1" with a position-biased judge).

``flip`` makes a judge noisy: a yes/no answer is inverted when a hash of (prompt, seed)
falls under it, which is how repeat-judge agreement is exercised without a model.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

STOPWORDS = frozenset("""
a an the and or of in on at to for with by from as is are was were be been being this that
these those it its there their which who whom whose than then so such into over under about
both each other more most less least very not no nor but also only same any all some can
may might must should would could will shall do does did done has have had having one two
taken together therefore thus hence because given since while whereas here case image
""".split())
LINKS = ("shows", "show", "showing", "is", "are", "was", "were", "causes", "cause", "indicates",
         "indicate", "suggests", "suggest", "measures", "measure", "lies", "lie", "appears",
         "appear", "has", "have", "contains", "contain", "points", "point", "means", "makes",
         "excludes", "exclude", "favours", "favors", "produces", "produce", "leads", "lead",
         "raises", "raise", "reduces", "reduce", "follows", "requires", "require", "fits", "carries",
         "occurs", "occur", "presents", "present")
_AXIS = {"perception": "perception", "interpretation": "knowledge", "knowledge": "knowledge",
         "clinical_interpretation": "knowledge", "justification": "rationale",
         "answer_justification": "rationale", "rationale": "rationale", "reference": "rationale"}

_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SENT = re.compile(r"(?<=[.!?])\s+")


def words(text: str) -> list[str]:
    """Lower-case content words (stop words dropped)."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def sentences(text: str) -> list[str]:
    """Sentences of a text (split after . ! ?)."""
    return [s.strip() for s in _SENT.split(text.strip()) if s.strip()]


def topic_of(sentence: str) -> str:
    """The content words of a sentence before its first linking verb (all of them if none)."""
    raw = _WORD.findall(sentence.lower())
    for i, w in enumerate(raw):
        if w in LINKS and i > 0:
            head = [x for x in raw[:i] if x not in STOPWORDS]
            if head:
                return " ".join(head)
    return " ".join(words(sentence)[:3])


def _block(text: str, tag: str) -> str | None:
    m = re.search(rf"<{tag}>\n?(.*?)\n?</{tag}>", text, re.DOTALL)
    return m.group(1) if m else None


def user_text(body: dict[str, Any]) -> str:
    """All user-message text of a chat request."""
    out = []
    for m in body.get("messages", []):
        if m.get("role") != "user":
            continue
        c = m.get("content")
        out += [c] if isinstance(c, str) else [p.get("text", "") for p in c if p.get("type") == "text"]
    return "\n".join(out)


def _hash01(*parts: Any) -> float:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64


def checklist_reply(text: str) -> str:
    """A checklist JSON built from the <reference_trace> sections of a checklist prompt."""
    units = []
    for name, body in re.findall(r'<section name="([^"]+)">\n(.*?)\n</section>', text, re.DOTALL):
        axis = _AXIS.get(name, "rationale")
        for s in sentences(body):
            units.append({"axis": axis, "topic": topic_of(s), "claim": s})
    return json.dumps({"units": units})


def present(trace: str, topic: str, lenient: bool = False) -> bool:
    """Whether the trace contains the topic's content words."""
    have = set(words(trace))
    need = words(topic)
    hits = sum(w in have for w in need)
    return bool(need) and (hits * 2 >= len(need) if lenient else hits == len(need))


def correct(trace: str, claim: str, lenient: bool = False) -> bool:
    """Whether one sentence of the trace carries the claim's content words."""
    need = set(words(claim))
    if not need:
        return False
    best = max((len(need & set(words(s))) for s in sentences(trace)), default=0)
    return best >= 0.75 * len(need) if lenient else best == len(need)


def _pairwise(text: str, position_bias: bool) -> str:
    m = re.search(r"Correct answer: [A-Z]\. (.*)", text)
    key = set(words(m.group(1))) if m else set()

    def quality(trace: str) -> tuple[int, int]:
        # the reasoning counts, not the final letter or the tags around it
        ws = words(re.sub(r"\\boxed\{[^}]*\}|</?think>", " ", trace))
        return (sum(w in key for w in set(ws)), len(set(ws)))

    q1, q2 = quality(_block(text, "trace_1") or ""), quality(_block(text, "trace_2") or "")
    if q1 == q2:
        return "1" if position_bias else "tie"
    return "1" if q1 > q2 else "2"


def keyword_judge(*, lenient: bool = False, flip: float = 0.0, position_bias: bool = False,
                  garble: Callable[[str], bool] | None = None) -> Callable[[dict[str, Any], int], str]:
    """A chat-server responder that answers checklist, probe and pairwise prompts by keywords.

    `garble(prompt_text)` returning True makes that reply unparseable (to test counting).
    """

    def respond(body: dict[str, Any], index: int) -> str:
        text = user_text(body)
        if garble is not None and garble(text):
            return "I would say probably yes, more or less."
        if "<reference_trace>" in text:
            return checklist_reply(text)
        if "<trace_1>" in text:
            winner = _pairwise(text, position_bias)
            return json.dumps({"winner": winner, "reason": "more of the key evidence"})
        trace = _block(text, "trace") or ""
        topic = _block(text, "topic") or ""
        claim = _block(text, "claim") or ""
        if "state the unit's claim accurately" in text:
            verdict = correct(trace, claim, lenient)
        else:
            verdict = present(trace, topic, lenient)
        if flip and _hash01(text, body.get("seed")) < flip:
            verdict = not verdict
        return json.dumps({"answer": "yes" if verdict else "no",
                           "reason": "keywords found" if verdict else "keywords missing"})

    return respond


__all__ = ["keyword_judge", "checklist_reply", "present", "correct", "topic_of", "words",
           "sentences", "user_text"]
