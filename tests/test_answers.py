"""Answer extraction: one group per rule and per trap, then normalisation and grading.

Each case is (response, options, expected answer, expected method, expected span text).
The span text is the part of the response the extractor reports as the answer, checked
with ``text[start:end]`` (None: no span expected, or not checked when marked ``...``).
"""

from __future__ import annotations

import pytest

from medrecipe.answers import (
    METHODS,
    Extraction,
    extract,
    grade,
    grade_text,
    normalize_open,
)
from medrecipe.schema import Item

BCSS = ["Tumor", "Stroma", "Inflammatory", "Necrosis"]
TEN = [
    "Aspirin", "Heparin", "Warfarin", "Clopidogrel", "Alteplase",
    "Enoxaparin", "Dabigatran", "Rivaroxaban", "Apixaban", "Fondaparinux",
]
NESTED = ["Pneumonia", "Viral pneumonia", "Normal"]

REASONING = (
    "The biopsy shows spindle cells in a collagenous background. Option A would need "
    "atypical epithelial nests, which are absent. Option C would show many lymphocytes."
)


def case(text, options, answer, method, span=..., id=None):
    return pytest.param(text, options, answer, method, span, id=id)


def check(text, options, answer, method, span):
    ex = extract(text, options)
    assert isinstance(ex, Extraction)
    assert ex.method in METHODS
    assert (ex.answer, ex.method) == (answer, method)
    if answer is None:
        assert ex.span is None
    elif span is not ...:
        assert ex.span is not None
        assert text[ex.span[0] : ex.span[1]] == span
    return ex


# --------------------------------------------------------------------------- rule: boxed

BOXED = [
    case(r"\boxed{B}", BCSS, "B", "boxed", "B", id="plain-letter"),
    case(r"The answer is \boxed{B: Stroma}.", BCSS, "B", "boxed", "B: Stroma", id="letter-colon-text"),
    case(r"\boxed{\text{(B)}}", BCSS, "B", "boxed", r"\text{(B)}", id="text-paren-letter"),
    case(r"\boxed{\textbf{C}}", BCSS, "C", "boxed", r"\textbf{C}", id="textbf-letter"),
    case(REASONING + "\n$$\\boxed{B}$$", BCSS, "B", "boxed", "B", id="in-display-dollars"),
    case(REASONING + "\n\\[\\boxed{D}\\]", BCSS, "D", "boxed", "D", id="in-bracket-math"),
    case(r"So it is $\boxed{\mathrm{C}}$.", BCSS, "C", "boxed", r"\mathrm{C}", id="mathrm-in-inline-math"),
    case(r"\boxed{Stroma}", BCSS, "B", "boxed", "Stroma", id="option-text-only"),
    case(r"\boxed{necrosis}", BCSS, "D", "boxed", "necrosis", id="option-text-lowercase"),
    case(r"\boxed{\text{B. Stroma}}", BCSS, "B", "boxed", ..., id="letter-dot-text-in-text"),
    case(r"\boxed{Option B}", BCSS, "B", "boxed", "Option B", id="option-word-prefix"),
    case(r"\boxed { A }", BCSS, "A", "boxed", "A", id="spaces-around-brace"),
    case(r"\boxed{(D) Necrosis}", BCSS, "D", "boxed", "(D) Necrosis", id="paren-letter-text"),
    case("Reasoning...\n\n**Final:** \\boxed{C: Inflammatory}", BCSS, "C", "boxed", ..., id="after-markdown"),
]


@pytest.mark.parametrize("text,options,answer,method,span", BOXED)
def test_rule_boxed(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- rule: answer tag

ANSWER_TAG = [
    case("<think>x</think><answer>B</answer>", BCSS, "B", "answer_tag", "B", id="letter"),
    case("<answer>(C) Inflammatory</answer>", BCSS, "C", "answer_tag", "(C) Inflammatory", id="paren-letter-text"),
    case("<answer> Necrosis </answer>", BCSS, "D", "answer_tag", "Necrosis", id="option-text-trimmed-span"),
    case("<answer>The answer is D</answer>", BCSS, "D", "answer_tag", ..., id="phrase-inside-tag"),
    case("<answer>A</answer> on reflection <answer>C</answer>", BCSS, "C", "answer_tag", "C", id="last-tag-wins"),
    case("<answer>c</answer>", BCSS, "C", "answer_tag", "c", id="lowercase-letter"),
    case("<answer>B</answer>\nThe answer is (A).", BCSS, "B", "answer_tag", "B", id="tag-outranks-phrase"),
]


@pytest.mark.parametrize("text,options,answer,method,span", ANSWER_TAG)
def test_rule_answer_tag(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- rule: answer phrase

ANSWER_PHRASE = [
    case(REASONING + " The answer is (B).", BCSS, "B", "answer_phrase", "(B)", id="the-answer-is-paren"),
    case(REASONING + "\nAnswer: B", BCSS, "B", "answer_phrase", "B", id="answer-colon"),
    case(REASONING + "\nFinal answer: B", BCSS, "B", "answer_phrase", "B", id="final-answer-colon"),
    case(REASONING + "\n**Answer:** C", BCSS, "C", "answer_phrase", "C", id="bold-answer-label"),
    case(REASONING + "\n**Final Answer**: D", BCSS, "D", "answer_phrase", "D", id="bold-final-answer"),
    case("Hence the correct option is B.", BCSS, "B", "answer_phrase", "B", id="correct-option-is"),
    case("The correct answer is B: Stroma.", BCSS, "B", "answer_phrase", "B", id="letter-colon-text"),
    case("Therefore, (C) is the correct answer.", BCSS, "C", "answer_phrase", "(C)", id="reverse-paren"),
    case("Option D is correct.", BCSS, "D", "answer_phrase", "D", id="reverse-option-is-correct"),
    case("My final answer would be **B**", BCSS, "B", "answer_phrase", "B", id="would-be-bold"),
    case("The best answer is likely C.", BCSS, "C", "answer_phrase", "C", id="filler-likely"),
    case("The answer is: option B", BCSS, "B", "answer_phrase", "B", id="filler-option-word"),
    case("**Answer:**\nB", BCSS, "B", "answer_phrase", "B", id="letter-on-next-line"),
    case("Answer (letter): D", BCSS, "D", "answer_phrase", "D", id="answer-with-format-note"),
    case("The correct answer choice is (A).", BCSS, "A", "answer_phrase", "(A)", id="answer-choice-is"),
    case("The answer is B. Option A is incorrect because the answer is not A.",
         BCSS, "B", "answer_phrase", "B", id="later-negated-phrase-ignored"),
    case("I hope this answer is helpful. The answer is C.", BCSS, "C", "answer_phrase", "C", id="prose-answer-is"),
]


@pytest.mark.parametrize("text,options,answer,method,span", ANSWER_PHRASE)
def test_rule_answer_phrase(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- rule: option text

OPTION_TEXT = [
    case("<think>" + REASONING + "</think>\nThe findings indicate necrosis.", BCSS, "D", "option_text",
         "necrosis", id="after-think"),
    case("Spindle cells in collagen: most consistent with stroma.", BCSS, "B", "option_text", "stroma",
         id="only-one-option-named"),
    case("The pattern is typical of VIRAL PNEUMONIA.", NESTED, "B", "option_text", "VIRAL PNEUMONIA",
         id="longer-option-hides-shorter"),
    case("Lobar consolidation: this is pneumonia.", NESTED, "A", "option_text", "pneumonia",
         id="shorter-option-alone"),
    case("Stroma again, and stroma once more.", BCSS, "B", "option_text", "stroma", id="same-option-repeated"),
    case("The answer is a stromal reaction, not tumorous.", BCSS, None, "none", None,
         id="word-prefix-is-no-mention"),
    case("Option A (Tumor) is unlikely given the findings.", BCSS, None, "none", None,
         id="sole-option-rejected-in-prose"),
    case("This is not necrosis.", BCSS, None, "none", None, id="sole-option-negated-before"),
    case("Tumor was considered at length.\n\nConclusion: inflammatory infiltrate.", BCSS, "C",
         "option_text", "inflammatory", id="final-paragraph-only"),
    case("Granulation tissue, 3.5 mm, consistent with stroma.", BCSS, "B", "option_text", "stroma",
         id="decimal-is-no-sentence-break"),
]


@pytest.mark.parametrize("text,options,answer,method,span", OPTION_TEXT)
def test_rule_option_text(text, options, answer, method, span):
    check(text, options, answer, method, span)


def test_option_text_rule_is_off_for_yes_no_options():
    # "no" occurs in ordinary prose; counting it as the option would be a guess.
    assert extract("There is no fracture visible on this film.", ["Yes", "No"]).method == "none"
    assert extract("Final answer: No", ["Yes", "No"]).answer == "B"


# --------------------------------------------------------------------------- trap: letters in reasoning

LETTERS_IN_REASONING = [
    case("Option A looks tempting, and B too; C is unlikely.", BCSS, None, "none", None, id="letters-only-in-prose"),
    case("<think>The answer is A.</think>\nThe answer is (C).", BCSS, "C", "answer_phrase", "(C)",
         id="answer-after-think-wins"),
    case("A is less likely than B because of the margins.", BCSS, None, "none", None, id="comparison-prose"),
    case("Let me check whether the answer is A. Final answer: C", BCSS, "C", "answer_phrase", "C",
         id="whether-clause-then-final"),
    case("(A) hmm, (B) hmm, (C) maybe.", BCSS, None, "none", None, id="enumerated-letters"),
    case("<think>I pick B.</think>\n\\boxed{D}", BCSS, "D", "boxed", "D", id="think-pick-vs-box"),
    case("Check whether the answer is A.", BCSS, None, "none", None, id="only-conditional-phrase"),
]


@pytest.mark.parametrize("text,options,answer,method,span", LETTERS_IN_REASONING)
def test_trap_letters_in_reasoning(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- trap: several boxes

SEVERAL_BOXED = [
    case(r"First \boxed{A} ... wait, re-checking ... \boxed{C}", BCSS, "C", "boxed", "C", id="last-box-wins"),
    case(r"<think>\boxed{A}</think> \boxed{B}", BCSS, "B", "boxed", "B", id="box-in-think-ignored"),
    case(r"\boxed{B} and <answer>A</answer>", BCSS, "B", "boxed", "B", id="box-outranks-tag"),
    case("\\boxed{A}\n\\boxed{B", BCSS, "A", "boxed", "A", id="unbalanced-last-box-skipped"),
    case(r"\boxed{A} then \boxed{B} then \boxed{D}", BCSS, "D", "boxed", "D", id="three-boxes"),
]


@pytest.mark.parametrize("text,options,answer,method,span", SEVERAL_BOXED)
def test_trap_several_boxed(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- trap: unclosed thinking

UNCLOSED = [
    ("<think>The answer is B", BCSS, False, None),
    ("<think>\\boxed{B}", BCSS, False, None),
    ("<think>a</think>So far so good.<think>The answer is C", BCSS, False, None),
    ("Reasoning with the opening tag in the prompt.</think>\\boxed{C}", BCSS, True, "C"),
    ("<think>ok</think>\n\\boxed{B}", BCSS, True, "B"),
    ("<think>Is it yes?", None, False, None),
]


@pytest.mark.parametrize(
    "text,options,terminated,answer", UNCLOSED,
    ids=["phrase-inside-open-think", "box-inside-open-think", "reopened-and-cut",
         "close-only-prompt-opened", "closed-normally", "open-question-cut"],
)
def test_trap_unclosed_thinking(text, options, terminated, answer):
    ex = extract(text, options)
    assert ex.terminated is terminated
    assert ex.answer == answer
    if not terminated:
        assert ex.method == "none" and ex.span is None


# --------------------------------------------------------------------------- trap: lowercase letters

LOWERCASE = [
    case("The answer is (b).", BCSS, "B", "answer_phrase", "(b)", id="paren-lowercase"),
    case("Answer: c", BCSS, "C", "answer_phrase", "c", id="label-lowercase-at-end"),
    case("Final answer: d) Necrosis", BCSS, "D", "answer_phrase", "d", id="lowercase-paren-then-text"),
    case("the answer is b.", BCSS, "B", "answer_phrase", "b", id="lowercase-then-period"),
    case("The answer is a benign lesion.", BCSS, None, "none", None, id="article-a-is-not-letter"),
    case("the answer is b because of the cells", BCSS, None, "none", None, id="lowercase-before-word"),
    case(r"\boxed{c}", BCSS, "C", "boxed", "c", id="boxed-lowercase"),
    case("Answer: **a**", BCSS, "A", "answer_phrase", "a", id="bold-lowercase"),
]


@pytest.mark.parametrize("text,options,answer,method,span", LOWERCASE)
def test_trap_lowercase_letters(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- trap: option text in reasoning

OPTION_TEXT_REPEATED = [
    case("Tumor cells are absent, so I favour stroma.", BCSS, None, "none", None, id="two-options-named"),
    case("Tumor? No. Stroma? No. Necrosis, then.", BCSS, None, "none", None, id="options-walked-through"),
    case("<think>Tumor vs stroma vs necrosis.</think>Necrosis.", BCSS, "D", "option_text", "Necrosis",
         id="reasoning-hidden-by-think"),
    case("Option B (Stroma) fits; Option A (Tumor) does not. Answer: B", BCSS, "B", "answer_phrase", "B",
         id="phrase-beats-ambiguity"),
    case("Not tumor. Not inflammatory. Not necrosis.", BCSS, None, "none", None, id="negated-options"),
]


@pytest.mark.parametrize("text,options,answer,method,span", OPTION_TEXT_REPEATED)
def test_trap_option_text_repeated(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- with / without option text

WITH_WITHOUT_TEXT = [
    case("Answer: B", BCSS, "B", "answer_phrase", "B", id="letter-only"),
    case("Answer: B: Stroma", BCSS, "B", "answer_phrase", "B", id="letter-colon-text"),
    case("Answer: (B) Stroma", BCSS, "B", "answer_phrase", "(B)", id="paren-letter-text"),
    case("Answer: B. Stroma", BCSS, "B", "answer_phrase", "B", id="letter-dot-text"),
    case("Answer: Stroma", BCSS, "B", "answer_phrase", "Stroma", id="text-only"),
    case(r"\boxed{B: Tumor}", BCSS, "B", "boxed", ..., id="letter-and-text-disagree-letter-wins"),
    case("<answer>Stroma</answer>", BCSS, "B", "answer_tag", "Stroma", id="tag-text-only"),
    case(r"\boxed{A stroma}", ["Stroma", "Tumor"], "A", "boxed", ..., id="bare-A-then-its-own-text"),
]


@pytest.mark.parametrize("text,options,answer,method,span", WITH_WITHOUT_TEXT)
def test_with_and_without_option_text(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- options beyond E

BEYOND_E = [
    case(r"\boxed{J}", TEN, "J", "boxed", "J", id="boxed-J"),
    case("The answer is (H).", TEN, "H", "answer_phrase", "(H)", id="phrase-H"),
    case("Answer: Fondaparinux", TEN, "J", "answer_phrase", "Fondaparinux", id="text-of-J"),
    case("Final answer: I", TEN, "I", "answer_phrase", "I", id="letter-I-at-end"),
    case("<answer>G: Dabigatran</answer>", TEN, "G", "answer_tag", ..., id="tag-G"),
    case(r"\boxed{J}", BCSS, None, "none", None, id="J-with-four-options-invalid"),
    case("Answer: I think it is F", TEN, "F", "answer_phrase", "F", id="I-think-is-not-letter-I"),
]


@pytest.mark.parametrize("text,options,answer,method,span", BEYOND_E)
def test_options_beyond_e(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- trap: "A 45-year-old man"

A_ARTICLE = [
    case("A 45-year-old man presents with chest pain radiating to the back.", BCSS, None, "none", None,
         id="vignette-restated"),
    case("Answer: A 45-year-old man with these findings needs imaging.", BCSS, None, "none", None,
         id="label-followed-by-vignette"),
    case("A man with fever. A woman without.", BCSS, None, "none", None, id="article-before-noun"),
    case("A 45-year-old man presents with a mass. The answer is A.", BCSS, "A", "answer_phrase", "A",
         id="real-A-after-vignette"),
    case("The answer is A because the margins are infiltrative.", BCSS, "A", "answer_phrase", "A",
         id="A-because"),
    case(r"\boxed{A 45-year-old man}", BCSS, None, "none", None, id="boxed-vignette-invalid"),
]


@pytest.mark.parametrize("text,options,answer,method,span", A_ARTICLE)
def test_trap_a_45_year_old(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- invalid final answers

INVALID = [
    (r"\boxed{F}", BCSS, "F"),
    (r"\boxed{}", BCSS, ""),
    (r"\boxed{B and C}", BCSS, "B and C"),
    (r"\boxed{B, C}", BCSS, "B, C"),
    ("<answer>E</answer>", BCSS, "E"),
    ("The answer is (E).", BCSS, "(E)."),
    ("Answer: B\n\\boxed{Z}", BCSS, "Z"),
    (r"\boxed{Lymphoma}", BCSS, "Lymphoma"),
    ("Stroma is present. <answer>Fibrosis</answer>", BCSS, "Fibrosis"),
]


@pytest.mark.parametrize(
    "text,options,invalid", INVALID,
    ids=["letter-out-of-range", "empty-box", "two-letters-and", "two-letters-comma", "tag-out-of-range",
         "phrase-out-of-range", "invalid-box-no-fallback-to-phrase", "box-text-no-option",
         "invalid-tag-no-fallback-to-option-text"],
)
def test_invalid_final_answer_is_reported_not_replaced(text, options, invalid):
    ex = extract(text, options)
    assert ex.answer is None and ex.method == "none" and ex.span is None
    assert ex.invalid == invalid
    assert ex.terminated is True


def test_missing_answer_is_not_marked_invalid():
    assert extract(REASONING, BCSS).invalid is None


# --------------------------------------------------------------------------- nested braces

NESTED_BRACES = [
    case(r"\boxed{\text{\textbf{B}}}", BCSS, "B", "boxed", r"\text{\textbf{B}}", id="double-wrapped"),
    case(r"\boxed{{B}}", BCSS, "B", "boxed", "{B}", id="extra-braces"),
    case(r"$\boxed{\textbf{(C)}\ \text{Inflammatory}}$", BCSS, "C", "boxed", ..., id="letter-and-text-commands"),
    case(r"\boxed{\text{B: \{Stroma\}}}", BCSS, "B", "boxed", ..., id="escaped-braces-inside"),
    case(r"\boxed{\text{Stroma}} is {final}", BCSS, "B", "boxed", r"\text{Stroma}", id="brace-after-box"),
]


@pytest.mark.parametrize("text,options,answer,method,span", NESTED_BRACES)
def test_nested_braces(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- empty input

@pytest.mark.parametrize(
    "text", [None, "", "   \n", "<think></think>"], ids=["none", "empty", "whitespace", "empty-think"]
)
@pytest.mark.parametrize("options", [BCSS, None], ids=["mc", "open"])
def test_empty_text(text, options):
    ex = extract(text, options)
    assert ex == Extraction(None, "none", None, True)


# --------------------------------------------------------------------------- answer only inside think

INSIDE_THINK_ONLY = [
    case("<think>The answer is B.</think>", BCSS, None, "none", None, id="phrase-in-think"),
    case("<think>\\boxed{B}</think>\nI am not sure.", BCSS, None, "none", None, id="box-in-think"),
    case("<think>Final answer: B</think>\nTherefore.", BCSS, None, "none", None, id="label-in-think"),
    case("<think>It is stroma.</think>\nDone.", BCSS, None, "none", None, id="option-text-in-think"),
]


@pytest.mark.parametrize("text,options,answer,method,span", INSIDE_THINK_ONLY)
def test_answer_inside_think_only(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- open-ended, yes/no

OPEN = [
    case(r"\boxed{Yes}", None, "yes", "boxed", "Yes", id="boxed-yes"),
    case(r"\boxed{No.}", None, "no", "boxed", "No.", id="boxed-no-period"),
    case("Final answer: Yes, it is.", None, "yes", "answer_phrase", ..., id="yes-it-is"),
    case("<answer>no, there is none</answer>", None, "no", "answer_tag", ..., id="no-comma-reply"),
    case("The answer is: left lung.", None, "left lung", "answer_phrase", "left lung", id="phrase-to-sentence-end"),
    case(r"\boxed{\text{The Liver}}", None, "liver", "boxed", ..., id="article-and-case"),
    case("Answer: no evidence of fracture", None, "no evidence of fracture", "answer_phrase", ...,
         id="no-as-determiner-kept"),
    case("<think>yes</think>", None, None, "none", None, id="yes-only-in-think"),
    case("**Answer:** Pneumothorax", None, "pneumothorax", "answer_phrase", "Pneumothorax", id="bold-label"),
    case("The answer is NO", None, "no", "answer_phrase", "NO", id="uppercase-no"),
    case("Yes.", None, "yes", "bare", "Yes.", id="bare-yes-reply"),
    case("No final answer here at all.", None, None, "none", None, id="long-bare-open-reply-unparsed"),
    case("The answer is 2.5 cm.", None, "2.5 cm", "answer_phrase", "2.5 cm", id="decimal-kept"),
]


@pytest.mark.parametrize("text,options,answer,method,span", OPEN)
def test_open_ended(text, options, answer, method, span):
    check(text, options, answer, method, span)


def test_span_offsets_point_into_original_text_with_unicode_before():
    text = "İİ Çalışma — the answer is (C)."
    ex = extract(text, BCSS)
    assert ex.answer == "C" and text[ex.span[0] : ex.span[1]] == "(C)"


def test_extraction_is_frozen():
    ex = extract(r"\boxed{B}", BCSS)
    with pytest.raises(AttributeError):
        ex.answer = "A"  # type: ignore[misc]


# --------------------------------------------------------------------------- normalize_open

@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Yes.", "yes"),
        ("yes, it is", "yes"),
        ("Yeah", "yes"),
        ("No", "no"),
        ("No, there is no mass.", "no"),
        ("no evidence of fracture", "no evidence of fracture"),
        ("Nope", "no"),
        ("The Left  Lung!", "left lung"),
        ("an MRI", "mri"),
        ("2.5 cm.", "2.5 cm"),
        ("T2-weighted", "t2 weighted"),
        ("", ""),
        (None, ""),
        ("Nodule", "nodule"),
        ("Crohn's disease", "crohns disease"),
        ("Crohn’s disease", "crohns disease"),
    ],
)
def test_normalize_open(raw, expected):
    assert normalize_open(raw) == expected


def test_normalize_open_is_idempotent():
    for raw in ["No, there is none", "no evidence of it", "The Right Kidney.", "Yes it is"]:
        once = normalize_open(raw)
        assert normalize_open(once) == once


# --------------------------------------------------------------------------- grade

MC_ITEM = Item(id="q1", source="s", task="mm_classification", question="Tissue?", options=BCSS, answer="B")
OPEN_ITEM = Item(id="q2", source="s", task="open_vqa", question="Is there a fracture?", answer="No")
OPEN_TEXT_ITEM = Item(id="q3", source="s", task="open_vqa", question="Which organ?", answer="The liver")
NO_TUMOR_ITEM = Item(id="q4", source="s", task="open_vqa", question="Finding?", answer="no tumor")


@pytest.mark.parametrize(
    "extraction,item,expected",
    [
        (Extraction("B", "boxed", (0, 1)), MC_ITEM, True),
        (Extraction("C", "boxed", (0, 1)), MC_ITEM, False),
        (Extraction("Stroma", "judge", None), MC_ITEM, True),
        (Extraction("b", "answer_phrase", (0, 1)), MC_ITEM, True),
        (Extraction(None, "none", None), MC_ITEM, None),
        (Extraction(None, "none", None, invalid="F"), MC_ITEM, None),
        (Extraction("no", "boxed", (0, 2)), OPEN_ITEM, True),
        (Extraction("yes", "boxed", (0, 3)), OPEN_ITEM, False),
        (Extraction("no evidence of fracture", "answer_phrase", (0, 5)), OPEN_ITEM, True),
        (Extraction("liver", "boxed", (0, 5)), OPEN_TEXT_ITEM, True),
        (Extraction("left liver lobe", "boxed", (0, 5)), OPEN_TEXT_ITEM, False),
        (Extraction("no", "boxed", (0, 2)), NO_TUMOR_ITEM, False),
        (Extraction("No tumor.", "boxed", (0, 2)), NO_TUMOR_ITEM, True),
    ],
    ids=["mc-right", "mc-wrong", "mc-option-text", "mc-lowercase", "mc-nothing", "mc-invalid",
         "yn-right", "yn-wrong", "yn-no-determiner", "open-article", "open-wrong", "no-vs-no-tumor",
         "open-unnormalised-answer"],
)
def test_grade(extraction, item, expected):
    assert grade(extraction, item) is expected


def test_grade_accepts_plain_dicts_and_missing_gold():
    ex = Extraction("B", "boxed", (0, 1))
    assert grade(ex, {"options": BCSS, "answer": "B"}) is True
    assert grade(ex, {"options": BCSS, "answer": None}) is None
    assert grade(ex, {"options": BCSS, "answer": "  "}) is None


@pytest.mark.parametrize(
    "text,item,answer,correct",
    [
        ("<think>Collagen.</think>\\boxed{B: Stroma}", MC_ITEM, "B", True),
        ("<think>Hmm.</think>\nAnswer: (A)", MC_ITEM, "A", False),
        ("<think>never closed", MC_ITEM, None, None),
        ("Final answer: No, the cortex is intact.", OPEN_ITEM, "no", True),
        ("\\boxed{Liver}", OPEN_TEXT_ITEM, "liver", True),
    ],
    ids=["mc-correct", "mc-wrong", "unterminated", "open-yes-no", "open-text"],
)
def test_grade_text(text, item, answer, correct):
    ex, ok = grade_text(text, item)
    assert ex.answer == answer
    assert ok is correct


# --------------------------------------------------------------------------- bare replies
# Direct prompts ask for the letter only; a reply that is exactly one valid option counts.
BARE_CASES = [
    case("B", BCSS, "B", "bare", "B", id="bare-letter"),
    case("  (C)\n", BCSS, "C", "bare", "(C)", id="bare-parenthesised"),
    case("**D**", BCSS, "D", "bare", "**D**", id="bare-bold"),
    case("<think>short</think>\n\nA.", BCSS, "A", "bare", "A.", id="bare-after-think"),
    case("b", BCSS, "B", "bare", "b", id="bare-lowercase"),
    case("F", BCSS, None, "none", None, id="bare-letter-out-of-range"),
    case("A 45-year-old man", BCSS, None, "none", None, id="bare-article-not-letter"),
    case("B\nC", BCSS, None, "none", None, id="bare-two-lines"),
    case("(B) Tumor", BCSS, None, "none", None, id="bare-letter-contradicts-option-text"),
    case("B: Stroma", BCSS, "B", "option_text", "Stroma", id="letter-agrees-with-option-text"),
    case("left lower lobe", None, "left lower lobe", "bare", "left lower lobe", id="bare-open-short"),
]


@pytest.mark.parametrize("text,options,answer,method,span", BARE_CASES)
def test_rule_bare_reply(text, options, answer, method, span):
    check(text, options, answer, method, span)


# --------------------------------------------------------------------------- real-output formats
# Shapes seen in published evaluation logs of public models (tests/fixtures/extraction_devset.jsonl).

GALL = ["Cholecystitis", "Gallbladder cancer", "Choledocholithiasis", "Pancreatitis"]

JSON_ANSWERS = [
    case('{"step_by_step_thinking": "The mass and weight loss point to a tumour.", '
         '"answer_choice": "B. Gallbladder cancer"}', GALL, "B", "json", "B. Gallbladder cancer", id="answer-choice-letter-text"),
    case('{"answer": "C"}', GALL, "C", "json", "C", id="answer-key"),
    case('```json\n{"reasoning": "stones in the duct", "Answer Choice": "C"}\n```', GALL, "C", "json", "C",
         id="fenced-spaced-key"),
    case('{"final_answer": "Pancreatitis", "confidence": 0.7}', GALL, "D", "json", "Pancreatitis", id="final-answer-text"),
    case('{"correct_option": "A", "explanation": "Murphy sign with fever and leukocyto', GALL, "A", "json", "A",
         id="cut-off-after-answer"),
    case("{'answer': 'b'}", GALL, "B", "json", "b", id="single-quotes-lowercase"),
    case('{"answer_choice": "B. Pancreatitis"}', GALL, None, "none", None, id="letter-names-another-option"),
    case('{"answer_choice": "A, C"}', GALL, None, "none", None, id="several-letters"),
    case('{"answer": null}', GALL, None, "none", None, id="null-answer"),
]


@pytest.mark.parametrize("text,options,answer,method,span", JSON_ANSWERS)
def test_json_answers(text, options, answer, method, span):
    check(text, options, answer, method, span)


LETTER_WITH_TEXT = [
    case("(A) Cholecystitis\n\nFever, right upper quadrant pain and a positive Murphy sign.", GALL, "A", "lead", "(A)",
         id="paren-letter-own-text"),
    case("E. Decreased FEV1, normal FVC\n\nObstruction reduces FEV1 first.",
         ["Normal FEV1", "Low FVC", "High TLC", "Low DLCO", "Decreased FEV1, normal FVC"], "E", "lead", "E",
         id="letter-own-text-with-comma"),
    case("**Answer Choice**: D. Inhibition of lipase",
         ["Inhibition of HMG-CoA reductase", "Bile acid binding", "PPAR-alpha agonism", "Inhibition of lipase"],
         "D", "answer_phrase", "D", id="bold-answer-choice-label"),
    case("The correct answer is B. Pancreatitis.", GALL, None, "none", None, id="phrase-letter-names-another"),
    case("B. Gallbla\n\nExplanation: a porcelain gallbladder", GALL, "B", "lead", "B", id="prefix-of-own-text"),
    case("C. Cholecystitis\n\nStones obstruct the cystic duct.", GALL, None, "none", None, id="lead-names-another"),
    case("B (Gallbladder cancer)\n\nRationale: calcified wall.", GALL, "B", "lead", "B", id="letter-paren-text"),
    case("<answer>B: Pancreatitis</answer>", GALL, None, "none", None, id="tag-letter-names-another"),
]


@pytest.mark.parametrize("text,options,answer,method,span", LETTER_WITH_TEXT)
def test_letter_with_its_option_text(text, options, answer, method, span):
    check(text, options, answer, method, span)


SEVERAL_LETTERS = [
    case("The answer is A, B, and C.", GALL, None, "none", None, id="phrase-three-letters"),
    case("B, C, or D\n\nAll three can present this way.", GALL, None, "none", None, id="lead-or-list"),
    case("D, B is the correct answer.", GALL, None, "none", None, id="letter-before-reverse-phrase"),
    case("A\n\nRationale: fever and pain.\n\nTherefore, the correct answer is C.", GALL, None, "none", None,
         id="opens-with-A-closes-with-C"),
    case("A\n\nRationale: fever and pain.\n\nFinal answer: A", GALL, "A", "answer_phrase", "A", id="opens-and-closes-same"),
]


@pytest.mark.parametrize("text,options,answer,method,span", SEVERAL_LETTERS)
def test_several_letters_committed_is_no_answer(text, options, answer, method, span):
    check(text, options, answer, method, span)


CONTINUATIONS = [
    case(" D\n\nQuestion: A 30-year-old woman has jaundice. Which test is next?\nA. CT\nB. MRCP\n\nAnswer: B",
         GALL, "D", "bare", "D", id="base-model-writes-next-question"),
    case("Cholecystitis is most likely.\n\nAnswer: A\n\n## Medical Question\nWhich enzyme rises first?\n"
         "A. Lipase\nB. Amylase\n**Answer:** B", GALL, "A", "answer_phrase", "A", id="markdown-medical-question"),
    case("Final Answer: C\n\n### Example 4\nQuestion: ...\nFinal Answer: A\n\n### Example 5\nFinal Answer: B",
         GALL, "C", "answer_phrase", "C", id="several-invented-examples"),
    case("Final Answer: A\n```\nA\n```\n```python\noptions = {\"answer\": \"B\"}\n```", GALL, "A", "answer_phrase", "A",
         id="code-block-after-answer"),
    case("Question: which organ is inflamed?\nThe gallbladder wall is thick.\nAnswer: A", GALL, "A", "answer_phrase",
         "A", id="restated-question-at-start-is-kept"),
    case("Let me think.\n\nQuestion: A 50-year-old man...\nAnswer: C", GALL, None, "none", None,
         id="answer-only-in-invented-question"),
]


@pytest.mark.parametrize("text,options,answer,method,span", CONTINUATIONS)
def test_invented_continuation_is_not_read(text, options, answer, method, span):
    check(text, options, answer, method, span)


MARKUP = [
    case("Reasoning about the duct.\n\n## Answer\nC", GALL, "C", "answer_phrase", "C", id="heading-then-letter"),
    case("Reasoning.\n\n### Final Answer\n\n**B**", GALL, "B", "answer_phrase", "B", id="final-heading-bold"),
    case("Reasoning.\n<ANSWER>C</ANSWER>", GALL, "C", "answer_tag", "C", id="upper-case-tag"),
    case("Reasoning.\n\\boxed{D}", GALL, "D", "boxed", "D", id="boxed"),
    case("TP53\n", ["KRAS", "TP53", "PTEN", "Rb"], "B", "bare", "TP53", id="reply-is-one-option-text"),
    case("Gallbladder cancer is the most likely diagnosis.\n\nThe wall is calcified.", GALL, "B", "lead",
         "Gallbladder cancer", id="opens-with-option-text"),
    case("Cholecystitis is unlikely here.\n\nThe wall is calcified.", GALL, None, "none", None,
         id="opening-option-text-negated"),
    case("A. Cholecystitis: fever would be expected.\nB. Gallbladder cancer: fits the calcified wall.", GALL, None,
         "none", None, id="options-analysed-one-by-one"),
]


@pytest.mark.parametrize("text,options,answer,method,span", MARKUP)
def test_markup_and_opening_answers(text, options, answer, method, span):
    check(text, options, answer, method, span)


# Shapes from the broadened dev set (RAG pipelines, 5-shot CoT dumps, MedGemma runs).
WATERS = ["Lateral oblique maxilla", "Submentovertex", "Waters view", "Lateral skull"]
PRETERM = ["Amniocentesis.", "Administering tocolytics.", "Administration of steroids and a delivery after 48 hours.",
           "Delivery."]
RATES = ["50 beats per minute.", "70 beats per minute.", "100 beats per minute.", "120 beats per minute."]
RATE_REASONING = ("A normal adult heart rate lies between 60 and 100 beats per minute. "
                  + "Blood loss lowers the stroke volume, so the rate rises to keep the output up. " * 9)

BROADENED = [
    case('Thus, answer_choice": "B"}}', GALL, "B", "json", "B", id="json-key-lost-its-opening-quote"),
    case('```json { "best_next_step": "C" } ```', GALL, "C", "json", "C", id="json-best-next-step"),
    case('{"best_response": D, "rationale": "enzymes are high"}', GALL, "D", "json", "D", id="json-unquoted-value"),
    case('{"diagnosis_next_step": "Pancreatitis"}', GALL, "D", "json", "Pancreatitis", id="json-key-option-text"),
    case('{"answer": "C", "reason_for_answer": "stones in the duct"}', GALL, "C", "json", "C",
         id="json-prose-key-is-not-the-answer"),
    case('{"Answer Choice": {"A": "No", "B": "Yes", "C": "No", "D": "No"}}', GALL, "B", "json", ...,
         id="json-letter-flags"),
    case('{"Answer Choice": {"A": "No", "B": "Yes", "C": "Yes"}}', GALL, None, "none", None, id="json-two-flags"),
    case('{"Answer Choice A": null, "Answer Choice B": true}', GALL, "B", "json", "true", id="json-letter-in-key"),
    case('{"Answer Choice B": "tumour", "Answer Choice C": "stones"}', GALL, None, "none", None,
         id="json-two-letter-keys"),
    case('{"correct_answer": {"value": C, "text": "Choledocholithiasis"}}', GALL, "C", "json", "C",
         id="json-nested-value"),
    case('{"answer_choice": "None of the Above"}', GALL, None, "none", None, id="json-declines"),
    case('{"answer": "no"}', ["yes", "no", "maybe"], "B", "json", "no", id="json-no-is-an-option"),
    case("Answer: B. Gallbladder cancer ## Question: A 60-year-old man ... ## Response: Answer: D. Pancreatitis",
         GALL, "B", "answer_phrase", "B", id="inline-invented-question"),
    case("<unused94>thought\nStones, so C.\nFinal Answer: C<unused95>Final Answer: B", GALL, "B", "answer_phrase",
         "B", id="medgemma-thinking-closed"),
    case("Reasoning:\n1) The sinus needs an occipitomental view.\nFinal Answer: The Waters view", WATERS, "C",
         "answer_phrase", ..., id="article-before-option-text"),
    case("Reasoning:\n1) The fetus is in distress.\nFinal Answer: Delivery", PRETERM, "D", "answer_phrase", ...,
         id="option-with-trailing-period"),
    case("胆总管结石最可能。选项 (C) 正确。", GALL, "C", "answer_phrase", "C", id="chinese-option-correct"),
    case("分析如上，答案是 D", GALL, "D", "answer_phrase", "D", id="chinese-answer-is"),
    case("Therefore, option B, **Gallbladder cancer**, is the correct choice.", GALL, "B", "answer_phrase", "B",
         id="reverse-phrase-with-own-text"),
    case("Therefore, option B, Pancreatitis, is the correct choice.", GALL, None, "none", None,
         id="reverse-phrase-names-another"),
    case("the best available answer would be: A. Cholecystitis - although not certain.", GALL, "A",
         "answer_phrase", "A", id="best-available-answer"),
    case("Let us weigh them.\n\nTherefore, the most accurate answer is:\n\n**C. Choledocholithiasis**", GALL, "C",
         "answer_phrase", "C", id="most-accurate-answer-next-line"),
    case(RATE_REASONING + "the body is", RATES, None, "none", None, id="cut-off-reply-reads-no-option-text"),
    case(RATE_REASONING.strip(), RATES, "C", "option_text", ..., id="finished-reply-reads-option-text"),
]


@pytest.mark.parametrize("text,options,answer,method,span", BROADENED)
def test_broadened_real_output_shapes(text, options, answer, method, span):
    check(text, options, answer, method, span)


def test_medgemma_thinking_left_open_is_unterminated():
    ex = extract("<unused94>thought\nStones in the duct.\nFinal Answer: The final answer is $\\boxed{C}$", GALL)
    assert (ex.answer, ex.terminated) == (None, False)


def test_unterminated_thinking_stays_unanswered_with_new_rules():
    ex = extract('<think>{"answer": "B"} and the answer is B', GALL)
    assert (ex.answer, ex.terminated) == (None, False)


def test_devset_of_real_outputs_is_read():
    # Guards the figures in benchmarks/RESULTS.md: real outputs labelled by hand.
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in
            (Path(__file__).parent / "fixtures" / "extraction_devset.jsonl").read_text().splitlines() if line]
    got = [(r["label"], extract(r["output"], r["options"]).answer) for r in rows]
    exact = sum(label == answer for label, answer in got)
    invented = sum(label is None and answer is not None for label, answer in got)
    wrong = sum(label is not None and answer not in (None, label) for label, answer in got)
    assert exact / len(rows) >= 0.95
    assert invented <= 3
    assert wrong <= 1
