"""Reply parsers and code checks of the trace steps, and the article-level splitter."""

from __future__ import annotations

import json
import random

import pytest

from medrecipe.curate import ParseError
from medrecipe.curate.splits import article_of, articles_in_two_splits, split_items
from medrecipe.curate.traces import (
    TraceFormatError,
    check_refined,
    names_other_option,
    parse_draft,
    parse_refined,
    parse_verdict,
    sft_target,
)
from medrecipe.schema import Item

SECTIONS = {"perception": "Axial CT with a ring-enhancing lesion in the right basal ganglia.",
            "interpretation": "In advanced HIV such a lesion is most often toxoplasmosis.",
            "justification": "A solitary ring lesion here is best explained by toxoplasmosis."}


def _trace(**over) -> str:
    s = {**SECTIONS, **over}
    return "\n".join(f"<{k}>{v}</{k}>" for k, v in s.items() if v is not None)


# --------------------------------------------------------------------------- refine replies


def test_three_sections_parse_in_any_order_with_thinking_and_preamble():
    text = ("<think>Let me tidy the draft.</think>Here is the trace:\n"
            + "\n".join(f"<{k}>  {v}\n</{k}>" for k, v in reversed(SECTIONS.items())))
    assert parse_refined(text) == SECTIONS


@pytest.mark.parametrize("text, problem", [
    (_trace(interpretation=None), "missing_section"),
    (_trace(justification=""), "missing_section"),
    (_trace(justification="Toxoplasmosis."), "missing_section"),  # shorter than 4 words
    (_trace() + "\n<perception>again, a second perception block</perception>",
     "repeated_section"),
    (_trace().replace("</justification>", ""), "unclosed_section"),
    (_trace(perception="CT <interpretation>nested</interpretation> shows a lesion here"),
     "nested_section"),
])
def test_a_trace_without_three_usable_sections_does_not_parse(text, problem):
    with pytest.raises(TraceFormatError) as e:
        parse_refined(text)
    assert e.value.problem == problem


def test_a_cut_off_thinking_block_is_no_reply():
    with pytest.raises(ParseError, match="never closed"):
        parse_refined("<think>First the perception part, then " + _trace())
    with pytest.raises(ParseError, match="never closed"):
        parse_draft("<think>Count the circles: one in the upper zone")


def test_a_draft_needs_enough_words():
    assert parse_draft("  The image shows a lesion.\n\n\n\nThe caption   agrees.", 5) == \
        "The image shows a lesion.\n\nThe caption agrees."
    with pytest.raises(ParseError, match="3 words"):
        parse_draft("Answer is A.", 20)


# --------------------------------------------------------------------------- wrong option

OPTIONS = ["Cerebral toxoplasmosis", "Primary CNS lymphoma", "Glioblastoma", "Brain abscess"]


@pytest.mark.parametrize("justification, named", [
    ("The ring lesion in advanced HIV points to cerebral toxoplasmosis.", None),
    ("The ring lesion fits cerebral toxoplasmosis better than primary CNS lymphoma.", "B"),
    ("Unlike a glioblastoma, this lesion is small and solitary.", "C"),
    ("Toxoplasmosis fits; option D would need a history of sepsis.", "D"),
    ("The findings fit toxoplasmosis, so the answer is (B).", "B"),
    ("Everything points to an infection.\n\nFinal answer: D", "D"),
    ("The lesion is toxoplasmosis. \\boxed{A}", None),
])
def test_a_justification_naming_another_option_is_caught(justification, named):
    found = names_other_option(justification, OPTIONS, "A")
    assert (found is None) == (named is None)
    if named:
        assert f"option {named}" in found
        reasons = check_refined({**SECTIONS, "justification": justification}, OPTIONS, "A")
        assert reasons[0][0] == "refine:wrong_option"


def test_options_nested_in_the_answer_binary_sets_and_numbers_are_not_mistaken():
    nested = ["Viral pneumonia", "Pneumonia", "Pulmonary oedema", "Atelectasis"]
    assert names_other_option("Patchy change with a viral prodrome means viral pneumonia.",
                              nested, "A") is None
    assert names_other_option("This is pneumonia, and the prodrome makes it viral pneumonia.",
                              nested, "A") is None  # "pneumonia" is part of the answer's text
    counts = ["One", "Two", "Three", "Four"]
    assert names_other_option("Each circle surrounds a single nodule, one in each zone, so "
                              "three nodules are circled.", counts, "C") is None
    assert names_other_option("No lung markings are seen beyond the line, so the statement is "
                              "false.", ["True", "False"], "B", "true_false") is None
    assert names_other_option("So the statement is true.\n\nThe answer is A.",
                              ["True", "False"], "B", "true_false") is not None


# --------------------------------------------------------------------------- verdicts


def _verdict(**fail) -> dict:
    return {c: {"verdict": "fail" if c in fail else "pass", "reason": fail.get(c, "Fine.")}
            for c in ("source_consistency", "answer_justification", "reasoning_utility")}


def test_verdicts_parse_only_against_the_schema():
    v = parse_verdict("```json\n" + json.dumps(_verdict(reasoning_utility="Generic.")) + "\n```")
    assert v.failed() == ["reasoning_utility"]
    bad = [json.dumps({k: v["verdict"] for k, v in _verdict().items()}),  # strings, no reasons
           json.dumps({**_verdict(), "extra_criterion": {"verdict": "pass", "reason": "x"}}),
           json.dumps({k: {**v, "verdict": "ok"} for k, v in _verdict().items()}),
           json.dumps({k: v for k, v in _verdict().items() if k != "answer_justification"}),
           "All three criteria pass.", ""]
    for text in bad:
        with pytest.raises(ParseError):
            parse_verdict(text)


def test_the_sft_target_is_the_export_think_answer_format():
    target = sft_target(SECTIONS, OPTIONS, "A")
    assert target.startswith("<think>\nPerception: Axial CT")
    assert "\n\nClinical interpretation and medical knowledge: In advanced HIV" in target
    assert target.endswith("</think>\n\n\\boxed{A: Cerebral toxoplasmosis}")


# --------------------------------------------------------------------------- splits


def _items(n_articles: int, seed: int = 0) -> list[Item]:
    rng = random.Random(seed)
    out = []
    for a in range(n_articles):
        for fig in range(rng.randint(1, 4)):  # several figures (sub-figures) per article
            for cat in ("findings", "diagnosis")[: rng.randint(1, 2)]:
                rid = f"src/a{a}f{fig}"
                out.append(Item(id=f"{rid}/{cat}", source="src", task="mm_reasoning",
                                question="q?", options=["x", "y"], answer="A",
                                meta={"article_id": f"PMC{a}", "record_id": rid}))
    return out


def test_no_article_lands_in_two_splits_and_targets_are_respected():
    items = _items(300)
    parts, by_article, targets = split_items(items, 0.1, 60, seed=3)
    assert targets == {"benchmark": round(0.1 * len(items)), "grpo": 60}
    assert sum(len(v) for v in parts.values()) == len(items)
    split_of = {it.id: it.split for v in parts.values() for it in v}
    assert articles_in_two_splits(split_of, {it.id: article_of(it) for it in items}) == {}
    assert {it.split for it in parts["benchmark"]} == {"benchmark"}
    # First-fit in seeded order: each held-out split is filled exactly here, never over.
    assert len(parts["benchmark"]) == targets["benchmark"] and len(parts["grpo"]) == 60
    # The split depends on the seed and the articles, not on row order.
    again, _, _ = split_items(list(reversed(items)), 0.1, 60, seed=3)
    assert {it.id for it in again["benchmark"]} == {it.id for it in parts["benchmark"]}
    other, _, _ = split_items(items, 0.1, 60, seed=4)
    assert {it.id for it in other["benchmark"]} != {it.id for it in parts["benchmark"]}


def test_an_item_without_an_article_is_its_own_article_and_sizes_cap_at_the_total():
    it = Item(id="s/r1/findings", source="s", task="mm_reasoning", question="q?",
              options=["x", "y"], answer="A", meta={"record_id": "s/r1"})
    assert article_of(it) == "record:s/r1"
    parts, _, targets = split_items([it], 5, 5)
    assert targets == {"benchmark": 1, "grpo": 0} and len(parts["benchmark"]) == 1
