"""Grading definitions checked against plain reference computations written here.

Majority vote, GRPO correctness reward, pass-rate filter, forced end of thinking, endpoint
seeds, the comparison table and short-question decontamination (issue 11, items 1-7).
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError
from tests.test_select import build, mc_item

from medrecipe.answers import normalize_open
from medrecipe.config import PassRateFilter, PrepareConfig, SelectConfig
from medrecipe.evaluate import eval_config_from_data
from medrecipe.evaluate import metrics as m
from medrecipe.evaluate.compare import render_markdown
from medrecipe.evaluate.config import ForcedEndConfig, endpoint_seed
from medrecipe.evaluate.runner import needs_forced_end, run_eval
from medrecipe.images import ImageStore
from medrecipe.prepare.decontaminate import find_exact_short, normalize_text
from medrecipe.prepare.stage import prepare
from medrecipe.schema import ITEM_SCHEMA, Generation, Item, to_table
from medrecipe.select import select
from medrecipe.testing.chat_server import ChatServer
from medrecipe.train.rewards import correctness_score

BCSS = ["Tumor", "Stroma", "Inflammatory", "Necrosis"]


# --------------------------------------------------------------------------- 1. majority vote

def _reference_vote(samples, k, invalid):
    """Round robin over seeds, class per answer, first-voted wins ties; None: wrong."""
    items: dict[str, list] = {}
    for s in samples:
        items.setdefault(s["item_id"], []).append(s)
    right = 0
    for group in items.values():
        seeds = sorted({s["seed"] for s in group})
        per_seed = {sd: sorted((s for s in group if s["seed"] == sd), key=lambda s: s["sample"]) for sd in seeds}
        draw = [per_seed[sd][j] for j in range(max(len(v) for v in per_seed.values()))
                for sd in seeds if j < len(per_seed[sd])][:k]

        def cls(a):
            if a is None:
                return "[invalid]" if invalid == "count" else None
            if len(a) == 1:
                return a
            n = normalize_open(a)
            return "no" if n == "no" or n.startswith("no ") else ("yes" if n == "yes" else n)

        votes = [(cls(s["answer"]), s) for s in draw]
        votes = [(c, s) for c, s in votes if c is not None]
        if not votes:
            continue
        counts = Counter(c for c, _ in votes)
        best = max(counts.values())
        winner = next(c for c, _ in votes if counts[c] == best)
        if winner != "[invalid]" and any(c == winner and s["correct"] for c, s in votes):
            right += 1
    return right / len(items)


def test_vote_matches_reference_on_random_samples():
    rng = random.Random(7)
    samples = []
    for i in range(60):
        gold = rng.choice("ABCD")
        for seed in (0, 1, 2):
            for j in range(3):
                a = rng.choice(["A", "B", "C", "D", None, None])
                samples.append({"item_id": f"q{i}", "seed": seed, "sample": j, "answer": a,
                                "correct": None if a is None else a == gold})
    rng.shuffle(samples)
    for k in (None, 1, 2, 3, 5, 9):
        for invalid in ("count", "drop"):
            assert m.majority_vote_accuracy(samples, k, invalid) == pytest.approx(
                _reference_vote(samples, k, invalid)), (k, invalid)


def test_vote_draws_evenly_across_seeds_and_reports_the_draw():
    # seed 0 answers A twice (wrong), seed 1 answers B twice (right): a vote of 2 takes one
    # sample of each seed, a tie that seed 0's A wins; the old first-k rule took seed 0 twice.
    rows = [{"item_id": "q", "seed": s, "sample": j, "answer": a, "correct": a == "B"}
            for s, a in ((0, "A"), (1, "B")) for j in (0, 1)]
    rows.append({"item_id": "q", "seed": 2, "sample": 0, "answer": "B", "correct": True})
    out = m.benchmark_summary(rows, vote_k=3, bootstrap_resamples=10)
    assert out["vote_draw"] == ["0/0", "1/0", "2/0"] and out["vote_samples"] == 3
    assert out["majority_vote"] == pytest.approx(1.0)  # A, B, B


def test_open_answers_vote_on_their_graded_class():
    rows = [{"item_id": "q", "seed": 0, "sample": j, "answer": a, "correct": c}
            for j, (a, c) in enumerate([("yes", False), ("no fracture", True), ("no", True)])]
    assert m.majority_vote_accuracy(rows) == pytest.approx(1.0)  # "no fracture" and "no" agree
    assert m.vote_class("No.") == "no" and m.vote_class("b") == "B"


def test_vote_samples_is_validated_and_vote_k_is_its_older_name():
    base = {"name": "x", "model": {"backend": "openai_compat", "model": "m", "base_url": "http://127.0.0.1:1/v1"},
            "benchmarks": [{"name": "medqa", "path": "x.jsonl"}], "seeds": [0, 1], "samples_per_seed": 2}
    assert eval_config_from_data({**base, "vote_k": 3}).vote_size == 3
    assert eval_config_from_data({**base, "vote_samples": 2}).vote_size == 2
    assert eval_config_from_data(base).vote_invalid == "count"
    with pytest.raises(Exception, match="vote_samples 5 is more than"):
        eval_config_from_data({**base, "vote_samples": 5})


# --------------------------------------------------------------------------- 2. GRPO correctness reward

def _item(options, answer):
    return Item(id="i", source="s", task="mm_reasoning" if options else "open_vqa", question="q",
                options=options, answer=answer)


def _reference_reward(block: str, item: Item) -> float:
    """Exact match of a clean answer block: the letter, or the normalised open answer."""
    if item.options:
        return float(block.strip().upper() == item.answer)
    return float(normalize_open(block) == normalize_open(item.answer))


@pytest.mark.parametrize("block,options,gold", [
    ("B", BCSS, "B"), ("C", BCSS, "B"), ("no", None, "no"), ("yes", None, "no"),
    ("left lung", None, "Left lung"), ("liver", None, "spleen"),
])
def test_reward_on_clean_blocks_matches_exact_match(block, options, gold):
    item = _item(options or [], gold)
    text = f"<think>reasoning</think>\n<answer>{block}</answer>"
    assert correctness_score(text, item) == _reference_reward(block, item)


@pytest.mark.parametrize("text,options,gold", [
    ("<think>r</think><answer>not sure</answer>", None, "no"),
    ("<think>r</think><answer>no fracture</answer>", None, "no"),
    ("<think>r</think><answer>B: Tumor</answer>", BCSS, "B"),
    ("<think>r</think>\\boxed{B}\n<answer>C</answer>", BCSS, "B"),
    ("<think>r</think>\\boxed{B}\n<answer>C</answer>", BCSS, "C"),
    ("<think>r</think>The answer is B.", BCSS, "B"),  # no answer block
    ("<think>r</think><answer>B</answer><answer>B</answer>", BCSS, "B"),
    ("<think>r <answer>B</answer>", BCSS, "B"),  # thinking never closed
], ids=["not-sure-is-not-no", "no-fracture-is-not-no", "letter-names-other-option", "box-beside-tag-b",
        "box-beside-tag-c", "block-required", "two-blocks", "unterminated"])
def test_reward_gives_no_credit_on_doubt(text, options, gold):
    assert correctness_score(text, _item(options or [], gold)) == 0.0


def test_reward_accepts_letter_with_its_own_text():
    assert correctness_score("<think>r</think><answer>B: Stroma</answer>", _item(BCSS, "B")) == 1.0


# --------------------------------------------------------------------------- 3. pass-rate filter

def _reference_pass(outcomes: str, lo: int, hi: int, min_valid: int | None) -> bool:
    n = len(outcomes)
    valid = sum(o in "cw" for o in outcomes)
    correct = outcomes.count("c")
    if valid < (n if min_valid is None else min_valid) or correct == 0:
        return False
    return lo / n <= correct / valid <= hi / n


@pytest.mark.parametrize("min_valid", [None, 12])
def test_pass_rate_filter_matches_reference(min_valid):
    rng = random.Random(3)
    spec = {}
    for i in range(40):
        outcomes = "".join(rng.choice("ccccwwe") for _ in range(16))
        spec[f"q{i}"] = (mc_item(f"q{i}"), outcomes)
    spec["leak"] = (mc_item("leak"), "c" * 14 + "ee")  # 14 right + 2 failed: 14/14 is too easy
    cfg = SelectConfig(cap_per_question=None, val_fraction=0.0,
                       pass_rate=PassRateFilter(min_correct=2, max_correct=14, min_valid=min_valid))
    res = select(*build(spec), cfg)
    kept = {r["item_id"] for r in res.train.to_pylist()}
    expected = {k for k, (_, o) in spec.items() if _reference_pass(o, 2, 14, min_valid)}
    assert kept == expected
    assert "leak" not in kept


def test_pass_rate_needs_enough_valid_samples():
    spec = {"q": (mc_item("q"), "ccccwwwwe")}
    strict = select(*build(spec), SelectConfig(cap_per_question=None, val_fraction=0.0,
                                               pass_rate=PassRateFilter(min_correct=2, max_correct=8)))
    assert strict.stats["totals"]["pass_rate_too_few_valid"] == 4
    loose = select(*build(spec), SelectConfig(cap_per_question=None, val_fraction=0.0,
                                              pass_rate=PassRateFilter(min_correct=2, max_correct=8, min_valid=8)))
    assert len(loose.train) == 4


# --------------------------------------------------------------------------- 4. forced end of thinking

FE = ForcedEndConfig()


def _gen(text, finish="length", reasoning=None):
    return Generation(key="k", item_id="i", source="s", teacher="t", model="m", sample_index=0,
                      text=text, finish_reason=finish, reasoning=reasoning)


@pytest.mark.parametrize("text,finish,expected", [
    ("...so the answer is B, but wait", "length", True),  # template opened <think> in the prompt
    ("<think>...the answer is B, but wait", "length", True),
    ("reasoning</think>\\boxed{B}", "length", False),
    ("...so the answer is B", "stop", False),
])
def test_length_cut_without_closed_thinking_needs_forcing(text, finish, expected):
    assert needs_forced_end(_gen(text, finish), FE) is expected


def test_length_cut_reply_is_unterminated_without_forcing(tmp_path):
    from tests.test_eval_compare import FIX

    def cut(body, i):
        return {"content": "the answer is \\boxed{A} but wait, let me", "finish_reason": "length"}

    with ChatServer(responder=cut) as srv:
        cfg = eval_config_from_data({
            "name": "cut", "seeds": [0], "bootstrap": {"resamples": 10}, "forced_end": {"enabled": False},
            "model": {"backend": "openai_compat", "model": "m", "base_url": srv.base_url},
            "benchmarks": [{"name": "medqa", "path": str(FIX / "medqa_test.jsonl")}]})
        res = run_eval(cfg, tmp_path / "run")
    assert all(s["answer"] is None and s["terminated"] is False for s in res.samples)
    assert res.results["benchmarks"]["medqa"]["unterminated_rate"] == pytest.approx(1.0)


def test_forced_end_counts_cue_apart_from_answer_tokens(tmp_path):
    from tests.test_eval_compare import FIX

    def think_then_answer(body, i):
        last = body["messages"][-1]
        if last["role"] == "assistant":  # the continuation after the cue
            return {"content": "A}", "finish_reason": "stop"}
        return {"content": "<think>" + "long thought " * 20, "finish_reason": "length"}

    with ChatServer(responder=think_then_answer) as srv:
        cfg = eval_config_from_data({
            "name": "forced", "seeds": [0], "bootstrap": {"resamples": 10},
            "model": {"backend": "openai_compat", "model": "m", "base_url": srv.base_url},
            "benchmarks": [{"name": "medqa", "path": str(FIX / "medqa_test.jsonl")}]})
        res = run_eval(cfg, tmp_path / "run")
    for s in res.samples:
        assert s["forced_end"] is True and s["answer"] == "A"
        # thinking = the first request's tokens, answer = the continuation's only
        assert s["thinking_tokens"] + s["answer_tokens"] == s["completion_tokens"]
        assert s["answer_tokens"] < s["thinking_tokens"]


# --------------------------------------------------------------------------- 5. seeds

def _eval(seeds, per_seed):
    return {"name": "x", "seeds": seeds, "samples_per_seed": per_seed,
            "model": {"backend": "openai_compat", "model": "m", "base_url": "http://127.0.0.1:1/v1"},
            "benchmarks": [{"name": "medqa", "path": "x.jsonl"}]}


@pytest.mark.parametrize("seeds,per_seed", [([0, 100000], 2), ([5, 100005, 7], 2), ([0, 200000], 3)])
def test_configs_whose_samples_would_share_an_endpoint_seed_are_rejected(seeds, per_seed):
    sent = [s + 100_000 * j for s in seeds for j in range(per_seed)]  # the reference derivation
    assert len(set(sent)) < len(sent)
    with pytest.raises(Exception, match="would both be sent"):
        eval_config_from_data(_eval(seeds, per_seed))


def test_accepted_configs_send_distinct_endpoint_seeds():
    cfg = eval_config_from_data(_eval([0, 1, 2, 3, 4], 4))
    sent = [endpoint_seed(s, j) for s in cfg.seeds for j in range(cfg.samples_per_seed)]
    assert len(set(sent)) == len(sent) == 20


# --------------------------------------------------------------------------- 6. comparison table

def _model(label, acc, partial, std):
    return {"label": label, "benchmarks": {"a": {"accuracy": acc, "accuracy_std": std, "n_seeds": 5}},
            "categories": {"text": {"accuracy": acc, "partial": partial}}}


def test_only_complete_category_averages_are_bolded_and_zero_std_is_printed():
    data = {"columns": [{"category": "text", "benchmarks": ["a"]}], "titles": {"a": "A"},
            "models": [_model("full", 0.60, False, 0.0), _model("half", 0.80, True, 0.02)]}
    md = render_markdown(data)
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
            for r in md.split("## Parse")[0].splitlines() if r.startswith("| full") or r.startswith("| half")}
    best_complete = max(mm["categories"]["text"]["accuracy"] for mm in data["models"]
                        if not mm["categories"]["text"]["partial"])
    assert best_complete == 0.60
    assert rows["full"][2] == "**60.0**" and rows["half"][2] == "80.0 †"
    assert rows["full"][1] == "60.0 ± 0.0" and rows["half"][1] == "**80.0 ± 2.0**"


# --------------------------------------------------------------------------- 7. decontamination of short questions

def test_exact_short_matches_reference():
    rng = random.Random(5)
    vocab = ["fever", "rash", "child", "What", "is", "the", "cause", "Which", "drug", "?", "!"]
    bench = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6))) for _ in range(200)]
    train = [rng.choice(bench).upper() if rng.random() < 0.3 else
             " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 20))) for _ in range(300)]
    ref_index = {normalize_text(t) for t in bench if 0 < len(normalize_text(t).split()) < 8}
    ref = np.array([normalize_text(t) in ref_index for t in train])
    got = find_exact_short(train, {"b": bench}, n=8)
    assert (got.column("b") == ref).all() and ref.any()


def test_short_verbatim_copy_is_removed_as_its_own_reason(tmp_path):
    def it(i, source, q, images=()):
        return Item(id=f"{source}/{i}", source=source, task="text", answer="A", question=q,
                    options=["Aspirin", "Heparin"], images=list(images))

    train = to_table([it(0, "s", "Best drug for Kawasaki disease?"),  # verbatim, 4 + 2 words
                      it(1, "s", "best drug for KAWASAKI disease"),  # same normalised text
                      it(2, "s", "Best drug for Kawasaki disease?", images=["sha256:" + "0" * 64]),
                      it(3, "s", "Best drug for a fever?")], ITEM_SCHEMA)
    bench = to_table([it(0, "medqa", "Best drug for Kawasaki disease?")], ITEM_SCHEMA)
    res = prepare(train, bench, PrepareConfig.model_validate(
        {"resize": {"enabled": False}, "dedup_images": {"enabled": False}}), ImageStore(tmp_path))
    reasons = {q.item_id: q.reason for q in res.quarantine}
    assert reasons == {"s/0": "benchmark_exact:medqa", "s/1": "benchmark_exact:medqa"}
    assert res.counts["s"]["benchmark_exact:medqa"] == 2
    assert res.flags.column("exact:medqa").to_pylist() == [True, True, False, False]


def test_config_rejects_vote_alias_mismatch():
    with pytest.raises(ValidationError):
        from medrecipe.evaluate.config import EvalConfig

        EvalConfig.model_validate({**_eval([0], 2), "vote_k": 1, "vote_samples": 2})
