"""The grade stage: one verdict per generation, as an Arrow table in VERDICT_SCHEMA."""

from __future__ import annotations

import pyarrow as pa
import pytest

from medrecipe.answers import grade_generations
from medrecipe.config import GradeConfig
from medrecipe.schema import (
    GENERATION_SCHEMA,
    ITEM_SCHEMA,
    VERDICT_SCHEMA,
    Generation,
    Item,
    Verdict,
    records_from_table,
    to_table,
)

ITEMS = [
    Item(id="mc1", source="bcss", task="mm_classification", question="Tissue?",
         options=["Tumor", "Stroma", "Inflammatory", "Necrosis"], answer="B"),
    Item(id="op1", source="vqa_rad", task="open_vqa", question="Is there a fracture?", answer="no"),
    Item(id="op2", source="vqa_rad", task="open_vqa", question="Which organ is enlarged?", answer="spleen"),
]


def gen(key: str, item_id: str, text: str | None, *, error: str | None = None, sample: int = 0) -> Generation:
    return Generation(key=key, item_id=item_id, source="src-" + item_id, teacher="t1", model="m",
                      sample_index=sample, text=text, error=error)


GENERATIONS = [
    gen("g1", "mc1", "<think>Spindle cells.</think>\n\\boxed{B: Stroma}"),
    gen("g2", "mc1", "<think>Atypia.</think>\nAnswer: (A)", sample=1),
    gen("g3", "mc1", None, error="HTTP 500 after 5 retries", sample=2),
    gen("g4", "mc1", None, sample=3),
    gen("g5", "mc1", "<think>Let me think about the stroma", sample=4),
    gen("g6", "op1", "The cortex is intact. Final answer: No, there is no fracture."),
    gen("g7", "op2", "The spleen is large.\nAnswer: the Spleen's lower pole"),
    gen("g8", "op2", "No final answer here at all.", sample=1),
    gen("g9", "missing-item", "\\boxed{B}"),
    gen("g10", "mc1", "\\boxed{F}", sample=5),
]


@pytest.fixture()
def tables():
    return to_table(GENERATIONS, GENERATION_SCHEMA), to_table(ITEMS, ITEM_SCHEMA)


def by_key(table: pa.Table) -> dict[str, dict]:
    return {row["key"]: row for row in table.to_pylist()}


def test_one_verdict_per_generation_in_schema(tables):
    gens, items = tables
    out = grade_generations(gens, items, GradeConfig())
    assert out.schema == VERDICT_SCHEMA
    assert out.column("key").to_pylist() == [g.key for g in GENERATIONS]
    verdicts = records_from_table(out, Verdict)
    assert all(isinstance(v, Verdict) for v in verdicts)
    v = by_key(out)
    assert (v["g2"]["source"], v["g2"]["teacher"], v["g2"]["sample_index"]) == ("src-mc1", "t1", 1)


def test_verdicts_carry_answer_method_span_and_correctness(tables):
    gens, items = tables
    v = by_key(grade_generations(gens, items, GradeConfig()))
    g1_text = GENERATIONS[0].text
    assert (v["g1"]["answer"], v["g1"]["method"], v["g1"]["correct"]) == ("B", "boxed", True)
    assert g1_text[v["g1"]["span_start"] : v["g1"]["span_end"]] == "B: Stroma"
    assert (v["g2"]["answer"], v["g2"]["method"], v["g2"]["correct"]) == ("A", "answer_phrase", False)
    assert (v["g6"]["answer"], v["g6"]["method"], v["g6"]["correct"]) == ("no", "answer_phrase", True)
    assert v["g7"]["correct"] is False  # free text, not an exact match after normalisation


def test_failed_unparsed_unterminated_and_orphan_generations_are_not_graded(tables):
    gens, items = tables
    v = by_key(grade_generations(gens, items, GradeConfig()))
    for key in ("g3", "g4", "g5", "g8", "g9", "g10"):
        row = v[key]
        assert row["correct"] is None, key
        assert row["method"] == "none" and row["answer"] is None, key
        assert row["span_start"] is None and row["span_end"] is None, key
    assert v["g5"]["terminated"] is False
    assert all(v[k]["terminated"] is True for k in ("g1", "g3", "g8", "g10"))


def test_judge_grades_only_open_answers_the_rules_rejected(tables):
    gens, items = tables
    seen: list[tuple[str, str]] = []

    def judge(pairs):
        seen.extend((item.id, answer) for item, answer in pairs)
        return [True for _ in pairs]

    v = by_key(grade_generations(gens, items, GradeConfig(judge="grader"), judge=judge))
    # g7 is the only open answer that was parsed and not accepted; the judge sees it as written.
    assert seen == [("op2", "the Spleen's lower pole")]
    assert (v["g7"]["method"], v["g7"]["correct"]) == ("judge", True)
    assert v["g7"]["answer"] == "spleens lower pole"
    assert (v["g6"]["method"], v["g6"]["correct"]) == ("answer_phrase", True)
    assert (v["g2"]["method"], v["g2"]["correct"]) == ("answer_phrase", False)  # MC never judged
    assert v["g8"]["method"] == "none"  # nothing parsed: nothing to judge


def test_judge_abstaining_keeps_rule_verdict(tables):
    gens, items = tables
    v = by_key(grade_generations(gens, items, GradeConfig(), judge=lambda pairs: [None] * len(pairs)))
    assert (v["g7"]["method"], v["g7"]["correct"]) == ("answer_phrase", False)


def test_judge_returning_wrong_count_is_an_error(tables):
    gens, items = tables
    with pytest.raises(ValueError, match="judge returned 0 results for 1"):
        grade_generations(gens, items, GradeConfig(), judge=lambda pairs: [])


def test_empty_generations_give_empty_verdicts(tables):
    _, items = tables
    out = grade_generations(GENERATION_SCHEMA.empty_table(), items, GradeConfig())
    assert out.num_rows == 0 and out.schema == VERDICT_SCHEMA


def test_an_invalid_final_answer_is_kept_apart_from_no_answer():
    from medrecipe.answers import grade_generations
    from medrecipe.schema import GENERATION_SCHEMA, ITEM_SCHEMA, Generation, Item, to_table

    item = Item(id="s/1", source="s", task="text", question="Q?", options=["a", "b", "c", "d"],
                answer="B")
    gens = [Generation(key=k, item_id="s/1", teacher="t", model="m", text=t)
            for k, t in (("g1", "\\boxed{F}"), ("g2", "I am not sure."), ("g3", "\\boxed{B}"))]
    v = grade_generations(to_table(gens, GENERATION_SCHEMA), to_table([item], ITEM_SCHEMA))
    rows = {r["key"]: r for r in v.to_pylist()}
    assert rows["g1"]["correct"] is None and rows["g1"]["invalid"] == "F"
    assert rows["g2"]["correct"] is None and rows["g2"]["invalid"] is None
    assert rows["g3"]["correct"] is True and rows["g3"]["invalid"] is None


def test_choice_judge_reads_only_replies_no_rule_read_and_none_refused():
    gens = to_table([
        gen("c1", "mc1", "I would go with the second of them."),
        gen("c2", "mc1", "The answer is A, B, and C.", sample=1),
        gen("c3", "mc1", "Let me think.\n\nQuestion: A 50-year-old man has a rash.\nAnswer: B", sample=2),
        gen("c4", "mc1", "<think>stroma, maybe", sample=3),
        gen("c5", "mc1", "Answer: (A)", sample=4),
        gen("c6", "mc1", "Hard to say between them.", sample=5),
        gen("c7", "mc1", "Some words about spindle cells.", sample=6),
        gen("c8", "op2", "No final answer here at all."),
        gen("c9", "mc1", None, error="HTTP 500", sample=7),
    ], GENERATION_SCHEMA)
    items = to_table(ITEMS, ITEM_SCHEMA)
    seen: list[str] = []

    def reader(pairs):
        seen.extend(reply for _, reply in pairs)
        return ["B" if "second" in r else "NONE" if "Hard" in r else None for _, r in pairs]

    v = by_key(grade_generations(gens, items, GradeConfig(choice_judge="reader"), choice_judge=reader))
    assert seen == ["I would go with the second of them.", "Hard to say between them.",
                    "Some words about spindle cells."]
    assert (v["c1"]["answer"], v["c1"]["method"], v["c1"]["correct"]) == ("B", "judge", True)
    assert (v["c1"]["span_start"], v["c1"]["span_end"]) == (None, None)
    for key in ("c2", "c3", "c6", "c7", "c8", "c9"):
        assert (v[key]["answer"], v[key]["method"], v[key]["correct"]) == (None, "none", None), key
    assert v["c4"]["terminated"] is False and v["c4"]["method"] == "none"
    assert (v["c5"]["answer"], v["c5"]["method"]) == ("A", "answer_phrase")
    assert v["c2"]["invalid"] is not None  # several letters stay an invalid final answer


def test_choice_judge_letter_outside_the_options_is_not_an_answer():
    gens = to_table([gen("c1", "mc1", "I would go with the fifth one.")], GENERATION_SCHEMA)
    v = by_key(grade_generations(gens, to_table(ITEMS, ITEM_SCHEMA), GradeConfig(),
                                 choice_judge=lambda pairs: ["E"] * len(pairs)))
    assert (v["c1"]["answer"], v["c1"]["method"]) == (None, "none")
