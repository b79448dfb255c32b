"""Parsing the curation models' replies strictly, the English check and the code checks."""

from __future__ import annotations

import json

import pytest

from medrecipe.curate import ParseError
from medrecipe.curate.config import ChecksConfig
from medrecipe.curate.context import CRITERIA, english_check, parse_context_verdict
from medrecipe.curate.questions import (
    Invalid,
    WrittenQuestion,
    check_question,
    parse_question,
    probe_outcome,
)
from medrecipe.curate.taxonomy import (
    CATEGORIES,
    FAMILIES,
    get,
    has_explicit_marker,
    parse_categories,
)


def _verdict(**fail):
    return {c: {"verdict": "fail" if c in fail else "pass", "reason": fail.get(c, "Fine.")}
            for c in CRITERIA}


def test_taxonomy_has_nineteen_categories_in_five_families_with_their_routing():
    assert len(CATEGORIES) == 19 and FAMILIES == ("perception", "diagnosis", "management",
                                                  "risk", "workup")
    by_family = {f: [c.id for c in CATEGORIES if c.family == f] for f in FAMILIES}
    assert [len(v) for v in by_family.values()] == [6, 4, 3, 5, 1]
    short = {c.id for c in CATEGORIES if c.stem_style == "short"}
    long_ = {c.id for c in CATEGORIES if c.stem_style == "long"}
    assert short == {"findings", "anatomy", "spatial_location", "counting", "annotation_marker",
                     "mechanism"}
    assert long_ == {"next_step_test", "next_step_management", "surgical_management",
                     "drug_therapy", "safety_contraindications", "complications"}
    assert get("normal_abnormal").formats == ("normal_abnormal",)
    assert has_explicit_marker("lesion (arrowhead)") and not has_explicit_marker("a lesion")


def test_context_verdict_parses_only_the_schema():
    v = parse_context_verdict(json.dumps(_verdict(clinical_relevance="A mouse model.")))
    assert v.failed() == ["clinical_relevance"]
    assert parse_context_verdict("```json\n" + json.dumps(_verdict()) + "\n```").failed() == []
    broken = [
        "The record is fine.",  # no JSON
        json.dumps({k: v for k, v in _verdict().items() if k != "reasoning_readiness"}),
        json.dumps({**_verdict(), "overall": {"verdict": "pass", "reason": "x"}}),  # extra key
        json.dumps({**_verdict(), "textual_adequacy": {"verdict": "yes", "reason": "x"}}),
        json.dumps({**_verdict(), "textual_adequacy": {"verdict": "pass", "reason": ""}}),
        json.dumps({**_verdict(), "textual_adequacy": {"verdict": "pass",
                                                       "reason": "One.\nTwo."}}),
        json.dumps(_verdict()) + json.dumps(_verdict()),  # two objects
        '{"textual_adequacy": {"verdict": "pass", "reason": "cut',
    ]
    for text in broken:
        with pytest.raises(ParseError):
            parse_context_verdict(text)


@pytest.mark.parametrize("text,language", [
    ("Axial contrast-enhanced CT of the abdomen showing a hypodense lesion in the right "
     "hepatic lobe with peripheral enhancement.", "en"),
    ("Chest radiograph: right lower lobe consolidation (arrow), small effusion, normal heart "
     "size.", "undetermined"),  # telegraphic English is not rejected
    ("Tomografía computarizada del abdomen que muestra una lesión hipodensa en el lóbulo "
     "derecho con realce periférico.", "other"),
    ("Radiographie thoracique de face montrant une opacité du lobe inférieur droit avec un "
     "épanchement pleural.", "other"),
    ("Axiale CT des Abdomens mit einer hypodensen Läsion im rechten Leberlappen und einer "
     "Kapsel.", "other"),
    ("胸部X线片显示右下肺叶实变伴胸腔积液", "other"),
    ("CT abdomen.", "undetermined"),
])
def test_english_check_needs_no_model(text, language):
    assert english_check([text]).language == language


def test_task_categories_parse_strictly():
    good = ('Here you go:\n<categories>\n <category id="diagnosis"><answer>haemangioma</answer>'
            '<evidence>peripheral nodular enhancement</evidence></category>\n'
            ' <category id="prognosis"><answer>good</answer><evidence></evidence></category>\n'
            '</categories>')
    assigned, without = parse_categories(good)
    assert [a.category for a in assigned] == ["diagnosis"] and without == 1
    assert parse_categories("<categories></categories>") == ([], 0)
    assert parse_categories("<categories/>") == ([], 0)
    bad = [
        "diagnosis, prognosis",
        '<categories><category id="diagnosis"><answer>x</answer>',  # unclosed
        '<categories><category id="size"><answer>x</answer><evidence>y</evidence>'
        '</category></categories>',  # unknown id
        '<categories><category id="diagnosis"/><category id="diagnosis"/></categories>',
        '<categories><item id="diagnosis"/></categories>',
        "<categories></categories><categories></categories>",
        '<categories><!ENTITY x "y"></categories>',
    ]
    for text in bad:
        with pytest.raises(ParseError):
            parse_categories(text)
    with pytest.raises(ParseError, match="not one of the offered"):
        parse_categories('<categories><category id="counting"/></categories>', ["diagnosis"])


def _question(**over):
    q = {"stem": "What is the most likely diagnosis of the lesion shown?",
         "options": ["Haemangioma", "Metastasis", "Hepatoma", "Simple cyst"], "correct": "A",
         "answer_format": "mcq", "rationale": "Peripheral nodular enhancement.",
         "image_scope": "panel a", "stem_style": "short", "key_finding": "nodular enhancement"}
    q.update(over)
    return json.dumps(q)


def test_question_replies_parse_against_their_category():
    diag = get("diagnosis")
    q = parse_question(_question(options=["A. Haemangioma", "B) Metastasis", "Hepatoma",
                                          "Simple cyst"], correct="(a)"), diag)
    assert isinstance(q, WrittenQuestion) and q.options[:2] == ["Haemangioma", "Metastasis"]
    assert q.correct == "A" and q.answer_text == "Haemangioma"
    assert parse_question("INVALID: the record has no outcome data.", diag) == Invalid(
        "the record has no outcome data.")
    assert parse_question("INVALID", diag) == Invalid("")
    yn = parse_question(_question(options=["normal", "ABNORMAL"], correct="B",
                                  answer_format="normal_abnormal"), get("normal_abnormal"))
    assert yn.options == ["Normal", "Abnormal"]
    bad = [
        (_question(answer_format="yes_no", options=["Yes", "No"]), diag),  # format not allowed
        (_question(options=["a", "b", "c"]), diag),  # 3 options for multiple choice
        (_question(correct="E"), diag),  # no such option
        (_question(stem_style="long"), get("findings")),  # findings: short stems only
        (_question(stem_style="short"), get("drug_therapy")),  # drug therapy: long only
        (_question(answer_format="true_false", options=["Yes", "No"]), get("findings")),
        (_question(rationale=""), diag),
        (_question(extra="field"), diag),
        ("Here is a question: what is shown?", diag),
    ]
    for text, cat in bad:
        with pytest.raises(ParseError):
            parse_question(text, cat)


def _q(**over) -> WrittenQuestion:
    return parse_question(_question(**over), get("diagnosis"))  # short multiple choice


def test_code_checks_each_have_their_own_reason():
    cfg = ChecksConfig()
    diag, spatial = get("diagnosis"), get("spatial_location")
    assert check_question(_q(), diag, cfg) == []
    assert check_question(_q(stem="This CT shows a haemangioma. What is the diagnosis here?"),
                          diag, cfg) == ["leakage_answer"]
    assert check_question(_q(stem="The CT shows nodular enhancement at the rim. Diagnosis?"),
                          diag, cfg) == ["leakage_key_finding"]
    assert check_question(_q(), diag, cfg, planned_answer="haemangioma") == []
    assert check_question(_q(stem="Which diagnosis fits this likely haemangioma-like lesion?"),
                          diag, cfg) == ["leakage_answer"]
    assert check_question(_q(options=["Cyst", "cyst ", "Hepatoma", "Metastasis"]), diag,
                          cfg) == ["duplicate_options"]
    assert check_question(_q(options=["Haemangioma", "None of the above", "All of the above",
                                      "Unknown"]), diag, cfg) == ["single_plausible_option"]
    long_answer = "A benign cavernous haemangioma with slow centripetal fill-in over time"
    assert check_question(_q(options=[long_answer, "Cyst", "Abscess", "Adenoma"]), diag,
                          cfg) == ["single_plausible_option"]
    where = {"stem": "Where is the finding located on this image?", "stem_style": "short",
             "options": ["Right hepatic lobe", "Left hepatic lobe", "Caudate region, posterior",
                         "Medial segment"]}
    assert check_question(_q(**where), spatial, cfg) == []
    assert check_question(_q(**{**where, "options": ["Haemangioma", "Cyst", "Right lobe",
                                                     "Left lobe"]}), spatial, cfg) == [
        "spatial_not_positional"]
    assert check_question(_q(**{**where, "stem": "Where is the haemangioma located?"}), spatial,
                          cfg) == ["spatial_names_finding"]
    off = ChecksConfig(leakage=False, options=False, positional=False)
    assert check_question(_q(options=["Cyst", "cyst", "Hepatoma", "Metastasis"],
                             stem="A haemangioma? Which is the diagnosis of it?"), diag, off) == []


def test_probe_outcome_counts_only_extracted_correct_answers():
    q = _q()
    all_right = probe_outcome(["\\boxed{A}", "The answer is A.", "<answer>A</answer>"],
                              [None, None, None], q)
    assert all_right.correct == 3 and all_right.text_solvable
    mixed = probe_outcome(["\\boxed{A}", "\\boxed{B}", "I cannot tell without the image."],
                          [None, None, None], q)
    assert mixed.answers == ("A", "B", None) and not mixed.text_solvable
    failed = probe_outcome(["\\boxed{A}", None], [None, "HTTP 500"], q)
    assert failed.failed == 1 and not failed.text_solvable
