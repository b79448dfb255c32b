"""Text and context judge: is a record's text good enough, clinical, aligned and reasonable?

Two parts, run in this order:

1. `english_check` (no model): the record's texts must be English. Texts with few Latin
   letters (other scripts), or with more function words of other languages than English
   ones, are rejected as `non_english`; short or telegraphic texts with no evidence either
   way are undetermined and pass on to the judge.
2. The judge model reads the sub-caption, caption, in-text references (and the image when
   the step sends it) and returns, for each of the four criteria, a verdict (`pass` /
   `fail`) and a one-sentence reason, as one JSON object:

       {"textual_adequacy": {"verdict": "pass", "reason": "..."},
        "clinical_relevance": {...}, "image_text_alignment": {...},
        "reasoning_readiness": {...}}

   The reply is validated against that schema (`parse_context_verdict`); anything else is
   a parse failure, re-asked and finally counted as `judge_unparsed`, never a pass. A
   record is kept only when every criterion passes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medrecipe.curate import ParseError
from medrecipe.curate.config import EnglishConfig

CRITERIA: tuple[str, ...] = ("textual_adequacy", "clinical_relevance", "image_text_alignment",
                             "reasoning_readiness")

# --------------------------------------------------------------------------- English check

_EN = frozenset("""
the of and a an in to with is are was were be been being by for on at as from that this these
those which who whose whom or not no nor after before between into onto within without its it
their there than then has have had showing shows shown also both each other such may can
could should would under over during while where when how what than more most less least
very only same another above below about against among upon via per whereas although because
""".split())
# Common function words of other languages written in Latin script (Spanish, Portuguese,
# French, Italian, German, Dutch, Indonesian), minus any that are also English words.
_FOREIGN = frozenset("""
el la los las del y en con por para una un es se que muestra imagen paciente lesión
o os as do da dos das e em com uma um no na nos nas foi são pelo pela
le les des du et avec une est dans sur pour par au aux ces sont été
il lo gli di della delle dello e con nel nella per sono è
der die das und mit von ein eine ist im den dem zu nach bei nicht wird sich auf
het een en van met op zijn wordt niet
dan yang dengan dari pada untuk ini itu adalah
""".split()) - _EN
_FOREIGN = frozenset(w for w in _FOREIGN if len(w) > 1)  # "e", "o", "y" also appear in labels
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


@dataclass(frozen=True)
class LanguageCheck:
    """The model-free language verdict of one record's texts."""

    language: Literal["en", "other", "undetermined"]
    words: int
    english_share: float  # English function words / words
    foreign_share: float  # non-English function words / words
    latin_share: float  # ASCII letters / letters

    @property
    def passed(self) -> bool:
        return self.language != "other"


def english_check(texts: Iterable[str | None], config: EnglishConfig | None = None
                  ) -> LanguageCheck:
    """English or not, from letter scripts and function-word shares (no model)."""
    cfg = config or EnglishConfig()
    text = " ".join(t for t in texts if t)
    letters = [c for c in text if c.isalpha()]
    latin = sum(1 for c in letters if c.isascii()) / len(letters) if letters else 1.0
    words = [w.lower() for w in _WORD.findall(text)]
    n = len(words)
    en = sum(1 for w in words if w in _EN) / n if n else 0.0
    fo = sum(1 for w in words if w in _FOREIGN) / n if n else 0.0
    if letters and latin < cfg.min_ascii_letters:
        lang = "other"  # another script
    elif n < cfg.min_words:
        lang = "undetermined"
    elif fo > en and fo >= cfg.min_function_words:
        lang = "other"  # positive evidence of another language
    elif en >= cfg.min_function_words:
        lang = "en"
    else:
        lang = "undetermined"  # telegraphic text with no function words either way
    return LanguageCheck(lang, n, round(en, 4), round(fo, 4), round(latin, 4))


# --------------------------------------------------------------------------- judge replies


class CriterionVerdict(BaseModel):
    """One criterion's verdict with its one-sentence reason."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["pass", "fail"]
    reason: str = Field(min_length=1, max_length=400)

    @field_validator("reason")
    @classmethod
    def _one_sentence(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("the reason is empty")
        if "\n" in v:
            raise ValueError("the reason must be one sentence on one line")
        return v


class VerdictSet(BaseModel):
    """A judge's reply of one verdict per criterion; subclasses declare the criteria."""

    model_config = ConfigDict(extra="forbid")
    criteria: ClassVar[tuple[str, ...]] = ()

    def failed(self) -> list[str]:
        """Criteria that did not pass, in the declared order."""
        return [c for c in self.criteria if getattr(self, c).verdict != "pass"]


class ContextVerdict(VerdictSet):
    """The context judge's reply: one verdict per criterion, nothing else."""

    criteria: ClassVar[tuple[str, ...]] = CRITERIA
    textual_adequacy: CriterionVerdict
    clinical_relevance: CriterionVerdict
    image_text_alignment: CriterionVerdict
    reasoning_readiness: CriterionVerdict


def verdict_json_schema(criteria: Sequence[str], name: str) -> dict[str, Any]:
    """A per-criterion verdict reply as an OpenAI-style response_format JSON schema."""
    crit = {"type": "object", "additionalProperties": False, "required": ["verdict", "reason"],
            "properties": {"verdict": {"type": "string", "enum": ["pass", "fail"]},
                           "reason": {"type": "string"}}}
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True,
            "schema": {"type": "object", "additionalProperties": False,
                       "required": list(criteria),
                       "properties": {c: crit for c in criteria}}}}


def json_schema() -> dict[str, Any]:
    """The reply schema, as an OpenAI-style response_format (for endpoints that honour it)."""
    return verdict_json_schema(CRITERIA, "context_verdict")


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def json_object(text: str | None) -> dict[str, Any]:
    """The one JSON object in a reply (bare, or in a ```json fence); ParseError otherwise."""
    s = (text or "").strip()
    fenced = _FENCE.findall(s)
    if len(fenced) == 1:
        s = fenced[0].strip()
    start = s.find("{")
    if start < 0:
        raise ParseError("no JSON object in the reply")
    try:
        obj, end = json.JSONDecoder().raw_decode(s[start:])
    except json.JSONDecodeError as e:
        raise ParseError(f"the JSON object does not parse: {e.msg} at position {e.pos}") from None
    if s[start + end:].strip().startswith("{"):
        raise ParseError("the reply holds more than one JSON object")
    if not isinstance(obj, dict):
        raise ParseError("the reply's JSON is not an object")
    return obj


def schema_problem(e: ValidationError) -> str:
    """The first validation problem, as `field.path: message`."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "reply"
    return f"{loc}: {err.get('msg', '').removeprefix('Value error, ')}"


V = TypeVar("V", bound=VerdictSet)


def parse_verdicts(model: type[V], text: str | None) -> V:
    """A reply of per-criterion verdicts, validated against `model`; ParseError otherwise."""
    data = json_object(text)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ParseError(f"the verdict does not match the schema ({schema_problem(e)})") from None


def parse_context_verdict(text: str | None) -> ContextVerdict:
    """The judge's verdicts, validated against the schema; ParseError otherwise."""
    return parse_verdicts(ContextVerdict, text)
