"""Answer extraction and grading.

The extractor never guesses. It reads only the part of a response after the last closed
thinking block (``<think>...</think>``, or MedGemma's ``<unused94>thought ... <unused95>``),
cut before an invented continuation (a new "Question:", "## Medical Question", "### Example",
"Q1:", a leaked chat-template line or a code block written after the reply, also inline:
"... B. Lactulose ## Question: ..."), and applies these rules in order, stopping at the
first that finds a final answer (docs/grading.md has the whole list and the real-output
figures):

1. ``boxed``: the last ``\\boxed{...}`` with balanced braces (LaTeX and markdown wrappers
   inside it are removed: ``\\boxed{\\text{(B)}}``, ``\\boxed{B: Stroma}``).
2. ``answer_tag``: the last ``<answer>...</answer>`` (any case).
3. ``json``: the last JSON answer key (``"answer"``, ``"answer_choice"``, ``"Answer Choice"``,
   ``"correct_answer"``, ``"best_next_step"``, ...; quoted or not, in code fences, cut off
   after its value, or with its opening quote lost), a letter flagged in an object
   (``{"A": "No", "B": "Yes"}``), an inner ``"value"``, or a key naming the letter
   (``"Answer Choice C": true``). Keys holding prose ("reason_for_answer") do not count.
4. ``answer_phrase``: the last answer phrase that is followed by an answer ("the answer is
   (B)", "Answer: B", "Final answer: The Waters view", "**Answer:** B", "the most accurate
   answer is:" with the answer on a later line, "(B) is the correct answer", "option B,
   <text of B>, is the correct choice", Chinese "答案是 B" / "选项 (B) 正确"). Phrases followed
   by prose ("the answer is not clear") are passed over.
5. ``lead``: a reply that opens with its answer on a line of its own ("B", "(B) Stroma").
6. ``option_text`` (multiple choice only): exactly one option's full text occurs, not
   negated, in the final paragraph of the answer part; not applied to items whose options
   include words too common to search for (yes, no, true, ...), nor to long replies that
   stop mid-sentence (cut by the length limit: they reached no conclusion).
7. ``bare``: a one-line reply that is one valid letter (with its own text) or one option's text.

Text after a letter must agree with that letter's option (be its text or a prefix of it;
trailing punctuation of option texts is ignored): naming another option makes it no answer
(boxes keep the letter). Several letters, or an opening answer that a later phrase
contradicts, are no answer.

A *final answer that is present but invalid* stops the search: when the last box, answer
tag, JSON key or answer phrase holds something that is not one of the item's options
(letter F with four options, two letters, "None of the Above", null), the result is
``answer=None, method="none"`` and ``Extraction.invalid`` holds the offending text.
Lower-priority rules are not consulted, because they would read the reasoning that the
model's own final answer overrides. ``Extraction.cut_at`` says where an invented
continuation was cut; ``Extraction.refused`` is true for both kinds of refusal.

A thinking block that was opened and never closed means the response did not finish:
``terminated=False`` and no answer, even if the reasoning mentions one. A response that
only closes a block (the ``<think>`` was in the prompt) is read after its last close.

The optional model-based reading (``judge``, off by default) is not part of `extract`:
`grade_generations` hands it the multiple-choice replies `judge_eligible` accepts (no
rule read them and none refused them) and keeps only a valid letter it returns.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from medrecipe.schema import LETTERS, VERDICT_SCHEMA, Item, items_from_table

if TYPE_CHECKING:
    from medrecipe.config import GradeConfig

METHODS: tuple[str, ...] = ("boxed", "answer_tag", "answer_phrase", "option_text", "bare", "judge",
                            "none", "json", "lead")

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
# Thinking blocks: <think>...</think>, and MedGemma's "<unused94>thought ... <unused95>".
_THINK_TAGS = ((_THINK_OPEN, _THINK_CLOSE), ("<unused94>", "<unused95>"))
_TAG_OPEN = "<answer>"
_TAG_CLOSE = "</answer>"


@dataclass(frozen=True, slots=True)
class Extraction:
    """The final answer found in one response and the rule that found it."""

    answer: str | None  # option letter (multiple choice), normalised text (open), or None
    method: str  # one of METHODS; "none" when no rule found a valid answer
    span: tuple[int, int] | None = None  # [start, end) of the matched answer in the text
    terminated: bool = True  # False when a <think> block was opened and never closed
    invalid: str | None = None  # a final answer that was present but not a valid one
    cut_at: int | None = None  # where an invented continuation (a new question, example) starts

    @property
    def refused(self) -> bool:
        """No answer because the reply gave an invalid one, several, or wrote an invented continuation."""
        return self.answer is None and (self.invalid is not None or self.cut_at is not None)


_NONE = Extraction(None, "none", None, True)
_UNTERMINATED = Extraction(None, "none", None, False)


# --------------------------------------------------------------------------- normalisation

_PUNCT_RE = re.compile(r"(?<!\d)[^\w\s]|[^\w\s](?!\d)|_")
_APOSTROPHE_RE = re.compile(r"(?<=\w)['’](?=\w)")
_ARTICLE_RE = re.compile(r"\b(?:a|an|the)\b")
_SPACE_RE = re.compile(r"\s+")
_YES_NO_RE = re.compile(r"^[\W_]*(yes|yeah|yep|no|nope)\b(.*)$", re.S)
_NO_REPLY_TAIL = re.compile(r"^\s*(?:$|[,.;:!\-–—)])")
_YES_NO = frozenset({"yes", "no"})


def normalize_open(text: str | None) -> str:
    """Normalised form of a free-form answer (case, punctuation, articles, yes/no replies)."""
    if not text:
        return ""
    t = text.strip().casefold()
    m = _YES_NO_RE.match(t)
    if m:
        word, rest = m.group(1), m.group(2)
        if word in ("yes", "yeah", "yep"):
            return "yes"
        # "No." / "No, it is not" are replies; "no evidence of ..." is a noun phrase.
        if word == "nope" or _NO_REPLY_TAIL.match(rest):
            return "no"
    t = _PUNCT_RE.sub(" ", _APOSTROPHE_RE.sub("", t))  # "crohn's" -> "crohns", not "crohn s"
    t = _ARTICLE_RE.sub(" ", t)
    return _SPACE_RE.sub(" ", t).strip()


def yes_no_reading(normalised: str) -> str | None:
    """'yes'/'no' when a normalised answer reads as one ("no fracture" reads as no)."""
    if normalised in _YES_NO:
        return normalised
    # "no fracture" reads as no; "not sure" / "not clear" are doubts, not a no.
    if normalised.startswith("no "):
        return "no"
    return None


_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+\*?")
_LATEX_SPACE_RE = re.compile(r"\\[,;:! ]")
_LATEX_ESC_RE = re.compile(r"\\([{}%&$#_])")
_MARKUP_RE = re.compile(r"[{}$*`]|\\\(|\\\)|\\\[|\\\]")
_CONTENT_PREFIX_RE = re.compile(
    r"^(?:(?:the|my)\s+)?(?:(?:final|correct|best)\s+)?(?:answer|option|choice)"
    r"(?:\s+(?:is|choice|option|letter))*\s*[:\-–—=]?\s*",
    re.I,
)


def _clean_content(raw: str) -> str:
    """Box / tag content with LaTeX commands, braces and markdown removed."""
    if "\\" in raw:
        raw = _LATEX_SPACE_RE.sub(" ", raw)
        raw = _LATEX_ESC_RE.sub(r"\1", raw)
        raw = _LATEX_CMD_RE.sub(" ", raw)
    raw = _MARKUP_RE.sub(" ", raw)
    return _SPACE_RE.sub(" ", raw).strip()


def _strip_prefix(cleaned: str) -> str:
    """Content without a leading "Answer:" / "Option" / "The answer is"."""
    return _CONTENT_PREFIX_RE.sub("", cleaned, count=1).strip()


# --------------------------------------------------------------------------- options


# Option texts too common to be found reliably in prose; with one of these among the
# options the option-text rule is not applied to the item at all.
_UNSEARCHABLE = frozenset(
    {"yes", "no", "true", "false", "none", "all", "both", "neither", "either", "other"}
)


class _Options:
    """An item's options, prepared once for fast matching."""

    __slots__ = ("n", "letters", "lowered", "normed", "by_norm", "searchable", "by_length", "nested")

    def __init__(self, options: Sequence[str]) -> None:
        self.n = len(options)
        self.letters = frozenset(LETTERS[: self.n])
        # Trailing punctuation ("Delivery.", "MR angiography.") is not part of the text a
        # reply quotes: "Final Answer: Delivery" names that option.
        self.lowered = [" ".join(o.split()).lower().rstrip(" .;,") or " ".join(o.split()).lower()
                        for o in options]
        self.normed = [normalize_open(o) for o in options]
        by_norm: dict[str, str | None] = {}
        for i, key in enumerate(self.normed):
            # Two options with the same text cannot be told apart by their text.
            by_norm[key] = None if key in by_norm else LETTERS[i]
        self.by_norm = by_norm
        self.searchable = all(len(k) >= 3 and k not in _UNSEARCHABLE for k in self.normed)
        # Whether one option's text occurs inside another's ("pneumonia", "viral pneumonia").
        self.nested = any(
            a in b for i, a in enumerate(self.lowered) for j, b in enumerate(self.lowered) if i != j
        )
        # Longest first, so "viral pneumonia" is tried before "pneumonia".
        self.by_length = sorted(range(self.n), key=lambda i: -len(self.lowered[i]))


@lru_cache(maxsize=8192)
def _prepare(options: tuple[str, ...]) -> _Options | None:
    return _Options(options) if options else None


# --------------------------------------------------------------------------- letter tokens

_ASCII = frozenset(string.ascii_letters)
_WORDISH = frozenset(string.ascii_letters + string.digits + "'’_")
_UPPER_END = frozenset(".:)],;!?*\"\n\r")
# Words that may follow a bare "A" or "I" when the letter is an answer ("A because ...");
# any other lowercase word means the letter is the English article or pronoun.
_CONNECTORS = frozenset(
    {"because", "since", "as", "is", "was", "which", "being", "would", "should", "seems",
     "appears", "fits", "matches", "remains", "best", "correct", "given", "due"}
)
_NEXT_WORD_RE = re.compile(r"[ \t]+([a-z]+)")
_NEXT_DIGIT_RE = re.compile(r"[ \t]+\d")
# A second letter after the first ("B and C", "B, C", "(B)/(C)") makes the answer invalid.
_MULTI_RE = re.compile(
    r"[ \t]*(?:,|;|/|&|\+|\band\b|\bor\b)[ \t]*(?:\([A-Za-z]\)|[A-Z](?![A-Za-z0-9'’\-])(?![ \t]+[a-z]))"
)


def _letter_token(text: str, p: int, end: int) -> tuple[str, int, int] | None:
    """An option letter written at text[p] as (LETTER, start, stop), or None if it is a word."""
    if p >= end:
        return None
    c = text[p]
    if c in "([" and p + 2 < end and text[p + 1] in _ASCII and text[p + 2] == (
        ")" if c == "(" else "]"
    ):
        return text[p + 1].upper(), p, p + 3
    if c not in _ASCII:
        return None
    nxt = text[p + 1] if p + 1 < end else ""
    if nxt and nxt in _WORDISH:
        return None  # part of a word: "Bcells", "A's"
    if nxt == "-" and p + 2 < end and text[p + 2].isalnum():
        return None  # "X-linked"
    if c.isupper():
        if not nxt or nxt in _UPPER_END:
            return c, p, p + 1
        if nxt in " \t":
            if _NEXT_DIGIT_RE.match(text, p + 1, end):
                return None  # "A 45-year-old man"
            if c in "AI":
                w = _NEXT_WORD_RE.match(text, p + 1, end)
                if w and w.group(1) not in _CONNECTORS:
                    return None  # "A man", "I think"
            return c, p, p + 1
        return c, p, p + 1
    # Lowercase letters only in clearly delimited forms: "b)", "b.", "b:", "**b**", end.
    if not nxt or nxt in "\n\r)":
        return c.upper(), p, p + 1
    if nxt in ".:" and (p + 2 >= end or text[p + 2] in " \t\n\r"):
        return c.upper(), p, p + 1
    if nxt == "*" and p > 0 and text[p - 1] == "*":
        return c.upper(), p, p + 1
    return None


def _multiple_letters(text: str, stop: int, end: int) -> bool:
    return _MULTI_RE.match(text, stop, end) is not None



# --------------------------------------------------------------------------- letter and text

_SEP_RE = re.compile(r"[ \t]*(?:[.:)\]\-–—,]|=)?[ \t]*")


def _named_option(rest: str, opts: _Options) -> tuple[int, int] | None:
    """(option index, end in the normalised text) of the longest option text that `rest` starts with."""
    norm = normalize_open(rest)
    if not norm:
        return None
    best: tuple[int, int] | None = None
    for i, o in enumerate(opts.normed):
        if o and (norm == o or norm.startswith(o + " ")) and (best is None or len(o) > best[1]):
            best = (i, len(o))
    return best


def _text_agreement(rest: str, letter: str, opts: _Options) -> str:
    """How text written after a letter relates to that letter's option.

    "agrees": it is the option's text (possibly followed by more words) or a prefix of it;
    "other": it starts with the text of another option; "unknown": neither, or no text.
    """
    norm = normalize_open(rest)
    if not norm:
        return "unknown"
    own = opts.normed[LETTERS.index(letter)]
    named = _named_option(rest, opts)
    if named is not None:
        # The longest option the text starts with decides; the letter's own text, when the
        # text starts with it too, wins a tie ("Cytology every 3 years" inside a longer one).
        if LETTERS[named[0]] == letter or (own and (norm == own or norm.startswith(own + " "))):
            return "agrees"
        return "other"
    if own and len(norm) >= 4 and own.startswith(norm):
        return "agrees"
    return "unknown"


def _names_other_option(rest: str, letter: str, opts: _Options) -> bool:
    """Whether the text after a letter names an option other than that letter's."""
    rest = _SEP_RE.sub("", rest, count=1) if rest else rest
    return bool(rest) and _text_agreement(rest, letter, opts) == "other"


# --------------------------------------------------------------------------- invented continuations

# Small models often answer, then write a question nobody asked ("Question: ...",
# "## Medical Question", "### Example 4", a leaked chat-template line, a code block) with
# answers of its own. Only what comes before the first such start belongs to the reply.
_CONTINUATION_RE = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*|\*\*)?(?:(?:new|next|another|medical|sample|practice)[ \t]+)?"
    r"(?:question|example|problem|exercise)(?:[ \t]*#?[ \t]*\d+)?[ \t]*(?:\*\*)?[ \t]*(?::|\.(?!\w)|$)"
    r"|^[ \t]*q\d*[ \t]*[:.][ \t]"
    r"|^[ \t]*you are an ai assistant"
    r"|^[ \t]*(?:human|user|instruction|input)[ \t]*:"
    r"|^```[ \t]*(?:python|py|javascript|java|cpp)\b",
    re.M,
)
# Replies whose line breaks were flattened: "... B. Lactulose ## Question: A 60-year-old ..."
_INLINE_CONTINUATION_RE = re.compile(
    r"(?<=[^\s#])[ \t]+#{1,6}[ \t]*(?:new[ \t]+|next[ \t]+|medical[ \t]+)?(?:question|example)s?\b"
)


def _continuation_start(lower: str, start: int) -> int:
    """Where an invented continuation begins after some reply text, else len(lower)."""
    cut = len(lower)
    for m in _CONTINUATION_RE.finditer(lower, start):
        if lower[start : m.start()].strip():
            cut = m.start()
            break
    if lower.find("#", start, cut) >= 0:  # the inline form needs a heading mark
        m = _INLINE_CONTINUATION_RE.search(lower, start, cut)
        if m is not None:
            cut = m.start()
    return cut


# --------------------------------------------------------------------------- JSON answers

# Answer keys: "answer", "answer_choice", "Answer Choice", "final_answer", "correct_option",
# "best_response", "best_next_step", "prediction", ... A key whose opening quote was lost
# ('... so: answer_choice": "C"}') still counts; "options_analysis" or "answer_text" do not.
# Located from the quote and colon that end a key (a fast literal scan), then read backwards.
_JSON_COLON_RE = re.compile(r"[\"'][ \t]*:[ \t]*")
_JSON_KEY_RE = re.compile(
    r"(?:^|[\"'{,\s])((?:[a-z]+[ _-]){0,3}?"
    r"(?:answer|choice|option|response|prediction|selection|next[ _-]?step)"
    r"(?:[ _-]?(?:choice|option|letter|label|id|key))?)$"
)
_JSON_KEY_WINDOW = 64
# A key that names the letter itself: {"Answer Choice C": true}.
_JSON_LETTER_KEY_RE = re.compile(r"[\"']answer[ _-]?(?:choice|option)[ _-]?([a-z])[\"'][ \t]*:[ \t]*")
# Inside an object value: {"A": "No", "B": "Yes"} or {"value": "B", "text": "..."}.
_JSON_FLAG_RE = re.compile(r"[\"']([a-z])[\"'][ \t]*:[ \t]*[\"']?(yes|true|no|false|null|none)\b")
_JSON_INNER_KEY_RE = re.compile(r"[\"'](?:value|letter|answer|choice|option|label)[\"'][ \t]*:[ \t]*")
_JSON_NULL = frozenset({"null", "none", "", "n/a"})
_JSON_FALSE = _JSON_NULL | {"false", "no"}
# Keys that hold prose about the answer, not the answer: "reason_for_answer", "explanation of choice".
_JSON_PROSE_WORDS = frozenset({"explanation", "reason", "reasoning", "rationale", "why", "justification",
                               "analysis", "thinking", "for", "of", "about", "text", "confidence"})
_JSON_TRUE = frozenset({"yes", "true"})
_JSON_SCALAR_END_RE = re.compile(r"[^,}\]\n]*")


def _json_value(text: str, p: int) -> tuple[int, int]:
    """[start, end) of the scalar value written at text[p] (quoted or not, possibly cut off)."""
    n = len(text)
    if p < n and text[p] in "\"'":
        q, e = text[p], p + 1
        while e < n and text[e] != q and text[e] != "\n":
            e += 2 if text[e] == "\\" else 1
        return p + 1, min(e, n)
    m = _JSON_SCALAR_END_RE.match(text, p)
    return p, m.end()


def _json_object_answer(text: str, lower: str, p: int, opts: _Options | None) -> Extraction | None:
    """An answer held in an object value: one letter flagged yes/true, or an inner "value" key."""
    close = lower.find("}", p)
    end = close if close >= 0 else len(lower)
    flags = [(m.group(1).upper(), m.group(2)) for m in _JSON_FLAG_RE.finditer(lower, p, end)]
    if flags and opts is not None:
        chosen = [letter for letter, v in flags if v in _JSON_TRUE]
        if len(chosen) == 1 and chosen[0] in opts.letters:
            return Extraction(chosen[0], "json", (p, end + 1 if close >= 0 else end), True)
        return Extraction(None, "none", None, True, text[p:end + 1].strip()[:200])
    inner = _JSON_INNER_KEY_RE.search(lower, p, end)
    if inner is None:
        return None
    s, e = _json_value(text, inner.end())
    return _judge_content(text, s, min(e, end), "json", opts, strict=True)


def _find_json(text: str, lower: str, start: int, opts: _Options | None) -> Extraction | None:
    """The answer held by the last JSON answer key (quoted or not, possibly cut off), or None."""
    if opts is not None:
        named = [(m.group(1).upper(), _json_value(text, m.end())) for m in _JSON_LETTER_KEY_RE.finditer(lower, start)]
        if named:
            chosen = [(letter, se) for letter, se in named
                      if text[se[0]:se[1]].strip().lower() not in _JSON_FALSE]
            if len(chosen) == 1 and chosen[0][0] in opts.letters:
                return Extraction(chosen[0][0], "json", chosen[0][1], True)
            return Extraction(None, "none", None, True, ", ".join(letter for letter, _ in chosen) or "no choice")
    p = -1
    for c in _JSON_COLON_RE.finditer(lower, start):
        m = _JSON_KEY_RE.search(lower, max(start, c.start() - _JSON_KEY_WINDOW), c.start())
        if m is not None and not _JSON_PROSE_WORDS.intersection(re.split(r"[ _-]", m.group(1))):
            p = c.end()
    if p < 0:
        return None
    if p < len(text) and text[p] == "{":
        return _json_object_answer(text, lower, p + 1, opts)
    s, e = _json_value(text, p)
    if text[s:e].strip().lower() in _JSON_NULL:
        return Extraction(None, "none", None, True, text[s:e].strip() or "empty")
    return _judge_content(text, s, e, "json", opts, strict=True)


# --------------------------------------------------------------------------- lead answer

_LEAD_PREFIX_RE = re.compile(r"(?:(?:option|choice|answer)[ \t]*:?[ \t]+)?", re.I)
_LEAD_TRAIL_RE = re.compile(r"[\s.*_)\]]*$")
_LABEL_LINE_RE = re.compile(r"^[ \t]*[(\[]?([A-Z])[)\].:][ \t]+(\S.*)$", re.M)
_BARE_LINE_RE = re.compile(r"^[ \t*_]*[(\[]?([A-Z])[)\]]?[ \t*_.]*$", re.M)
_LEAD_TEXT_END_RE = re.compile(
    r"[ \t]*(?:$|[.,;!](?:\s|$)|is[ \t]+(?:the[ \t]+)?(?:best|correct|right|most|answer|appropriate|likely)"
    r"|would[ \t]+be[ \t]+(?:the[ \t]+)?(?:best|correct|most))"
)


@dataclass(frozen=True, slots=True)
class _Lead:
    answer: Extraction | None  # the answer the first line gives, or an invalid result
    strong: bool  # the line is nothing but the answer (letter and/or its option text)
    walkthrough: bool  # the reply lists options one by one: no option-text reading
    single: bool = False  # the reply is that one line (the bare and option-text rules read it)


_NO_LEAD = _Lead(None, False, False)


def _lists_other_options(text: str, line_end: int, letter: str, opts: _Options) -> bool:
    """Whether later lines label other options with their own text ("B. Stroma"): a listing."""
    for m in _LABEL_LINE_RE.finditer(text, line_end):
        other = m.group(1)
        if other != letter and other in opts.letters and _text_agreement(m.group(2), other, opts) == "agrees":
            return True
    return False


def _find_lead(text: str, lower: str, start: int, opts: _Options) -> _Lead:
    """The answer a reply opens with: "B", "(B)", "B. Stroma", "B, stroma because ...", "Stroma is ..."."""
    s, end = _trim(text, start, len(text))
    if s >= end:
        return _NO_LEAD
    nl = text.find("\n", s, end)
    if nl < 0:
        lead = _first_line(text, lower, s, end, end, opts)
        return _Lead(lead.answer, lead.strong, lead.walkthrough, True)
    return _first_line(text, lower, s, nl, end, opts)


def _first_line(text: str, lower: str, s: int, line_end: int, end: int, opts: _Options) -> _Lead:
    """_find_lead for the reply's first line text[s:line_end]; the reply ends at `end`."""
    p = _LEAD_PREFIX_RE.match(text, s, line_end).end()
    tok = _letter_token(text, p, line_end)
    if tok is not None and (text[p].isupper() or text[p] in "(["):
        letter, ls, le = tok
        if letter not in opts.letters:
            return _Lead(Extraction(None, "none", None, True, text[s:line_end].strip()), True, False)
        if _multiple_letters(text, le, line_end):
            return _Lead(Extraction(None, "none", None, True, text[s:line_end].strip()), True, False)
        rest = text[le:line_end]
        found = Extraction(letter, "lead", (ls, le), True)
        if _negated(lower, ls, line_end, s):
            return _Lead(None, False, True)  # "Option A (Tumor) is unlikely"
        if _LEAD_TRAIL_RE.fullmatch(rest):
            for m in _BARE_LINE_RE.finditer(text, line_end, end):
                if m.group(1).upper() != letter:
                    return _Lead(Extraction(None, "none", None, True, text[s:end].strip()), True, False)
            return _Lead(found, True, False)
        body = _SEP_RE.sub("", rest, count=1)
        paren = body.startswith("(")
        if paren:
            close = body.find(")")
            body = body[1 : close if close >= 0 else len(body)]
        agreement = _text_agreement(body, letter, opts)
        if agreement == "other":
            return _Lead(Extraction(None, "none", None, True, text[s:line_end].strip()), True, False)
        if agreement == "unknown":
            return _NO_LEAD  # "C. difficile colitis is likely": not a labelled answer
        if _lists_other_options(text, line_end, letter, opts):
            return _Lead(None, False, True)
        own = opts.lowered[LETTERS.index(letter)]
        q = lower.find(own, le, line_end)
        after = lower[q + len(own) : line_end] if q >= 0 else ""
        if after.lstrip().startswith(":"):
            return _Lead(None, False, True)  # "A. Tumor: ..." analyses one option after another
        strong = q >= 0 and _LEAD_TRAIL_RE.fullmatch(after) is not None or paren
        return _Lead(found, bool(strong), False)
    # An option's own text opening the reply: "Stroma", "Stroma is the answer."
    for i in opts.by_length:
        o = opts.lowered[i]
        if len(opts.normed[i]) < 3 or opts.normed[i] in _UNSEARCHABLE or not lower.startswith(o, s):
            continue
        q = s + len(o)
        if q < line_end and lower[q].isalnum():
            continue
        if not _LEAD_TEXT_END_RE.match(lower, q, line_end) or _negated(lower, s, q, s):
            return _NO_LEAD
        letter = opts.by_norm.get(opts.normed[i])
        if letter is None or _lists_other_options(text, line_end, letter, opts):
            return _NO_LEAD
        strong = _LEAD_TRAIL_RE.fullmatch(text[q:line_end]) is not None
        return _Lead(Extraction(letter, "lead", (s, q), True), strong, False)
    return _NO_LEAD

# --------------------------------------------------------------------------- rules

def _find_boxed(text: str, start: int) -> tuple[int, int] | None:
    """Content span of the last balanced \\boxed{...} at or after start."""
    pos = len(text)
    while True:
        b = text.rfind("\\boxed", start, pos)
        if b < 0:
            return None
        pos = b
        i = b + 6
        n = len(text)
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "{":
            continue
        depth = 0
        j = i
        while j < n:
            ch = text[j]
            if ch == "\\":
                j += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return i + 1, j
            j += 1
        # Unbalanced (e.g. cut off): not a boxed answer; look at an earlier one.


def _find_tag(lower: str, start: int) -> tuple[int, int] | None:
    """Content span of the last <answer>...</answer> (any case: <ANSWER> too)."""
    close = lower.rfind(_TAG_CLOSE, start)
    if close < 0:
        return None
    open_ = lower.rfind(_TAG_OPEN, start, close)
    if open_ < 0:
        return None
    return open_ + len(_TAG_OPEN), close


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def _judge_content(
    text: str, s: int, e: int, method: str, opts: _Options | None, strict: bool = False
) -> Extraction:
    """Extraction from a delimited final answer (box, tag, JSON value); invalid content stops the search.

    With `strict`, a letter followed by the text of another option ("B: Tumor" when B is
    Stroma) is not an answer; boxes keep the letter, as the crafted rule tests pin.
    """
    s, e = _trim(text, s, e)
    raw = text[s:e]
    cleaned = _clean_content(raw)
    if opts is None:
        norm = normalize_open(_strip_prefix(cleaned))
        if norm:
            return Extraction(norm, method, (s, e), True)
        return Extraction(None, "none", None, True, raw)
    for content in (cleaned, _strip_prefix(cleaned)):
        if not content:
            continue
        by_text = opts.by_norm.get(normalize_open(content))
        if by_text:
            return Extraction(by_text, method, (s, e), True)
        tok = _letter_token(content, 0, len(content))
        if tok is not None:
            letter, _, stop = tok
            if letter in opts.letters and not _multiple_letters(content, stop, len(content)):
                if strict and _names_other_option(content[stop:], letter, opts):
                    break
                return Extraction(letter, method, (s, e), True)
            break
        # "A stroma": a bare letter followed by that letter's own option text.
        first = content[0].upper()
        if len(content) > 2 and content[1] == " " and first in opts.letters:
            if normalize_open(content[2:]) == opts.normed[LETTERS.index(first)]:
                return Extraction(first, method, (s, e), True)
    return Extraction(None, "none", None, True, raw)


# Answer phrases are located by their keyword with str.find (fast), then checked with
# regexes anchored at the keyword: the words before it (searched in a short window that
# ends at the keyword) and the words after it.
_FORWARD_KEYWORDS = ("answer", "option", "choice")
_REVERSE_KEYWORDS = ("correct", "right", "best")
# "the answer is", "the correct option would be", "my final answer is"
_VERB_PREFIX_RE = re.compile(
    r"\b(?:the|my|our|final|correct|best|right)\s+"
    r"(?:(?:final|correct|best|right|most\s+likely|likely|only|most\s+accurate|most\s+appropriate"
    r"|most\s+plausible|closest|available|suitable)\s+){0,2}$"
)
_VERB_SUFFIX_RE = re.compile(
    r"(?:\s+(?:choice|option|letter))?\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be|=)(?![a-z])"
)
# "Answer:", "**Final Answer:**", "Answer (letter):", "answer = B", "correct option: B"
_LABEL_PREFIX_RE = re.compile(r"\b(?:final|correct|best)\s+$")
_LABEL_SUFFIX_RE = re.compile(
    r"(?:[ \t]+(?:choice|option|letter))?(?:\s*\([^)\n]{0,20}\))?[ \t*_]*(?::|=|-[ \t])"
)
# "## Answer" / "**Final Answer**" alone on a line, the answer on the next one.
_HEADING_PREFIX_RE = re.compile(r"(?:^|\n)[ \t]*(?:#{1,6}[ \t]*|\*\*)(?:(?:final|correct)[ \t]+)?$")
_HEADING_SUFFIX_RE = re.compile(r"[ \t*_:]*\n")
_OPTION_LABEL_SUFFIX_RE = re.compile(r"[ \t*_]*:")
# Reverse: "(B) is the correct answer", "option B is correct".
_REVERSE_PREFIX_RE = re.compile(
    r"(?:\b(?:option|choice)\s+)?(?:\([a-z]\)|\b[a-z])\s+is\s+(the\s+)?$"
)
_REVERSE_SUFFIX_RE = re.compile(r"\s+(?:answer|option|choice)\b")
_REVERSE_LETTER_RE = re.compile(r"(?:(?:option|choice)\s+)?")
_LETTER_BEFORE_RE = re.compile(r"(?<![A-Za-z])\(?[A-Z]\)?[ \t]*(?:,|/|&|\band\b|\bor\b)[ \t]*$")
_WINDOW = 40
_FILLER_RE = re.compile(
    r"(?:[\s*_:\"'`>#]|\\\(|\$)*"
    r"(?:(?:most\s+likely|likely|probably|clearly|definitely|therefore|thus|option|choice|letter"
    r"|i\s+think|i\s+believe|it\s+is|it'?s)"
    r"\b(?:[\s*_:\"'`]|\\\(|\$)*)*"
)
_CONDITIONAL_RE = re.compile(r"(?:\bif|\bwhether|\bwhat)\s+$")
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|\n")
_OPEN_LEAD_RE = re.compile(r"^(?:that|simply)\s+", re.I)


def _option_prefix(lower: str, p: int, end: int, opts: _Options) -> tuple[str, int] | None:
    """(letter, stop) when an option's text starts at lower[p]."""
    for i in opts.by_length:
        o = opts.lowered[i]
        if lower.startswith(o, p):
            q = p + len(o)
            if q >= end or not lower[q].isalnum():
                letter = opts.by_norm.get(opts.normed[i])
                return (letter, q) if letter else None
    return None


_ARTICLE_START_RE = re.compile(r"(?:the|an|a)[ \t]+")


def _phrase_mc(text: str, lower: str, p: int, end: int, opts: _Options) -> Extraction | None:
    """Answer after an anchor at p: a letter, an option text, an invalid letter, or None."""
    hit = _option_prefix(lower, p, end, opts)
    if hit is None:
        art = _ARTICLE_START_RE.match(lower, p, end)  # "Final Answer: The Waters view"
        if art is not None:
            hit = _option_prefix(lower, art.end(), end, opts)
    if hit is not None:
        return Extraction(hit[0], "answer_phrase", (p, hit[1]), True)
    tok = _letter_token(text, p, end)
    if tok is None:
        return None
    letter, s, e = tok
    stop = text.find("\n", e, end)
    stop = end if stop < 0 else stop
    if (letter not in opts.letters or _multiple_letters(text, e, end)
            or _names_other_option(text[e:stop], letter, opts)):
        return Extraction(None, "none", None, True, text[s:stop].strip())
    return Extraction(letter, "answer_phrase", (s, e), True)


def _phrase_open(text: str, p: int, end: int) -> Extraction | None:
    m = _SENTENCE_END_RE.search(text, p, end)
    e = m.start() if m else end
    s, e = _trim(text, p, e)
    raw = text[s:e]
    lead = _OPEN_LEAD_RE.match(raw)
    if lead:
        s += lead.end()
        raw = text[s:e]
    norm = normalize_open(_clean_content(raw))
    if not norm:
        return None
    return Extraction(norm, "answer_phrase", (s, e), True)


def _keyword_positions(lower: str, start: int, keywords: tuple[str, ...]) -> list[int]:
    found = []
    for kw in keywords:
        q = lower.find(kw, start)
        while q >= 0:
            if q == 0 or not lower[q - 1].isalnum():
                found.append(q)
            q = lower.find(kw, q + len(kw))
    return found


def _forward_anchor(lower: str, start: int, k: int) -> tuple[int, int] | None:
    """(anchor start, anchor end) of a forward answer phrase whose keyword is at k."""
    ws = max(start, k - _WINDOW)
    if lower.startswith("answer", k):
        after = k + 6
        m = _LABEL_SUFFIX_RE.match(lower, after)
        if m:
            pre = _LABEL_PREFIX_RE.search(lower, ws, k)
            return (pre.start() if pre else k), m.end()
        pre = _HEADING_PREFIX_RE.search(lower, ws, k)
        if pre:
            m = _HEADING_SUFFIX_RE.match(lower, after)
            if m:
                return pre.start(), m.end()
    else:
        after = k + 6  # "option" and "choice" have the same length
        pre = _LABEL_PREFIX_RE.search(lower, ws, k)
        if pre:
            m = _OPTION_LABEL_SUFFIX_RE.match(lower, after)
            if m:
                return pre.start(), m.end()
    pre = _VERB_PREFIX_RE.search(lower, ws, k)
    if pre:
        m = _VERB_SUFFIX_RE.match(lower, after)
        if m:
            return pre.start(), m.end()
    return None


def _reverse_phrase(
    text: str, lower: str, start: int, k: int, opts: _Options
) -> Extraction | None:
    """Answer from "(B) is the correct answer" / "option B is correct" with keyword at k."""
    kw_end = k + (7 if lower.startswith("correct", k) else 5 if lower.startswith("right", k) else 4)
    if kw_end < len(lower) and lower[kw_end].isalnum():
        return None
    pre = _REVERSE_PREFIX_RE.search(lower, max(start, k - _WINDOW), k)
    if pre is None:
        return _reverse_with_text(text, lower, start, k, kw_end, opts)
    # With "the", a noun must follow ("is the best answer"); bare "is correct" needs none.
    if pre.group(1) is not None and not _REVERSE_SUFFIX_RE.match(lower, kw_end):
        return None
    if pre.group(1) is None and not lower.startswith("correct", k):
        return None
    q = _REVERSE_LETTER_RE.match(lower, pre.start()).end()
    tok = _letter_token(text, q, len(text))
    if tok is None or (text[q] != "(" and text[q].islower()):
        return None
    letter, s, e = tok
    if letter not in opts.letters:
        if q > pre.start() or text[q] == "(":
            return Extraction(None, "none", None, True, text[pre.start() : kw_end])
        return None  # a bare capital ("vitamin K is correct") is not clearly a letter
    if _LETTER_BEFORE_RE.search(text, max(start, q - 8), q):
        return Extraction(None, "none", None, True, text[max(start, q - 8) : kw_end].strip())  # "D, B is correct"
    return Extraction(letter, "answer_phrase", (s, e), True)


# "option D, **Degenerative disease of the joints**, is the correct choice": the letter, its
# option's text set off by commas or brackets, then the verb.
_REVERSE_TEXT_RE = re.compile(
    r"\b(?:option|choice|answer)[ \t]+\(?([a-z])\)?[ \t]*[,(:][ \t]*([^,()\n]{3,150}?)[ \t]*[,)]?[ \t]+is[ \t]+(the[ \t]+)?$"
)


def _reverse_with_text(text: str, lower: str, start: int, k: int, kw_end: int, opts: _Options) -> Extraction | None:
    """_reverse_phrase for "option B, <text of B>, is the correct answer" (the text must agree)."""
    m = _REVERSE_TEXT_RE.search(lower, max(start, k - 200), k)
    if m is None or (m.group(3) is not None and not _REVERSE_SUFFIX_RE.match(lower, kw_end)):
        return None
    if m.group(3) is None and not lower.startswith("correct", k):
        return None
    letter = m.group(1).upper()
    body = _clean_content(text[m.start(2) : m.end(2)])
    if letter not in opts.letters or _text_agreement(body, letter, opts) != "agrees":
        return Extraction(None, "none", None, True, text[m.start() : kw_end])
    s = m.start(1)
    return Extraction(letter, "answer_phrase", (s, s + 1), True)


# Chinese replies: "答案是 B" (the answer is B), "选项 (E) 正确" (option E is correct).
_ZH_ANSWER_RE = re.compile(
    r"(?:答案|正确答案|正確答案)[ \t]*(?:是|为|為)?[ \t]*[:：]?[ \t]*[（(]?[ \t]*([A-Z])(?![A-Za-z])"
    r"|(?:选项|選項)[ \t]*[（(]?[ \t]*([A-Z])[ \t]*[）)]?[ \t]*(?:是)?[ \t]*(?:正确|正確|最佳)"
)


def _find_zh_phrase(text: str, start: int, opts: _Options) -> Extraction | None:
    """The last Chinese answer phrase ("答案是 B", "选项 (E) 正确"), or None."""
    last = None
    for m in _ZH_ANSWER_RE.finditer(text, start):
        last = m
    if last is None:
        return None
    g = 1 if last.group(1) else 2
    letter = last.group(g)
    if letter not in opts.letters:
        return Extraction(None, "none", None, True, last.group(0))
    return Extraction(letter, "answer_phrase", (last.start(g), last.end(g)), True)


def _find_phrase(text: str, lower: str, start: int, opts: _Options | None) -> Extraction | None:
    """The last answer phrase followed by an answer (valid or invalid), English or Chinese, or None."""
    found = _find_en_phrase(text, lower, start, opts)
    if opts is None or not ("答" in text or "选" in text or "選" in text):
        return found[0] if found else None
    zh = _find_zh_phrase(text, start, opts)
    if zh is None:
        return found[0] if found else None
    if found is None:
        return zh
    zh_at = zh.span[0] if zh.span else text.rfind(zh.invalid or "", start)
    return zh if zh_at > found[1] else found[0]


def _find_en_phrase(
    text: str, lower: str, start: int, opts: _Options | None
) -> tuple[Extraction, int] | None:
    """The last English answer phrase followed by an answer and its keyword's offset, or None."""
    end = len(text)
    cands = [(k, False) for k in _keyword_positions(lower, start, _FORWARD_KEYWORDS)]
    if opts is not None:
        cands.extend((k, True) for k in _keyword_positions(lower, start, _REVERSE_KEYWORDS))
    cands.sort(reverse=True)
    for k, reverse in cands:
        if reverse:
            res = _reverse_phrase(text, lower, start, k, opts)  # type: ignore[arg-type]
            if res is not None:
                return res, k
            continue
        anchor = _forward_anchor(lower, start, k)
        if anchor is None:
            continue
        a_start, a_end = anchor
        if _CONDITIONAL_RE.search(lower, max(start, a_start - 12), a_start):
            continue  # "whether the answer is A"
        p = _FILLER_RE.match(lower, a_end).end()
        if p >= end:
            continue
        res = _phrase_mc(text, lower, p, end, opts) if opts is not None else _phrase_open(text, p, end)
        if res is not None:
            return res, k
    return None


def _lower_same_length(text: str) -> str:
    """text.lower(), keeping offsets: characters whose lowercase is longer stay as they are."""
    lower = text.lower()
    if len(lower) == len(text):
        return lower
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


_NEGATION_BEFORE_RE = re.compile(
    r"\b(?:not|no|never|unlikely|rule\s+out|ruled\s+out|rules\s+out|exclude[sd]?|excluding"
    r"|rather\s+than|instead\s+of|against|without|less\s+likely|other\s+than)\b"
)
_NEGATION_AFTER_RE = re.compile(
    r"\b(?:not|unlikely|incorrect|wrong|excluded|ruled\s+out|less\s+likely|inconsistent|contraindicated)\b"
)
_SENTENCE_BREAK_RE = re.compile(r"[.!?;\n](?!\d)")
# An option written after its own label at the start of a line ("A. Tumor"), in a
# paragraph of several lines, is the reply listing the options, not naming its answer.
_LABEL_ONLY_RE = re.compile(r"[ \t]*[(\[]?[a-z][)\].:][ \t]*")


def _listed(lower: str, q: int, start: int) -> bool:
    line = max(lower.rfind("\n", start, q) + 1, start)
    return _LABEL_ONLY_RE.fullmatch(lower, line, q) is not None


def _negated(lower: str, s: int, e: int, lo: int) -> bool:
    """Whether an option mention sits in a negated clause ("not stroma", "tumor is unlikely")."""
    before = lower[max(lo, s - 48) : s]
    breaks = list(_SENTENCE_BREAK_RE.finditer(before))
    if breaks:
        before = before[breaks[-1].end() :]
    if _NEGATION_BEFORE_RE.search(before):
        return True
    after = lower[e : e + 48]
    m = _SENTENCE_BREAK_RE.search(after)
    return _NEGATION_AFTER_RE.search(after, 0, m.start() if m else len(after)) is not None


def _find_option_text(lower: str, start: int, opts: _Options) -> Extraction | None:
    """The one option whose full text occurs, not negated, in the final paragraph, or None."""
    # Only the conclusion counts: earlier paragraphs are reasoning that discusses options.
    end = len(lower)
    while end > start and lower[end - 1].isspace():
        end -= 1
    para = lower.rfind("\n\n", start, end)
    lo = para + 2 if para >= 0 else start
    multiline = "\n" in lower[lo:end]
    occurrences: list[tuple[int, int, int]] = []
    for i, o in enumerate(opts.lowered):
        n = len(o)
        q = lower.find(o, lo, end)
        while q >= 0:
            e = q + n
            if ((q == 0 or not lower[q - 1].isalnum()) and (e >= len(lower) or not lower[e].isalnum())
                    and not (multiline and _listed(lower, q, start))):
                occurrences.append((q, e, i))
            q = lower.find(o, q + 1, end)
    if not occurrences:
        return None
    # An occurrence inside a longer option's occurrence ("pneumonia" in "viral pneumonia")
    # is not a mention of the shorter option.
    kept = occurrences
    if opts.nested:
        kept = [
            (s, e, i) for s, e, i in occurrences
            if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in occurrences)
        ]
    found = {i for _, _, i in kept}
    if len(found) != 1:
        return None
    i = found.pop()
    letter = opts.by_norm.get(opts.normed[i])
    if not letter or any(_negated(lower, s, e, lo) for s, e, _ in kept):
        return None
    s, e, _ = max(kept)
    return Extraction(letter, "option_text", (s, e), True)


def _thinking_end(text: str) -> int | None:
    """Where the reply after the last closed thinking block starts; None when a block is left open."""
    start, last_open = 0, -1
    # The MedGemma pair is looked for only in replies that have one of its markers.
    for open_, close_ in (_THINK_TAGS if "<unused9" in text else _THINK_TAGS[:1]):
        c = text.rfind(close_)
        if c >= 0:
            start = max(start, c + len(close_))
        last_open = max(last_open, text.rfind(open_))
    return None if last_open >= start else start


def _extract(text: str | None, opts: _Options | None) -> Extraction:
    if not text:
        return _NONE
    start = _thinking_end(text)
    if start is None:
        return _UNTERMINATED
    lower = _lower_same_length(text)
    cut = _continuation_start(lower, start)
    if cut == len(text):
        return _read(text, lower, start, opts)
    # Offsets stay valid: only the tail (the invented continuation) is dropped.
    return replace(_read(text[:cut], lower[:cut], start, opts), cut_at=cut)


def _read(text: str, lower: str, start: int, opts: _Options | None) -> Extraction:
    """The rules, in order, over the reply text[start:] (thinking and continuation removed)."""
    span = _find_boxed(text, start)
    if span is not None:
        return _judge_content(text, span[0], span[1], "boxed", opts)
    span = _find_tag(lower, start)
    if span is not None:
        return _judge_content(text, span[0], span[1], "answer_tag", opts, strict=True)
    res = _find_json(text, lower, start, opts)
    if res is not None:
        return res
    res = _find_phrase(text, lower, start, opts)
    if opts is None:
        return res if res is not None else _bare(text, start, opts)
    lead = _find_lead(text, lower, start, opts)
    if res is not None:
        if (res.answer is not None and not lead.single and lead.answer is not None
                and lead.answer.answer not in (None, res.answer)):
            # "A" on the first line, "the correct answer is C" later: two answers, none.
            return Extraction(None, "none", None, True, f"{lead.answer.answer} ... {res.answer}")
        return res
    if lead.answer is not None and not lead.single:
        return lead.answer
    if _letter_contradicts_text(text, start, opts):
        return Extraction(None, "none", None, True, text[start:].strip())
    if opts.searchable and not lead.walkthrough and not _cut_off(text, start):
        res = _find_option_text(lower, start, opts)
        if res is not None:
            return res
    return _bare(text, start, opts)


_CUT_OFF_MIN_CHARS = 600


def _cut_off(text: str, start: int) -> bool:
    """A long reply that stops mid-sentence (the length limit cut it): it reached no conclusion."""
    end = len(text.rstrip())
    return end - start >= _CUT_OFF_MIN_CHARS and (text[end - 1].isalnum() or text[end - 1] in ",;:(-")


_BARE_MAX_CHARS = 100
_BARE_MAX_OPEN_WORDS = 5
# The whole reply is one letter, optionally wrapped ("(B)", "**B**", "B.") and optionally
# followed by that letter's own option text ("B: Stroma", "(B) Stroma").
_BARE_MC_RE = re.compile(r"^[\s*_`]*[(\[]?([A-Za-z])[)\]]?(?:[.:)\-]?\s+(.+?))?[\s*_`.]*$", re.S)


def _letter_contradicts_text(text: str, start: int, opts: _Options) -> bool:
    """A short reply "(B) <text of another option>": letter and text disagree, so no answer."""
    s, e = _trim(text, start, len(text))
    if s >= e or e - s > _BARE_MAX_CHARS or "\n" in text[s:e]:
        return False
    m = _BARE_MC_RE.match(text[s:e])
    if m is None or m.group(2) is None or m.group(1).upper() not in opts.letters:
        return False
    return _text_agreement(m.group(2), m.group(1).upper(), opts) == "other"


def _bare(text: str, start: int, opts: _Options | None) -> Extraction:
    """A reply that is nothing but the answer ("B", "(B) Stroma", "Yes."), as direct prompts ask.

    Only a short single line counts. For multiple choice it must be exactly one valid letter
    (with that option's text, if any text follows); for open questions at most five words.
    Anything else without a marked answer stays unparsed.
    """
    s, e = _trim(text, start, len(text))
    if s >= e or e - s > _BARE_MAX_CHARS or "\n" in text[s:e]:
        return _NONE
    reply = text[s:e]
    if opts is None:
        if len(reply.split()) > _BARE_MAX_OPEN_WORDS:
            return _NONE
        norm = normalize_open(reply)
        return Extraction(norm, "bare", (s, e), True) if norm else _NONE
    by_text = opts.by_norm.get(normalize_open(reply))
    if by_text:
        return Extraction(by_text, "bare", (s, e), True)  # the reply is one option's text
    m = _BARE_MC_RE.match(reply)
    if m is None:
        return _NONE
    letter, rest = m.group(1).upper(), m.group(2)
    if letter not in opts.letters:
        return _NONE
    if rest is not None and normalize_open(rest) != opts.normed[LETTERS.index(letter)]:
        return _NONE
    return Extraction(letter, "bare", (s, e), True)


def extract(text: str | None, options: Sequence[str] | None = None) -> Extraction:
    """Find the final answer in a response (option letter, or normalised text when no options)."""
    return _extract(text, _prepare(tuple(options)) if options else None)


# --------------------------------------------------------------------------- grading

def _grade_open(answer: str, gold_norm: str) -> bool:
    pred = normalize_open(answer)
    if pred == gold_norm:
        return True
    if gold_norm in _YES_NO:
        return yes_no_reading(pred) == gold_norm
    return False


def _grade_mc(answer: str, gold: str, opts: _Options) -> bool:
    a = answer.strip().upper()
    if len(a) == 1 and a in LETTERS:
        return a == gold.strip().upper()
    letter = opts.by_norm.get(normalize_open(answer))
    return letter is not None and letter == gold.strip().upper()


def _item_fields(item: Any) -> tuple[list[str], str | None]:
    if isinstance(item, dict):
        return list(item.get("options") or []), item.get("answer")
    return list(getattr(item, "options", None) or []), getattr(item, "answer", None)


def grade(extraction: Extraction, item: Item | dict[str, Any]) -> bool | None:
    """Whether the extracted answer matches the item's answer; None when there is nothing to grade."""
    options, gold = _item_fields(item)
    if extraction.answer is None or gold is None or not str(gold).strip():
        return None
    if options:
        return _grade_mc(extraction.answer, str(gold), _prepare(tuple(options)))  # type: ignore[arg-type]
    return _grade_open(extraction.answer, normalize_open(str(gold)))


def grade_text(text: str | None, item: Item | dict[str, Any]) -> tuple[Extraction, bool | None]:
    """Extract the answer of one response and grade it against the item."""
    options, _ = _item_fields(item)
    ex = extract(text, options or None)
    return ex, grade(ex, item)


# --------------------------------------------------------------------------- grade stage

Judge = Callable[[list[tuple[Item, str]]], list["bool | None"]]
# (item, reply) -> the letter the reply commits to, "NONE", or None (reply unreadable, failed).
ChoiceJudge = Callable[[list[tuple[Item, str]]], list["str | None"]]
CHOICE_NONE = "NONE"
_JUDGE_REPLY_CHARS = 6000


def judge_eligible(ex: Extraction) -> bool:
    """Whether the model-based reading may look at a reply: no rule read it and none refused it.

    A reply that gave an invalid or several answers, wrote an invented continuation, or
    left its thinking open keeps no answer whatever a model would read into it.
    """
    return ex.answer is None and ex.terminated and not ex.refused


def reply_for_judge(text: str) -> str:
    """The part of a reply the model-based reading sees: after the thinking, at most the last 6000 characters."""
    start = _thinking_end(text) or 0
    return text[start:].strip()[-_JUDGE_REPLY_CHARS:]


def _items_by_id(items: pa.Table, wanted: set[str]) -> dict[str, Item]:
    return {it.id: it for it in items_from_table(
        items.filter(pc.is_in(items.column("id"), pa.array(sorted(wanted)))))}


def grade_generations(
    generations: pa.Table,
    items: pa.Table,
    config: GradeConfig | None = None,
    judge: Judge | None = None,
    choice_judge: ChoiceJudge | None = None,
) -> pa.Table:
    """One verdict per generation (VERDICT_SCHEMA): extracted answer, rule, correctness.

    Failed generations (an error, or no text) and generations whose item is not in `items`
    get ``correct=None`` and method "none". With `judge`, open-ended answers that the rules
    did not accept are sent to it as (item, answer text as written); its True/False replaces
    the verdict with method "judge", and its None keeps the rule-based verdict. With
    `choice_judge`, multiple-choice replies that no rule read and none refused
    (`judge_eligible`) are sent to it as (item, reply); a valid letter it returns becomes the
    answer with method "judge", "NONE" or an unreadable reply keeps no answer.
    """
    del config  # the judge callables are built by the caller from the grade config
    ids = items.column("id").to_pylist()
    options_col = items.column("options").to_pylist()
    answers_col = items.column("answer").to_pylist()
    prepared: dict[str, tuple[_Options | None, str, str]] = {}
    for item_id, options, gold in zip(ids, options_col, answers_col, strict=True):
        opts = _prepare(tuple(options)) if options else None
        gold_key = gold.strip().upper() if opts is not None else normalize_open(gold)
        prepared[item_id] = (opts, gold, gold_key)

    cols = {name: generations.column(name).to_pylist() for name in
            ("key", "item_id", "source", "teacher", "sample_index", "text", "error")}
    n = generations.num_rows
    answer: list[str | None] = [None] * n
    method: list[str] = ["none"] * n
    span_start: list[int | None] = [None] * n
    span_end: list[int | None] = [None] * n
    terminated: list[bool] = [True] * n
    correct: list[bool | None] = [None] * n
    invalid: list[str | None] = [None] * n
    to_judge: list[int] = []
    to_read: list[int] = []

    texts, errors, item_ids = cols["text"], cols["error"], cols["item_id"]
    for r in range(n):
        text = texts[r]
        entry = prepared.get(item_ids[r])
        if errors[r] or text is None or entry is None:
            continue
        opts, _, gold_key = entry
        ex = _extract(text, opts)
        terminated[r] = ex.terminated
        if ex.answer is None:
            invalid[r] = ex.invalid[:500] if ex.invalid else None
            if choice_judge is not None and opts is not None and judge_eligible(ex):
                to_read.append(r)
            continue
        answer[r] = ex.answer
        method[r] = ex.method
        span_start[r], span_end[r] = ex.span  # type: ignore[misc]
        if opts is not None:
            ok = ex.answer == gold_key if len(ex.answer) == 1 else _grade_mc(ex.answer, gold_key, opts)
        else:
            ok = _grade_open(ex.answer, gold_key)
        correct[r] = ok
        if judge is not None and opts is None and not ok:
            to_judge.append(r)

    if choice_judge is not None and to_read:
        item_objs = _items_by_id(items, {item_ids[r] for r in to_read})
        readings = choice_judge([(item_objs[item_ids[r]], reply_for_judge(texts[r])) for r in to_read])
        if len(readings) != len(to_read):
            raise ValueError(f"choice judge returned {len(readings)} readings for {len(to_read)} replies")
        for r, letter in zip(to_read, readings, strict=True):
            opts, _, gold_key = prepared[item_ids[r]]
            if letter is None or letter == CHOICE_NONE or opts is None or letter not in opts.letters:
                continue
            answer[r], method[r], correct[r] = letter, "judge", letter == gold_key

    if judge is not None and to_judge:
        item_objs = _items_by_id(items, {item_ids[r] for r in to_judge})
        pairs = [(item_objs[item_ids[r]], texts[r][span_start[r]:span_end[r]]) for r in to_judge]
        results = judge(pairs)
        if len(results) != len(pairs):
            raise ValueError(f"judge returned {len(results)} results for {len(pairs)} answers")
        for r, res in zip(to_judge, results, strict=True):
            if res is not None:
                correct[r] = bool(res)
                method[r] = "judge"

    return pa.table(
        {
            "key": cols["key"], "item_id": item_ids, "source": cols["source"],
            "teacher": cols["teacher"], "sample_index": cols["sample_index"],
            "answer": answer, "method": method, "span_start": span_start,
            "span_end": span_end, "terminated": terminated, "correct": correct,
            "invalid": invalid,
        },
        schema=VERDICT_SCHEMA,
    )
