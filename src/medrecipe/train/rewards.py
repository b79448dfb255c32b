"""GRPO rewards: a format reward (think block, then answer block) and exact-match correctness.

Format, scored on the completion text:

- 1.0 for exactly one ``<think>...</think>`` followed by exactly one ``<answer>...</answer>``,
  both non-empty, with only whitespace around them; 0.0 for anything else;
- minus penalties for the failure modes GRPO tends to discover: each repeated tag
  (``repeated``, per extra occurrence), an opening tag without a later closing tag or a
  closing tag without an earlier opening one (``unclosed``), and an answer block that
  starts before the thinking block (``answer_first``). The total is floored at ``floor``.

Correctness reads the answer block and gives credit only when there is no doubt: 1.0 when
the completion's thinking closed, it has exactly one ``<answer>...</answer>`` after it,
the block's content is read by the recipe's extractor (``medrecipe.answers.extract``, so
a letter with the text of another option, "B: Tumor" when B is Stroma, is no answer),
no other final answer sits beside the block (a ``\boxed{}`` outside it that says something
else), and the answer equals the gold exactly: the same option letter, or the same
normalised open answer ("not sure" is not "no", "no fracture" is not "no"). Anything else
is 0.0: no partial credit, no fallback to reading the reasoning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

_WELL_FORMED = re.compile(
    r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL
)


@dataclass(frozen=True)
class FormatWeights:
    """Scores and penalties of the format reward."""

    well_formed: float = 1.0
    repeated: float = 0.25
    unclosed: float = 0.5
    answer_first: float = 0.5
    floor: float = -1.0


@dataclass
class FormatCheck:
    """The format verdict for one completion."""

    score: float
    well_formed: bool
    problems: list[str] = field(default_factory=list)


def check_format(
    text: str, weights: FormatWeights = FormatWeights(), think_in_prompt: bool = False
) -> FormatCheck:
    """Score a completion's think/answer structure (see the module docstring)."""
    if think_in_prompt and not text.lstrip().startswith(THINK_OPEN):
        # The generation prompt already opened the thinking block.
        text = THINK_OPEN + text
    counts = {tag: text.count(tag) for tag in TAGS}
    problems: list[str] = []
    penalty = 0.0
    for tag, n in counts.items():
        if n > 1:
            problems.append(f"repeated {tag} x{n}")
            penalty += weights.repeated * (n - 1)
    for open_tag, close_tag in ((THINK_OPEN, THINK_CLOSE), (ANSWER_OPEN, ANSWER_CLOSE)):
        o, c = text.find(open_tag), text.find(close_tag)
        if o >= 0 and text.find(close_tag, o + len(open_tag)) < 0:
            problems.append(f"unclosed {open_tag}")
            penalty += weights.unclosed
        elif c >= 0 and (o < 0 or c < o):
            problems.append(f"{close_tag} without {open_tag} before it")
            penalty += weights.unclosed
    a, t = text.find(ANSWER_OPEN), text.find(THINK_OPEN)
    if a >= 0 and t >= 0 and a < t:
        problems.append("answer before thinking")
        penalty += weights.answer_first
    match = _WELL_FORMED.fullmatch(text)
    well_formed = (
        match is not None
        and all(n == 1 for n in counts.values())
        and bool(match.group("think").strip())
        and bool(match.group("answer").strip())
    )
    if match is None and not problems:
        problems.append("not exactly one <think> block then one <answer> block")
    elif match is not None and not well_formed and not problems:
        problems.append("empty <think> or <answer> block")
    score = (weights.well_formed if well_formed else 0.0) - penalty
    return FormatCheck(score=max(weights.floor, score), well_formed=well_formed, problems=problems)


def format_score(text: str, think_in_prompt: bool = False) -> float:
    """Format reward of one completion with the default weights."""
    return check_format(text, think_in_prompt=think_in_prompt).score


_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def correctness_score(text: str, item: Any, think_in_prompt: bool = False) -> float:
    """1.0 when the completion's answer block holds exactly the gold answer (see module doc), else 0.0."""
    from medrecipe.answers import extract, normalize_open

    if think_in_prompt and not text.lstrip().startswith(THINK_OPEN):
        text = THINK_OPEN + text
    options = list(item.options) or None
    if not extract(text, options).terminated:
        return 0.0
    after = text[text.rfind(THINK_CLOSE) + len(THINK_CLOSE):] if THINK_CLOSE in text else text
    blocks = list(_ANSWER_BLOCK.finditer(after))
    if len(blocks) != 1:
        return 0.0  # no answer block, or several: which one counts is in doubt
    ex = extract(blocks[0].group(1), options)
    if ex.answer is None:
        return 0.0
    outside = after[: blocks[0].start()] + after[blocks[0].end():]
    if outside.strip():
        other = extract(outside, options)
        if other.answer != ex.answer and (other.answer is not None or "\\boxed" in outside):
            return 0.0  # \boxed{B} beside <answer>C</answer>: two final answers
    gold = str(item.answer or "").strip()
    if not gold:
        return 0.0
    if options:
        return 1.0 if ex.answer == gold.upper() else 0.0
    return 1.0 if normalize_open(ex.answer) == normalize_open(gold) else 0.0


# --------------------------------------------------------------------------- TRL adapters


def completion_text(completion: Any) -> str:
    """Text of one TRL completion (plain string or a list of chat messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        parts = []
        for msg in completion:
            content = msg.get("content") if isinstance(msg, dict) else msg
            if isinstance(content, list):
                parts.extend(p.get("text") or "" for p in content if isinstance(p, dict))
            else:
                parts.append(str(content or ""))
        return "".join(parts)
    return str(completion)


def item_from_columns(index: int, columns: dict[str, Any]):
    """Build the Item the grader needs from the dataset columns TRL passes to rewards."""
    from medrecipe.schema import Item

    def col(name: str, default: Any = None) -> Any:
        values = columns.get(name)
        if values is None:
            return default
        value = values[index]
        return default if value is None else value

    options = list(col("options", []) or [])
    answer = col("answer")
    if answer is None:
        raise KeyError("the GRPO dataset has no 'answer' column")
    task = col("task") or ("mm_reasoning" if options else "open_vqa")
    return Item(
        id=str(col("item_id") or col("id") or f"row{index}"),
        source=str(col("source") or "grpo"),
        task=task,
        question=str(col("question") or "(question)"),
        options=options,
        answer=str(answer),
    )


def make_reward_functions(
    think_in_prompt: bool = False, weights: FormatWeights = FormatWeights()
) -> list[Callable[..., list[float]]]:
    """The two TRL reward functions: [format_reward, correctness_reward]."""

    def format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
        return [
            check_format(completion_text(c), weights, think_in_prompt).score for c in completions
        ]

    cache: dict[tuple, Any] = {}

    def correctness_reward(completions: Sequence[Any], **columns: Any) -> list[float]:
        scores = []
        for i, c in enumerate(completions):
            key = tuple(
                _hashable(columns.get(k, [None] * (i + 1))[i])
                for k in ("item_id", "answer", "options", "task")
            )
            item = cache.get(key)
            if item is None:
                item = cache[key] = item_from_columns(i, columns)
            scores.append(correctness_score(completion_text(c), item, think_in_prompt))
        return scores

    return [format_reward, correctness_reward]


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
