"""Select stage: rejection sampling, filters, caps, mixing, split and training targets."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from medrecipe.config import DifficultyFilter, MixConfig, PassRateFilter, SelectConfig
from medrecipe.errors import UserError
from medrecipe.schema import (
    GENERATION_SCHEMA,
    ITEM_SCHEMA,
    VERDICT_SCHEMA,
    Generation,
    Item,
    Verdict,
    to_table,
)
from medrecipe.select import SELECTED_SCHEMA, extract_reasoning, select

OPTIONS = ["Tumor", "Stroma", "Necrosis", "Inflammatory"]


def mc_item(item_id: str, source: str = "bcss", answer: str = "B", images=None) -> Item:
    return Item(id=item_id, source=source, task="mm_classification", question=f"What tissue is {item_id}?",
                options=OPTIONS, answer=answer, images=images or [f"sha{item_id}"])


def build(spec: dict[str, tuple[Item, str]], teacher: str = "t1", texts: dict[str, str] | None = None):
    """Tables from {item_id: (item, outcomes)}; outcomes is a string of c/w/n/u/e per sample.

    c: correct, w: wrong, n: no answer found, u: unterminated thinking, e: request error.
    """
    items, gens, verdicts = [], [], []
    texts = texts or {}
    for item_id, (item, outcomes) in spec.items():
        items.append(item)
        for k, o in enumerate(outcomes):
            key = f"{teacher}-{item_id}-{k}"
            text = texts.get(key, f"<think>reasoning {key} about {item_id}</think>\nSo the answer is \\boxed{{B}}.")
            gens.append(Generation(key=key, item_id=item_id, source=item.source, teacher=teacher,
                                   model="m", sample_index=k, text=None if o == "e" else text,
                                   completion_tokens=100 + k, error="boom" if o == "e" else None))
            verdicts.append(Verdict(key=key, item_id=item_id, source=item.source, teacher=teacher,
                                    sample_index=k,
                                    answer={"c": "B", "w": "A"}.get(o),
                                    method="boxed" if o in "cw" else "none",
                                    terminated=o != "u",
                                    correct={"c": True, "w": False}.get(o)))
    return (to_table(items, ITEM_SCHEMA), to_table(gens, GENERATION_SCHEMA),
            to_table(verdicts, VERDICT_SCHEMA))


def concat(*parts):
    return tuple(pa.concat_tables([p[i] for p in parts]) for i in range(3))


def all_rows(res):
    return res.train.to_pylist() + res.val.to_pylist()


def test_rejection_keeps_only_correct_terminated_traces():
    spec = {"q1": (mc_item("q1"), "cwnue"), "q2": (mc_item("q2"), "wwn")}
    res = select(*build(spec), SelectConfig(cap_per_question=None))
    rows = all_rows(res)
    assert [r["key"] for r in rows] == ["t1-q1-0"]
    assert res.train.schema == SELECTED_SCHEMA
    t = res.stats["totals"]
    assert (t["generated"], t["failed"], t["graded"], t["ungradable"], t["unterminated"]) == (8, 1, 4, 4, 1)
    assert t["correct"] == 1 and t["accepted"] == 1
    assert res.stats["questions"]["questions"] == 2
    assert res.stats["questions"]["with_correct"] == 1


def test_unterminated_trace_is_never_kept_even_if_marked_correct():
    items, gens, verdicts = build({"q1": (mc_item("q1"), "cc")})
    rows = verdicts.to_pylist()
    rows[1]["terminated"] = False  # a buggy upstream verdict: correct but unterminated
    verdicts = pa.Table.from_pylist(rows, schema=VERDICT_SCHEMA)
    res = select(items, gens, verdicts, SelectConfig(cap_per_question=None))
    assert [r["key"] for r in all_rows(res)] == ["t1-q1-0"]


def test_cot_target_uses_thinking_and_canonical_box():
    texts = {"t1-q1-0": "<think>\nStroma is pink and fibrous.\nNot necrosis.\n</think>\n\nThe answer is **B**. \\boxed{B}"}
    res = select(*build({"q1": (mc_item("q1"), "c")}, texts=texts), SelectConfig())
    row = all_rows(res)[0]
    assert row["target"] == (
        "<think>\nStroma is pink and fibrous.\nNot necrosis.\n</think>\n\n\\boxed{B: Stroma}"
    )
    assert row["answer_text"] == "Stroma"
    assert row["images"] == ["shaq1"]
    assert row["question"] == "What tissue is q1?"


def test_direct_target_is_the_answer_only():
    res = select(*build({"q1": (mc_item("q1", answer="D"), "c")}), SelectConfig(target_format="direct"))
    row = all_rows(res)[0]
    assert row["target"] == "\\boxed{D: Inflammatory}"
    assert "<think>" not in row["target"]


def test_open_question_target_boxes_the_answer_text():
    item = Item(id="o1", source="vqarad", task="open_vqa", question="Is there a fracture?", answer="yes")
    texts = {"t1-o1-0": "<think>The cortex is broken.</think>\\boxed{Yes}"}
    res = select(*build({"o1": (item, "c")}, texts=texts), SelectConfig())
    assert all_rows(res)[0]["target"] == "<think>\nThe cortex is broken.\n</think>\n\n\\boxed{yes}"


@pytest.mark.parametrize(
    ("text", "method", "expected"),
    [
        # No thinking block: the final box and its announcing line are removed.
        ("Stroma is fibrous.\nNecrosis would be eosinophilic debris.\n\nThe final answer is $$\\boxed{\\text{B: Stroma}}$$",
         "boxed", "Stroma is fibrous.\nNecrosis would be eosinophilic debris."),
        # Answer tag.
        ("Cells are spindle shaped.\n<answer>B</answer>", "answer_tag", "Cells are spindle shaped."),
        # Answer phrase: cut from the line that announces it.
        ("Spindle cells dominate.\nAnswer: B", "phrase", "Spindle cells dominate."),
        # Intermediate boxes earlier in the text stay; only the last one goes.
        ("We get \\boxed{x=2} first.\nHence \\boxed{B}", "boxed", "We get \\boxed{x=2} first.\nHence"),
        # Several thinking blocks: all reasoning before the last close is kept, tags removed.
        ("<think>part one</think>middle<think>part two</think>The answer is B", "phrase",
         "part one\nmiddle\npart two"),
    ],
)
def test_reasoning_extraction_rules(text, method, expected):
    span = None
    if method == "phrase":
        pos = text.rfind("B")
        span = (pos, pos + 1)
    assert extract_reasoning(text, None, method, span) == expected


def test_reasoning_field_used_when_text_has_no_thinking_block():
    assert extract_reasoning("\\boxed{B}", "Separate reasoning.", "boxed") == "Separate reasoning."


def test_cot_drops_traces_without_reasoning():
    texts = {"t1-q1-0": "\\boxed{B}", "t1-q1-1": "<think>Real thought.</think>\\boxed{B}"}
    res = select(*build({"q1": (mc_item("q1"), "cc")}, texts=texts), SelectConfig())
    assert [r["key"] for r in all_rows(res)] == ["t1-q1-1"]
    assert res.stats["totals"]["empty_reasoning"] == 1
    # with a cap, an empty trace gives its place to the next one in order
    for seed in range(4):
        res = select(*build({"q1": (mc_item("q1"), "cc")}, texts=texts),
                     SelectConfig(cap_per_question=1, seed=seed))
        assert [r["key"] for r in all_rows(res)] == ["t1-q1-1"]
        assert res.stats["totals"]["empty_reasoning"] + res.stats["totals"]["capped"] == 1
    # direct targets need no reasoning
    res = select(*build({"q1": (mc_item("q1"), "cc")}, texts=texts), SelectConfig(target_format="direct"))
    assert len(all_rows(res)) == 2


def test_cap_is_deterministic_and_independent_of_row_order():
    spec = {f"q{i}": (mc_item(f"q{i}"), "cccccc") for i in range(8)}
    items, gens, verdicts = build(spec)
    cfg = SelectConfig(cap_per_question=2, seed=7)
    a = select(items, gens, verdicts, cfg)
    perm = list(range(verdicts.num_rows))
    random.Random(1).shuffle(perm)
    b = select(items, gens.take(list(reversed(range(gens.num_rows)))), verdicts.take(perm), cfg)
    keys_a = sorted(r["key"] for r in all_rows(a))
    assert keys_a == sorted(r["key"] for r in all_rows(b))
    assert len(keys_a) == 16
    per_q = {}
    for r in all_rows(a):
        per_q[r["item_id"]] = per_q.get(r["item_id"], 0) + 1
    assert set(per_q.values()) == {2}
    assert a.stats["totals"]["capped"] == 8 * 4
    # another seed picks other traces for at least one question
    c = select(items, gens, verdicts, SelectConfig(cap_per_question=2, seed=8))
    assert sorted(r["key"] for r in all_rows(c)) != keys_a


def test_pass_rate_filter_pooled_and_per_teacher():
    spec = {"easy": (mc_item("easy"), "cccc"), "mid": (mc_item("mid"), "ccww"),
            "hard": (mc_item("hard"), "cwww")}
    t1 = build(spec, teacher="t1")
    # t2 gets the hard question right 3 times
    t2 = build({"hard": (mc_item("hard"), "ccc")}, teacher="t2")
    items, gens, verdicts = concat(t1, t2)
    items = items.slice(0, 3)  # t2's copy of the item is a duplicate
    cfg = SelectConfig(cap_per_question=None, pass_rate=PassRateFilter(min_correct=2, max_correct=3))
    res = select(items, gens, verdicts, cfg)
    # pooled counts: easy 4 (out), mid 2 (in), hard 1 + 3 = 4 (out)
    assert {r["item_id"] for r in all_rows(res)} == {"mid"}
    assert res.stats["totals"]["filtered_pass_rate"] == 4 + 4
    cfg = SelectConfig(cap_per_question=None,
                       pass_rate=PassRateFilter(teacher="t1", min_correct=1, max_correct=2))
    res = select(items, gens, verdicts, cfg)
    # t1 counts: easy 4 (out), mid 2 (in), hard 1 (in); all teachers' traces of kept questions stay
    assert sorted({r["item_id"] for r in all_rows(res)}) == ["hard", "mid"]
    assert {r["teacher"] for r in all_rows(res) if r["item_id"] == "hard"} == {"t1", "t2"}
    assert res.stats["by_teacher"]["t1"]["filtered_pass_rate"] == 4


def test_difficulty_filter_keeps_rating_range_and_drops_unrated():
    spec = {q: (mc_item(q), "c") for q in ("a", "b", "c", "d")}
    cfg = SelectConfig(difficulty=DifficultyFilter(judge="j", min_rating=3, max_rating=6))
    res = select(*build(spec), cfg, difficulty={"a": 2, "b": 3, "c": 6})
    assert sorted(r["item_id"] for r in all_rows(res)) == ["b", "c"]
    assert res.stats["questions"]["unrated"] == 1
    assert res.stats["questions"]["filtered_difficulty"] == 1
    with pytest.raises(UserError, match="difficulty"):
        select(*build(spec), cfg)


def _multi_source():
    parts = []
    for src, n in (("a", 10), ("b", 6), ("c", 4)):
        parts.append(build({f"{src}{i}": (mc_item(f"{src}{i}", source=src), "cc") for i in range(n)}))
    return concat(*parts)


def _questions_per_source(res):
    out = {}
    for r in all_rows(res):
        out.setdefault(r["source"], set()).add(r["item_id"])
    return {s: len(v) for s, v in out.items()}


def test_mix_quotas_limit_questions_per_named_source():
    res = select(*_multi_source(), SelectConfig(mix=MixConfig(quotas={"a": 3, "b": 10})))
    assert _questions_per_source(res) == {"a": 3, "b": 6, "c": 4}
    assert res.stats["questions_by_source"]["a"]["filtered_mix"] == 7
    assert res.stats["by_source"]["a"]["filtered_mix"] == 14  # two traces per question


def test_mix_weights_with_total_and_without():
    res = select(*_multi_source(), SelectConfig(mix=MixConfig(weights={"a": 1, "b": 1}, total=8)))
    assert _questions_per_source(res) == {"a": 4, "b": 4}  # c has no weight: left out
    # b cannot fill its share of 12: the shortfall goes to a
    res = select(*_multi_source(), SelectConfig(mix=MixConfig(weights={"a": 1, "b": 1}, total=12)))
    assert _questions_per_source(res) == {"a": 6, "b": 6}
    res = select(*_multi_source(), SelectConfig(mix=MixConfig(weights={"a": 1, "b": 1}, total=14)))
    assert _questions_per_source(res) == {"a": 8, "b": 6}
    # no total: the largest mix that keeps the proportions (b limits to 6 + 3)
    res = select(*_multi_source(), SelectConfig(mix=MixConfig(weights={"a": 1, "b": 2})))
    assert _questions_per_source(res) == {"a": 3, "b": 6}


def test_split_keeps_questions_whole_and_is_stable():
    spec = {f"q{i}": (mc_item(f"q{i}"), "ccc") for i in range(60)}
    cfg = SelectConfig(val_fraction=0.3, seed=3)
    res = select(*build(spec), cfg)
    train_q = {r["item_id"] for r in res.train.to_pylist()}
    val_q = {r["item_id"] for r in res.val.to_pylist()}
    assert train_q and val_q and not train_q & val_q
    assert len(train_q) + len(val_q) == 60
    assert 6 <= len(val_q) <= 30  # about 30% of 60
    assert all(r["split"] == "val" for r in res.val.to_pylist())
    # every trace of a val question is in val
    assert res.val.num_rows == 3 * len(val_q)
    # removing half of the questions moves no question to the other side
    half = {k: v for k, v in spec.items() if int(k[1:]) % 2 == 0}
    res2 = select(*build(half), cfg)
    assert {r["item_id"] for r in res2.val.to_pylist()} == {q for q in val_q if int(q[1:]) % 2 == 0}
    assert res.stats["totals"]["val"] == res.val.num_rows


def test_stats_by_source_and_teacher_are_consistent():
    parts = [build({"a1": (mc_item("a1", source="a"), "ccw")}, teacher="t1"),
             build({"b1": (mc_item("b1", source="b"), "cnn")}, teacher="t2")]
    res = select(*concat(*parts), SelectConfig(cap_per_question=1))
    s = res.stats
    assert s["by_source"]["a"]["generated"] == 3 and s["by_source"]["a"]["capped"] == 1
    assert s["by_teacher"]["t2"]["ungradable"] == 2
    assert s["by_teacher"]["t1"]["accepted"] == 1 and s["by_teacher"]["t2"]["accepted"] == 1
    assert s["totals"]["accepted"] == res.train.num_rows + res.val.num_rows == 2


def test_verdicts_without_item_or_generation_are_counted_not_kept():
    items, gens, verdicts = build({"q1": (mc_item("q1"), "cc")})
    res = select(items.slice(0, 0), gens, verdicts, SelectConfig())
    assert res.train.num_rows == 0 and res.stats["missing_item"] == 2
    res = select(items, gens.slice(0, 1), verdicts, SelectConfig())
    assert res.train.num_rows == 1 and res.stats["missing_generation"] == 1
