"""Source-grounded reasoning traces: draft, refine into three sections, verify.

For each curated question three model steps run, each a cached engine call whose reply
must parse (see curate/calls.py for the re-asks):

1. **Draft**: a medical VLM sees the image, the source context (sub-caption, caption,
   in-text references), the question, the options and the *correct* answer, and writes an
   explanation that organises the evidence. Items whose source context is (nearly) empty
   are not drafted (`no_source_context`). The reply is the draft itself: plain text of at
   least `draft.min_words` words once closed thinking blocks are removed.
2. **Refine**: a stronger model rewrites the draft against the same evidence into three
   delimited sections, dropping claims the image or the texts do not support:

       <perception>modality, region, the visible findings the question needs</perception>
       <interpretation>how the findings are read, with the source context</interpretation>
       <justification>evidence and knowledge linked to the selected option</justification>

   `parse_refined` reads them; a missing, repeated, unclosed or empty section is a parse
   failure (re-asked, then `refine:missing_section` or `refine_unparsed`). Code then checks
   the justification: naming an option other than the correct one (its text, "option C",
   or a final answer the project's extractor reads as another letter) rejects the trace as
   `refine:wrong_option`; a model's word is never taken for it.
3. **Verify**: a verifier sees image, context, question, options, the selected answer and
   the trace and returns one JSON object with a verdict and a one-sentence reason per
   criterion (`VERIFY_CRITERIA`). A trace is kept only when all three pass; an unparseable
   verdict is re-asked and then counted as `verify_unparsed`, never as a pass.

A kept trace becomes the item's `meta.reference_trace` (the three sections, the mapping the
trace benchmark reads) and its SFT target (`sft_target`: the OctoMed think/answer format).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from medrecipe.answers import extract, normalize_open
from medrecipe.curate import ParseError
from medrecipe.curate.context import (
    CriterionVerdict,
    VerdictSet,
    parse_verdicts,
    verdict_json_schema,
)
from medrecipe.schema import LETTERS
from medrecipe.select import make_target

SECTIONS: tuple[str, ...] = ("perception", "interpretation", "justification")
SECTION_TITLES = {"perception": "Perception",
                  "interpretation": "Clinical interpretation and medical knowledge",
                  "justification": "Answer justification"}
VERIFY_CRITERIA: tuple[str, ...] = ("source_consistency", "answer_justification",
                                    "reasoning_utility")
BINARY_FORMATS = frozenset({"yes_no", "true_false", "normal_abnormal"})


class TraceFormatError(ParseError):
    """A refined trace that does not have the three sections; `problem` says how."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem  # missing_section | repeated_section | unclosed_section | ...


# --------------------------------------------------------------------------- source context


def source_context(meta: Mapping[str, Any]) -> dict[str, Any]:
    """An item's source texts (sub-caption, caption, in-text references) from its meta."""
    ctx = meta.get("source_context") or {}
    return {"sub_caption": ctx.get("sub_caption") or None, "caption": ctx.get("caption") or None,
            "references": [r for r in (ctx.get("references") or []) if r and r.strip()]}


def context_words(ctx: Mapping[str, Any]) -> int:
    """Words in the sub-caption, caption and in-text references together."""
    texts = [ctx.get("sub_caption") or "", ctx.get("caption") or "", *ctx.get("references", [])]
    return sum(len(t.split()) for t in texts)


# --------------------------------------------------------------------------- replies

_THINK_BLOCK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think(?:ing)?>", re.IGNORECASE)


def visible_text(text: str | None) -> str:
    """The reply without closed thinking blocks; ParseError when one never closed."""
    s = _THINK_BLOCK.sub(" ", text or "")
    if _THINK_OPEN.search(s):
        raise ParseError("the reply's thinking block never closed (cut off?)")
    # A reply that only closes a block (the opening tag was in the prompt) keeps its tail.
    close = s.lower().rfind("</think>")
    return s[close + len("</think>"):] if close >= 0 else s


def _words(text: str) -> int:
    return len(text.split())


def _tidy(text: str) -> str:
    """Runs of spaces collapsed inside lines; paragraphs kept, at most one blank line."""
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def parse_draft(text: str | None, min_words: int = 20) -> str:
    """The drafted explanation (whitespace tidied); ParseError when it is too short."""
    s = _tidy(visible_text(text))
    n = _words(s)
    if n < min_words:
        raise ParseError(f"the draft has {n} words; at least {min_words} are needed")
    return s


_SECTION_TAG = re.compile(r"<\s*(/?)\s*(perception|interpretation|justification)\s*>",
                          re.IGNORECASE)


def parse_refined(text: str | None, min_words: int = 4) -> dict[str, str]:
    """The three sections of a refined trace; TraceFormatError when one is not usable."""
    s = visible_text(text)
    tags = list(_SECTION_TAG.finditer(s))
    out: dict[str, str] = {}
    for name in SECTIONS:
        opens = [m for m in tags if m.group(2).lower() == name and not m.group(1)]
        closes = [m for m in tags if m.group(2).lower() == name and m.group(1)]
        if not opens and not closes:
            raise TraceFormatError(f"the {name} section is missing (no <{name}> ... "
                                   f"</{name}>)", "missing_section")
        if len(opens) > 1 or len(closes) > 1:
            raise TraceFormatError(f"the {name} section appears more than once",
                                   "repeated_section")
        if len(opens) != 1 or len(closes) != 1 or closes[0].start() < opens[0].end():
            raise TraceFormatError(f"the {name} section is not opened and closed once, in "
                                   "that order", "unclosed_section")
        body = s[opens[0].end():closes[0].start()]
        if _SECTION_TAG.search(body):
            raise TraceFormatError(f"another section's tag sits inside the {name} section",
                                   "nested_section")
        body = _tidy(body)
        if _words(body) < min_words:
            raise TraceFormatError(f"the {name} section is empty or shorter than {min_words} "
                                   "words", "missing_section")
        out[name] = body
    return out


# --------------------------------------------------------------------------- option check

# Option texts too common (or too short) to look for in prose; number words answer counting
# questions and appear in any description ("one nodule in the lower zone").
_UNSEARCHABLE = frozenset("""yes no true false none all both neither either other normal abnormal
unknown zero one two three four five six seven eight nine ten eleven twelve""".split())
_LETTER_REF = re.compile(
    r"\b(?:option|choice|answer(?:\s+(?:is|was|would\s+be))?)\s*[:\-]?\s*[(\[]?([A-Z])[)\]]?"
    r"(?![A-Za-z0-9'’-])")


def _searchable(norm: str) -> bool:
    return len(norm) >= 4 and norm not in _UNSEARCHABLE and not norm.isdigit()


def _contains(haystack: str, needle: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in
            re.finditer(rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])", haystack)]


def names_other_option(text: str, options: Sequence[str], correct: str,
                       answer_format: str | None = None) -> str | None:
    """How `text` names an option other than `correct` (None: it names none).

    Three ways count: a letter reference ("option C", "the answer is C"), a final answer
    the project's extractor reads as another letter, or another option's full text (whole
    words, normalised; the correct option's own text is masked first so an option nested in
    it does not count). Binary option sets (Yes/No, True/False, Normal/Abnormal), number
    words and very short options are words any description uses, so only the first two
    ways apply to them.
    """
    if not options:
        return None
    correct = correct.strip().upper()
    letters = LETTERS[: len(options)]
    for m in _LETTER_REF.finditer(text):
        letter = m.group(1)
        if letter in letters and letter != correct:
            return f"refers to option {letter} ({options[LETTERS.index(letter)]})"
    ex = extract(text, options)
    if ex.answer is not None and ex.answer != correct:
        return (f"its conclusion reads as option {ex.answer} "
                f"({options[LETTERS.index(ex.answer)]}), not {correct}")
    if ex.answer is None and ex.invalid:
        return f"it states a final answer that is no single option ({ex.invalid!r})"
    if answer_format in BINARY_FORMATS or len(options) <= 2:
        return None
    norm_text = normalize_open(text)
    own = normalize_open(options[LETTERS.index(correct)])
    masked = norm_text
    if own:
        for s, e in reversed(_contains(norm_text, own)):
            masked = masked[:s] + " " * (e - s) + masked[e:]
    for i, opt in enumerate(options):
        if LETTERS[i] == correct:
            continue
        norm = normalize_open(opt)
        if not _searchable(norm) or (own and norm in own):
            continue
        if _contains(masked, norm):
            return f"names option {LETTERS[i]} ({opt})"
    return None


def check_refined(sections: Mapping[str, str], options: Sequence[str], correct: str,
                  answer_format: str | None = None, check_options: bool = True
                  ) -> list[tuple[str, str]]:
    """(reason, detail) for each code check a parsed refined trace fails (empty: it passes)."""
    out: list[tuple[str, str]] = []
    if check_options:
        named = names_other_option(sections["justification"], options, correct, answer_format)
        if named:
            out.append(("refine:wrong_option", f"the justification {named}; the selected "
                                               f"answer is {correct}"))
    return out


# --------------------------------------------------------------------------- verify


class TraceVerdict(VerdictSet):
    """The verifier's reply: one verdict per criterion, nothing else."""

    criteria: ClassVar[tuple[str, ...]] = VERIFY_CRITERIA
    source_consistency: CriterionVerdict
    answer_justification: CriterionVerdict
    reasoning_utility: CriterionVerdict


def parse_verdict(text: str | None) -> TraceVerdict:
    """The verifier's verdicts, validated against the schema; ParseError otherwise."""
    return parse_verdicts(TraceVerdict, visible_text(text))


def verify_json_schema() -> dict[str, Any]:
    """The verdict schema as an OpenAI-style response_format."""
    return verdict_json_schema(VERIFY_CRITERIA, "trace_verdict")


# --------------------------------------------------------------------------- training target


def render_reasoning(sections: Mapping[str, str]) -> str:
    """The three sections as one reasoning text, each under its title."""
    return "\n\n".join(f"{SECTION_TITLES[k]}: {sections[k]}" for k in SECTIONS)


def sft_target(sections: Mapping[str, str], options: Sequence[str], answer: str) -> str:
    """The SFT target in the OctoMed export format: <think> trace </think> + boxed answer."""
    return make_target(render_reasoning(sections), list(options), answer, "cot")


def section_words(sections: Mapping[str, str]) -> dict[str, int]:
    """Words per section."""
    return {k: _words(sections.get(k) or "") for k in SECTIONS}
