"""GRPO rewards on crafted completions: format structure and exact-match correctness."""

from __future__ import annotations

import pytest

from medrecipe.schema import Item
from medrecipe.train.rewards import (
    check_format,
    format_score,
    make_reward_functions,
)

GOOD = "<think>The lesion is dural-based and enhancing.</think><answer>B</answer>"


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "  <think>\nstep 1\nstep 2\n</think>\n\n<answer>B</answer>\n",
        "<think>a</think> <answer>meningioma</answer>",
    ],
)
def test_one_think_then_one_answer_scores_full(text):
    check = check_format(text)
    assert check.well_formed and check.score == 1.0 and check.problems == []


@pytest.mark.parametrize(
    "text",
    [
        "<answer>B</answer>",  # no thinking
        "<think>reasoning</think>",  # no answer
        "The answer is B.",
        GOOD + " Hope this helps!",  # text after the answer block
        "Sure. " + GOOD,  # text before the thinking block
        "<think>reasoning</think><answer>  </answer>",  # empty answer
        "<think></think><answer>B</answer>",  # empty thinking
    ],
)
def test_incomplete_structure_earns_nothing_but_is_not_penalised(text):
    check = check_format(text)
    assert not check.well_formed and check.score == 0.0 and check.problems


@pytest.mark.parametrize(
    "text, problem",
    [
        ("<think>a</think><think>b</think><answer>B</answer>", "repeated <think>"),
        (GOOD + "<answer>C</answer>", "repeated <answer>"),
        ("<think>it never closes <answer>B</answer>", "unclosed <think>"),
        ("<think>a</think><answer>B", "unclosed <answer>"),
        ("<answer>B</answer><think>because</think>", "answer before thinking"),
        ("a</think><answer>B</answer>", "</think> without <think>"),
    ],
)
def test_malformed_completions_are_penalised_below_missing_structure(text, problem):
    check = check_format(text)
    assert not check.well_formed
    assert check.score < 0.0 < format_score(GOOD)
    assert any(problem in p for p in check.problems), check.problems


def test_more_repetition_costs_more_and_the_floor_holds():
    twice = format_score("<think>a</think><think>b</think><answer>B</answer>")
    thrice = format_score("<think>a</think><think>b</think><think>c</think><answer>B</answer>")
    assert thrice < twice < 0
    assert format_score("<answer><answer><answer><think><think><think>" * 5) == -1.0


def test_think_opened_by_the_prompt():
    text = "reasoning here</think><answer>B</answer>"
    assert format_score(text) < 0  # a closing tag without an opening one
    assert format_score(text, think_in_prompt=True) == 1.0


def test_trl_format_reward_reads_chat_completions():
    fmt, _ = make_reward_functions()
    completions = [
        [{"role": "assistant", "content": GOOD}],
        [{"role": "assistant", "content": "B"}],
    ]
    assert fmt(completions=completions, prompts=[None, None]) == [1.0, 0.0]
    assert fmt.__name__ == "format_reward"


# --------------------------------------------------------------------------- correctness


@pytest.fixture(autouse=False)
def grader():
    """The recipe's answer extractor and grader (written in medrecipe.answers)."""
    return pytest.importorskip("medrecipe.answers")


def _item(answer="B", options=("glioma", "meningioma", "pituitary adenoma")):
    return Item(
        id="q1",
        source="t",
        task="mm_classification",
        question="Which tumour?",
        options=list(options),
        answer=answer,
    )


def test_correctness_is_exact_match_with_the_recipe_grader(grader):
    from medrecipe.train.rewards import correctness_score

    item = _item()
    assert correctness_score("<think>dural tail</think><answer>B</answer>", item) == 1.0
    assert correctness_score("<think>dural tail</think><answer>A</answer>", item) == 0.0
    assert correctness_score("<think>no idea</think><answer></answer>", item) == 0.0


def test_answer_inside_an_unclosed_thinking_block_earns_nothing(grader):
    from medrecipe.train.rewards import correctness_score

    assert correctness_score("<think>so the answer is B, <answer>B</answer>", _item()) == 0.0


def test_trl_correctness_reward_uses_dataset_columns(grader):
    _, correct = make_reward_functions()
    completions = [
        [{"role": "assistant", "content": "<think>x</think><answer>B</answer>"}],
        [{"role": "assistant", "content": "<think>x</think><answer>C</answer>"}],
        [{"role": "assistant", "content": "<think>x</think><answer>A</answer>"}],
    ]
    columns = {
        "answer": ["B", "B", "A"],
        "options": [["x", "y", "z"]] * 3,
        "item_id": ["q1", "q1", "q2"],
        "task": ["mm_reasoning"] * 3,
    }
    assert correct(completions=completions, prompts=[None] * 3, **columns) == [1.0, 0.0, 1.0]
