"""The clinical task taxonomy (19 categories in 5 families) and the task-assignment reply parser.

Each category fixes how its question is written: the stem style (short, long or either),
the answer formats it may use, and whether an explicit image marker is required. The
task-assignment model returns the categories a record supports as an XML list:

    <categories>
      <category id="diagnosis">
        <answer>the answer a question of this kind would have</answer>
        <evidence>where the record supports it</evidence>
      </category>
    </categories>

`parse_categories` reads that strictly: anything that is not exactly one well-formed
`<categories>` block of known ids is a parse failure (the caller re-asks or counts it), and a
category without both an answer and evidence does not count.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from medrecipe.curate import ParseError

StemStyle = Literal["short", "long", "either"]
AnswerFormat = Literal["mcq", "yes_no", "true_false", "normal_abnormal"]

# Fixed option sets of the binary formats, in the order they are offered.
BINARY_OPTIONS: dict[str, tuple[str, str]] = {
    "yes_no": ("Yes", "No"),
    "true_false": ("True", "False"),
    "normal_abnormal": ("Normal", "Abnormal"),
}
ANSWER_FORMAT_TEXT = {
    "mcq": "multiple choice with 4 or 5 options",
    "yes_no": "Yes/No (options exactly \"Yes\", \"No\")",
    "true_false": "True/False (options exactly \"True\", \"False\")",
    "normal_abnormal": "Normal/Abnormal (options exactly \"Normal\", \"Abnormal\")",
}


@dataclass(frozen=True)
class Category:
    """One clinical task category: its id, label, family and how its questions are written."""

    id: str
    label: str
    family: str
    stem_style: StemStyle
    formats: tuple[AnswerFormat, ...]  # allowed answer formats; the first is preferred
    needs_marker: bool = False  # only when the record describes an explicit marker
    positional: bool = False  # options must be positions; the stem says "the finding"

    def allows_style(self, style: str) -> bool:
        """True when a question of this category may use `style` (short or long)."""
        return style in ("short", "long") and self.stem_style in (style, "either")


_C = Category
CATEGORIES: tuple[Category, ...] = (
    # Perception
    _C("findings", "findings / description", "perception", "short", ("mcq", "true_false")),
    _C("anatomy", "anatomy / localization", "perception", "short", ("mcq",)),
    _C("normal_abnormal", "normal vs. abnormal", "perception", "either", ("normal_abnormal",)),
    _C("annotation_marker", "annotation / marker", "perception", "short", ("mcq", "yes_no"),
       needs_marker=True),
    _C("spatial_location", "spatial location", "perception", "short", ("mcq",), positional=True),
    _C("counting", "counting", "perception", "short", ("mcq",)),
    # Diagnosis
    _C("diagnosis", "diagnosis", "diagnosis", "either", ("mcq",)),
    _C("mechanism", "mechanism / pathophysiology", "diagnosis", "short", ("mcq",)),
    _C("differential_diagnosis", "differential diagnosis", "diagnosis", "either", ("mcq",)),
    _C("severity_grading", "severity grading", "diagnosis", "either", ("mcq",)),
    # Management
    _C("next_step_management", "next-step management", "management", "long", ("mcq",)),
    _C("surgical_management", "surgical management", "management", "long", ("mcq",)),
    _C("drug_therapy", "drug therapy", "management", "long", ("mcq",)),
    # Risk
    _C("complications", "complications", "risk", "long", ("mcq",)),
    _C("prognosis", "prognosis", "risk", "either", ("mcq",)),
    _C("symptoms_signs", "symptoms / signs", "risk", "either", ("mcq",)),
    _C("safety_contraindications", "safety / contraindications", "risk", "long",
       ("mcq", "yes_no")),
    _C("hereditary_risk", "hereditary risk", "risk", "either", ("mcq", "true_false")),
    # Workup
    _C("next_step_test", "next-step diagnostic test", "workup", "long", ("mcq",)),
)
BY_ID: dict[str, Category] = {c.id: c for c in CATEGORIES}
FAMILIES: tuple[str, ...] = ("perception", "diagnosis", "management", "risk", "workup")
CATEGORY_IDS: tuple[str, ...] = tuple(BY_ID)

# An explicit marker in the record text: arrows, circles, boxes, pointers and the like.
MARKER_RE = re.compile(
    r"\b(arrows?|arrowheads?|asterisks?|stars?|circled?|circles|encircled|boxed|boxes|"
    r"rectangles?|pointers?|outlined|dashed (?:line|outline)s?|dotted (?:line|outline)s?|"
    r"(?:yellow|red|white|black|blue|green) (?:line|outline|mark)s?)\b",
    re.IGNORECASE)


def get(category_id: str) -> Category:
    """The category with this id; KeyError names the known ids."""
    try:
        return BY_ID[category_id]
    except KeyError:
        raise KeyError(f"unknown category {category_id!r}; known: {', '.join(CATEGORY_IDS)}") \
            from None


def has_explicit_marker(*texts: str | None) -> bool:
    """True when any text describes an explicit marker (arrow, circle, box, pointer, ...)."""
    return any(t and MARKER_RE.search(t) for t in texts)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Assigned:
    """One category the model says a record supports, with its answer and evidence."""

    category: str
    answer: str
    evidence: str


_BLOCK = re.compile(r"<categories\b[^>]*?(?:/>|>.*?</categories\s*>)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def _text(el: ET.Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def parse_categories(reply: str | None, allowed: Iterable[str] | None = None
                     ) -> tuple[list[Assigned], int]:
    """Supported categories from a task-assignment reply, and how many lacked answer/evidence.

    Raises ParseError unless the reply holds exactly one `<categories>` block whose children
    are all `<category id="...">` elements with distinct ids among `allowed` (default: all).
    """
    offered = set(allowed) if allowed is not None else set(BY_ID)
    text = _FENCE.sub("", (reply or "").strip())
    blocks = _BLOCK.findall(text)
    if len(blocks) != 1:
        raise ParseError(f"expected one <categories> block, found {len(blocks)}")
    block = blocks[0]
    if "<!" in block:  # no DOCTYPE / ENTITY / CDATA tricks: plain elements only
        raise ParseError("declarations are not allowed in the <categories> block")
    try:
        root = ET.fromstring(block)
    except ET.ParseError as e:
        raise ParseError(f"the <categories> block is not well-formed XML: {e}") from None
    out: list[Assigned] = []
    seen: set[str] = set()
    without_evidence = 0
    for child in root:
        if child.tag != "category":
            raise ParseError(f"unexpected element <{child.tag}> inside <categories>")
        cid = (child.get("id") or "").strip()
        if cid not in offered:
            raise ParseError(f"category id {cid!r} is not one of the offered ids")
        if cid in seen:
            raise ParseError(f"category {cid!r} is listed twice")
        seen.add(cid)
        answer, evidence = _text(child.find("answer")), _text(child.find("evidence"))
        if not answer or not evidence:
            without_evidence += 1  # the rule: a category needs both to count
            continue
        out.append(Assigned(cid, answer, evidence))
    return out, without_evidence
