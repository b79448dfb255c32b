"""Constrained question writing, the code checks on written questions, and Items out.

One call per (record, category) returns either the single word `INVALID` (optionally
with `: reason`) or one JSON object:

    {"stem": ..., "options": [...], "correct": "B", "answer_format": "mcq",
     "rationale": ..., "image_scope": ..., "stem_style": "short" | "long",
     "key_finding": ...}

`parse_question` validates it against the category: the answer format must be one the
category allows (with the fixed option sets of the binary formats, 4-5 options for
multiple choice), the stem style must match the category's routing, and the correct
label must name an option. A reply that breaks any of this is a parse failure.

`check_question` then applies the checks the prompt alone cannot enforce, each its own
quarantine reason: `leakage_answer` (the correct option's text in the stem),
`leakage_key_finding` (the key finding in the stem), `duplicate_options`,
`single_plausible_option`, and for spatial items `spatial_not_positional` /
`spatial_names_finding`. The text-only probe (`probe_outcome`) drops items a text-only
model answers correctly in every one of its k samples (`text_solvable`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medrecipe.curate import ParseError
from medrecipe.curate.config import ChecksConfig
from medrecipe.curate.context import json_object, schema_problem
from medrecipe.curate.records import FigureRecord
from medrecipe.curate.taxonomy import BINARY_OPTIONS, Category
from medrecipe.schema import LETTERS, Item
from medrecipe.sources.base import norm_text, strip_option_prefix

INVALID_RE = re.compile(r"^\W*INVALID\b\W*(.*)$", re.DOTALL)


class WrittenQuestion(BaseModel):
    """A question as the writer returned it, validated against its category."""

    model_config = ConfigDict(extra="forbid")

    stem: str = Field(min_length=10)
    options: list[str] = Field(min_length=2, max_length=5)
    correct: str
    answer_format: Literal["mcq", "yes_no", "true_false", "normal_abnormal"]
    rationale: str = Field(min_length=1)
    image_scope: str = Field(min_length=1)
    stem_style: Literal["short", "long"]
    key_finding: str | None = None

    @field_validator("options")
    @classmethod
    def _clean_options(cls, v: list[str]) -> list[str]:
        out = [strip_option_prefix(str(o)) for o in v]
        if any(not o for o in out):
            raise ValueError("an option is empty")
        return out

    @field_validator("correct")
    @classmethod
    def _letter(cls, v: str) -> str:
        m = re.fullmatch(r"\s*[\(\[]?\s*([A-Za-z])\s*[\)\]\.:]?\s*", str(v))
        if not m:
            raise ValueError(f"correct must be an option letter, got {v!r}")
        return m.group(1).upper()

    @property
    def answer_index(self) -> int:
        return LETTERS.index(self.correct)

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_index]


@dataclass(frozen=True)
class Invalid:
    """The writer's explicit refusal: no valid question of this category fits the record."""

    reason: str = ""


def parse_question(text: str | None, category: Category) -> WrittenQuestion | Invalid:
    """The writer's reply: an Invalid refusal or a question valid for `category`."""
    raw = (text or "").strip()
    m = INVALID_RE.match(raw)
    if m and "{" not in raw:
        return Invalid(" ".join(m.group(1).split()))
    data = json_object(raw)
    try:
        q = WrittenQuestion.model_validate(data)
    except ValidationError as e:
        raise ParseError(f"the question does not match the schema ({schema_problem(e)})") \
            from None
    if q.answer_format not in category.formats:
        raise ParseError(f"answer_format {q.answer_format!r} is not allowed for {category.id} "
                         f"(allowed: {', '.join(category.formats)})")
    if q.answer_format in BINARY_OPTIONS:
        fixed = BINARY_OPTIONS[q.answer_format]
        if sorted(norm_text(o) for o in q.options) != sorted(norm_text(o) for o in fixed):
            raise ParseError(f"a {q.answer_format} question needs exactly the options "
                             f"{' / '.join(fixed)}")
        # Canonical spelling, in the writer's order (the correct letter keeps its meaning).
        canon = {norm_text(o): o for o in fixed}
        q = q.model_copy(update={"options": [canon[norm_text(o)] for o in q.options]})
    elif len(q.options) not in (4, 5):
        raise ParseError(f"a multiple-choice question needs 4 or 5 options, got {len(q.options)}")
    if q.answer_index >= len(q.options):
        raise ParseError(f"correct {q.correct!r} names no option (there are {len(q.options)})")
    if not category.allows_style(q.stem_style):
        raise ParseError(f"stem_style {q.stem_style!r} is not allowed for {category.id} "
                         f"({category.stem_style} only)")
    return q


# --------------------------------------------------------------------------- code checks

_STOP = frozenset("the a an of in on at to and or with for by from is are was were this that "
                  "which its their".split())
PLACEHOLDER_OPTIONS = frozenset({"none of the above", "all of the above", "none", "n/a", "na",
                                 "other", "unknown", "cannot be determined", "not applicable",
                                 "-", "?"})
POSITION_WORDS = frozenset("""
left right upper lower middle central centre center peripheral periphery anterior posterior
superior inferior medial lateral proximal distal apical apex basal base dorsal ventral
cranial caudal ipsilateral contralateral bilateral midline hilar perihilar subpleural
subcapsular cortical medullary deep superficial inner outer quadrant lobe segment zone
third half side sided aspect region pole portion margin border wall edge corner top bottom
upper-left upper-right lower-left lower-right anteromedial anterolateral posteromedial
posterolateral superolateral superomedial inferolateral inferomedial above below behind front
adjacent near between within
""".split())
def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", norm_text(text))


def _contains_phrase(haystack: str, needle: str) -> bool:
    """Whole-word containment of a normalised phrase."""
    h, n = " ".join(_words(haystack)), " ".join(_words(needle))
    return bool(n) and re.search(rf"(?<![a-z0-9]){re.escape(n)}(?![a-z0-9])", h) is not None


def leaks(stem: str, phrase: str | None, min_chars: int) -> bool:
    """True when `phrase` (or all of its content words, when it has several) is in the stem."""
    if not phrase or len(norm_text(phrase)) < min_chars:
        return False
    if _contains_phrase(stem, phrase):
        return True
    content = [w for w in _words(phrase) if w not in _STOP and len(w) > 2]
    stem_words = set(_words(stem))
    return len(content) >= 2 and all(w in stem_words for w in content)


def _plausible_options(q: WrittenQuestion, cfg: ChecksConfig) -> bool:
    """False when the set leaves one plausible option (placeholders, a long giveaway)."""
    real = [o for o in q.options if norm_text(o) not in PLACEHOLDER_OPTIONS]
    if len(real) <= 1 or q.answer_text not in real:
        return False
    if q.answer_format != "mcq":
        return True
    distractors = [o for i, o in enumerate(q.options) if i != q.answer_index]
    longest = max(len(o) for o in distractors)
    # The correct option several times longer than every distractor gives itself away.
    return not (len(q.answer_text) >= 20 and len(q.answer_text) > cfg.max_length_ratio * longest)


def positional(option: str, finding: str | None = None) -> bool:
    """True when an option names a position (left upper lobe, posterior wall, ...).

    It must hold a position word and must not name the finding itself (an option such as
    "Right-sided pneumothorax" answers a different question than "where is the finding").
    """
    words = set(_words(option))
    if not words & POSITION_WORDS:
        return False
    named = [w for w in _words(finding or "") if w not in _STOP and w not in POSITION_WORDS
             and len(w) > 3]
    return not (named and all(w in words for w in named))


def check_details(q: WrittenQuestion, category: Category, cfg: ChecksConfig,
                  planned_answer: str | None = None) -> list[tuple[str, str]]:
    """(reason, what exactly failed) for every code check a written question fails."""
    out: list[tuple[str, str]] = []
    if cfg.options:
        normed = [norm_text(o) for o in q.options]
        if len(set(normed)) != len(normed):
            dup = next(o for o, n in zip(q.options, normed, strict=True) if normed.count(n) > 1)
            out.append(("duplicate_options", f"the option {dup!r} appears more than once"))
        elif not _plausible_options(q, cfg):
            out.append(("single_plausible_option", "only the correct option is plausible "
                        "(placeholders, or it is far longer than every distractor)"))
    if cfg.leakage:
        # A binary format's options (Yes, Normal, ...) are words a stem may need.
        binary = {norm_text(o) for o in BINARY_OPTIONS.get(q.answer_format, ())}
        findings = [k for k in (q.key_finding, planned_answer) if k and norm_text(k) not in binary]
        leaked = next((k for k in findings if leaks(q.stem, k, cfg.min_leak_chars)), None)
        if q.answer_format == "mcq" and leaks(q.stem, q.answer_text, cfg.min_leak_chars):
            out.append(("leakage_answer", f"the stem contains the correct option "
                                          f"{q.answer_text!r}"))
        elif leaked is not None:
            out.append(("leakage_key_finding", f"the stem gives away the key finding {leaked!r}"))
    if cfg.positional and category.positional:
        bad = [o for o in q.options if not positional(o, q.key_finding or planned_answer)]
        if bad:
            out.append(("spatial_not_positional", f"options that are not positions: {bad}"))
        if "the finding" not in norm_text(q.stem):
            out.append(("spatial_names_finding", "a spatial stem must call it \"the finding\""))
    return out


def check_question(q: WrittenQuestion, category: Category, cfg: ChecksConfig,
                   planned_answer: str | None = None) -> list[str]:
    """Reasons a written question fails the code checks (empty: it passes)."""
    return [r for r, _ in check_details(q, category, cfg, planned_answer)]


# --------------------------------------------------------------------------- probe and items


def probe_item(candidate_id: str, q: WrittenQuestion, source: str) -> Item:
    """The question as a text-only Item (no image) for the probe template."""
    return Item(id=candidate_id, source=source, task="text", question=q.stem,
                options=list(q.options), answer=q.correct)


@dataclass(frozen=True)
class ProbeOutcome:
    """What the text-only model answered over its k samples."""

    answers: tuple[str | None, ...]
    correct: int
    failed: int

    @property
    def text_solvable(self) -> bool:
        return self.failed == 0 and len(self.answers) > 0 and self.correct == len(self.answers)


def probe_outcome(texts: Sequence[str | None], errors: Sequence[str | None],
                  q: WrittenQuestion) -> ProbeOutcome:
    """Grade the probe's samples with the project's answer extractor (never guessing)."""
    from medrecipe.answers import extract

    answers, correct, failed = [], 0, 0
    for text, err in zip(texts, errors, strict=True):
        if err:
            failed += 1
            answers.append(None)
            continue
        ans = extract(text, q.options).answer
        answers.append(ans)
        correct += ans == q.correct
    return ProbeOutcome(tuple(answers), correct, failed)


def to_item(record: FigureRecord, category: Category, q: WrittenQuestion,
            extra_meta: dict[str, Any] | None = None) -> Item:
    """The final Item: task mm_reasoning, the record's image, provenance in meta."""
    meta = {
        "record_id": record.id, "article_id": record.article_id, "figure_id": record.figure_id,
        "panel": record.panel, "license": record.license, "category": category.id,
        "category_label": category.label, "family": category.family,
        "stem_style": q.stem_style, "answer_format": q.answer_format,
        "image_scope": q.image_scope, "rationale": q.rationale, "key_finding": q.key_finding,
        "source_context": {"sub_caption": record.sub_caption, "caption": record.caption,
                           "references": list(record.references)},
        **(extra_meta or {}),
    }
    return Item(id=f"{record.id}/{category.id}", source=record.source, split="train",
                task="mm_reasoning", question=q.stem, options=list(q.options),
                answer=q.correct, images=[record.image], modality=record.modality, meta=meta)
