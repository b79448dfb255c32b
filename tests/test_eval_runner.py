"""The evaluation runner against a local OpenAI-compatible server: forced end, cache, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medrecipe.evaluate import eval_config_from_data, load_results, run_eval
from medrecipe.testing.chat_server import ChatServer

FIX = Path(__file__).parent / "fixtures" / "eval"
MEDQA_GOLD = {"iron deficiency": "A", "crushing chest pain": "B", "periorbital edema": "C",
              "heat intolerance": "D"}


def _user_text(body: dict) -> str:
    for m in body["messages"]:
        if m["role"] == "user":
            c = m["content"]
            return c if isinstance(c, str) else " ".join(p.get("text", "") for p in c
                                                          if p.get("type") == "text")
    return ""


def _gold(body: dict) -> str:
    text = _user_text(body).lower()
    return next(v for k, v in MEDQA_GOLD.items() if k in text)


def _config(base_url: str, **kw) -> object:
    data = {
        "name": "server-model",
        "model": {"backend": "openai_compat", "model": "student", "base_url": base_url,
                  "max_retries": 0, "max_in_flight": 4},
        "seeds": [0, 1],
        "sampling": {"max_tokens": 256},
        "bootstrap": {"resamples": 500},
        "benchmarks": [{"name": "medqa", "path": str(FIX / "medqa_test.jsonl")}],
    }
    data.update(kw)
    return eval_config_from_data(data)


def test_forced_end_closes_unfinished_thinking_and_asks_for_the_answer(tmp_path):
    cfg = _config("")
    cue = cfg.forced_end.cue

    def responder(body, i):
        if body.get("continue_final_message"):
            return {"content": _gold(body) + "}", "finish_reason": "stop"}
        if "heat intolerance" in _user_text(body).lower():  # never stops thinking
            return {"content": "<think>Graves disease is likely, so the antibody",
                    "finish_reason": "length"}
        return f"<think>short</think>The answer is \\boxed{{{_gold(body)}}}."

    with ChatServer(responder=responder) as srv:
        cfg = _config(srv.base_url)
        res = run_eval(cfg, tmp_path / "run")
        bodies = srv.bodies()
    conts = [b for b in bodies if b.get("continue_final_message")]
    assert len(bodies) == 4 * 2 + 2 and len(conts) == 2
    for b in conts:
        last = b["messages"][-1]
        assert last["role"] == "assistant"
        assert last["content"] == "<think>Graves disease is likely, so the antibody</think>" + cue
        assert b["add_generation_prompt"] is False
        assert b["max_tokens"] == cfg.forced_end.max_tokens
    assert sorted(b["seed"] for b in conts) == [0, 1]

    rows = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    forced = [r for r in rows if r["forced_end"]]
    assert len(forced) == 2 and {r["item_id"] for r in forced} == {"medqa/3"}
    for r in forced:
        assert r["answer"] == "D" and r["correct"] is True and r["finish_reason"] == "length"
        assert r["text"].endswith("</think>" + cue + "D}")
    assert all(not r["forced_end"] for r in rows if r not in forced)
    bench = res.results["benchmarks"]["medqa"]
    assert bench["forced_end_rate"] == pytest.approx(2 / 8)
    assert bench["accuracy"] == pytest.approx(1.0)
    assert bench["unterminated_rate"] == pytest.approx(0.0)


def test_a_server_that_refuses_forced_end_is_named_with_the_fix(tmp_path):
    """transformers serve answers vLLM's continue_final_message with a 422: say so, once."""
    def responder(body, i):
        if "heat intolerance" in _user_text(body).lower():
            return {"content": "<think>Graves disease is likely", "finish_reason": "length"}
        return f"<think>short</think>The answer is \\boxed{{{_gold(body)}}}."

    said: list[str] = []
    with ChatServer(responder=responder) as srv:
        srv.inject("400", times=10, match=lambda b: bool(b.get("continue_final_message")),
                   message="Unexpected fields in the request: "
                           "{'add_generation_prompt', 'continue_final_message'}")
        res = run_eval(_config(srv.base_url), tmp_path / "run", log=said.append)
    warnings = [m for m in said if m.startswith("warning: the server refused 2 forced-end")]
    assert len(warnings) == 1 and "forced_end.enabled: false" in warnings[0]
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    refused = [r for r in rows if r["forced_end"]]
    assert len(refused) == 2 and all(r["answer"] is None for r in refused)
    assert all("continue_final_message" in r["error"] for r in refused)
    assert res.results["complete"] is False


def test_forced_end_with_a_separate_reasoning_field(tmp_path):
    def responder(body, i):
        if body.get("continue_final_message"):
            return {"content": "A}", "finish_reason": "stop"}
        return {"content": "", "reasoning_content": "Low ferritin points to", "finish_reason": "length"}

    with ChatServer(responder=responder, reasoning_field="reasoning_content") as srv:
        cfg = _config(srv.base_url, seeds=[0])
        res = run_eval(cfg, tmp_path / "run")
        conts = [b for b in srv.bodies() if b.get("continue_final_message")]
    assert len(conts) == 4
    assert conts[0]["messages"][-1]["content"].startswith("<think>Low ferritin points to</think>")
    assert all(s["forced_end"] for s in res.samples)
    # the answer "A" was forced out of every item; only the first item's gold is A
    assert res.results["benchmarks"]["medqa"]["accuracy"] == pytest.approx(0.25)


def test_forced_end_can_be_disabled_and_then_counts_unterminated(tmp_path):
    def responder(body, i):
        return {"content": "<think>still going", "finish_reason": "length"}

    with ChatServer(responder=responder) as srv:
        cfg = _config(srv.base_url, seeds=[0], forced_end={"enabled": False})
        res = run_eval(cfg, tmp_path / "run")
        assert srv.count == 4
    b = res.results["benchmarks"]["medqa"]
    assert b["unterminated_rate"] == 1.0 and b["parse_failure_rate"] == 1.0
    assert b["accuracy"] == 0.0 and b["forced_end_rate"] == 0.0


def test_cache_reuses_identical_settings_and_never_a_different_temperature(tmp_path):
    def responder(body, i):
        return f"\\boxed{{{_gold(body)}}}"

    cache = tmp_path / "cache"
    with ChatServer(responder=responder) as srv:
        first = run_eval(_config(srv.base_url, cache_dir=str(cache)), tmp_path / "a")
        assert srv.count == 8 and first.requests_sent == 8
        again = run_eval(_config(srv.base_url, cache_dir=str(cache)), tmp_path / "b")
        assert srv.count == 8 and again.cached == 8 and again.requests_sent == 0
        hotter = run_eval(_config(srv.base_url, cache_dir=str(cache),
                                  sampling={"temperature": 1.0, "max_tokens": 256}), tmp_path / "c")
        assert srv.count == 16 and hotter.cached == 0
        seeds = sorted(b["seed"] for b in srv.bodies())
        temps = {b["temperature"] for b in srv.bodies()}
    assert seeds == [0] * 8 + [1] * 8
    assert temps == {0.6, 1.0}
    assert again.results["benchmarks"] == first.results["benchmarks"]


def test_samples_per_seed_use_distinct_endpoint_seeds_and_feed_the_vote(tmp_path):
    def responder(body, i):
        # seed 0 sample 1 and seed 1 sample 0 disagree with the others on purpose
        wrong = body["seed"] in (100_000, 1)
        return "\\boxed{A}" if wrong else f"\\boxed{{{_gold(body)}}}"

    with ChatServer(responder=responder) as srv:
        cfg = _config(srv.base_url, samples_per_seed=2, pass_k=[1, 4], vote_k=3)
        res = run_eval(cfg, tmp_path / "run")
        sent = sorted({b["seed"] for b in srv.bodies()})
    assert sent == [0, 1, 100_000, 100_001]
    b = res.results["benchmarks"]["medqa"]
    assert b["samples_per_item"] == 4
    # per item: B, C, D items get 2 of 4 right; the A item 4 of 4
    assert b["accuracy"] == pytest.approx((1 + 0.5 * 3) / 4)
    # vote over the first 3 samples in (seed, sample) order: seed0/s0 right, seed0/s1 A,
    # seed1/s0 A -> "A" wins for the B, C, D items; the A item is right
    assert b["majority_vote"] == pytest.approx(0.25)
    assert b["pass_at_k"]["4"] == pytest.approx(1.0)


_CHILD = textwrap.dedent("""
    import sys
    from medrecipe.evaluate import load_eval_config, run_eval
    run_eval(load_eval_config(sys.argv[1]), sys.argv[2])
""")


def test_interrupted_run_resumes_without_re_requesting_finished_samples(tmp_path):
    def responder(body, i):
        return f"<think>ok</think>\\boxed{{{_gold(body)}}}"

    with ChatServer(responder=responder, latency=0.15) as srv:
        recipe = tmp_path / "eval.yaml"
        recipe.write_text(json.dumps({
            "name": "resume", "seeds": [0, 1, 2, 3, 4],
            "model": {"backend": "openai_compat", "model": "student", "base_url": srv.base_url,
                      "max_in_flight": 1, "max_retries": 0},
            "bootstrap": {"resamples": 200},
            "benchmarks": [{"name": "medqa", "path": str(FIX / "medqa_test.jsonl")}],
        }))
        out = tmp_path / "run"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(recipe), str(out)], env=env)
        try:
            deadline = time.monotonic() + 120
            while srv.count < 6 and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            child.kill()
        finally:
            child.wait()
        first_count = srv.count
        assert 6 <= first_count < 20, "the child must be killed part-way"
        assert not (out / "results.json").exists()

        res = run_eval(load_eval_config_path(recipe), out)
        second_count = srv.count - first_count
    total = 4 * 5
    # every sample answered before the kill came from the cache; at most the one request in
    # flight at the kill is asked again
    assert res.cached + second_count == total
    assert res.cached >= first_count - 1
    assert res.results["complete"] is True
    assert res.results["benchmarks"]["medqa"]["accuracy"] == pytest.approx(1.0)
    assert load_results(out)["samples"] == total


def load_eval_config_path(path):
    from medrecipe.evaluate import load_eval_config

    return load_eval_config(path)


def test_empty_benchmark_reports_no_numbers_and_is_left_out_of_the_average(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")

    def responder(body, i):
        return f"\\boxed{{{_gold(body)}}}"

    with ChatServer(responder=responder) as srv:
        cfg = _config(srv.base_url, seeds=[0], benchmarks=[
            {"name": "medqa", "path": str(FIX / "medqa_test.jsonl")},
            {"name": "headqa", "adapter": "medqa", "path": str(empty)}])
        res = run_eval(cfg, tmp_path / "run")
    h = res.results["benchmarks"]["headqa"]
    assert h["n_items"] == 0 and h["accuracy"] is None and h["ci_low"] is None
    assert res.results["categories"] == {"text": 1.0}
    assert res.results["complete"] is True


def test_choice_judge_reads_unread_replies_and_never_refused_ones(tmp_path):
    """choice_judge: an evaluation reply no rule reads is read by a judge model (method judge);
    replies with several letters are left unanswered and never sent to it."""

    def responder(body, i):
        text = _user_text(body)
        if "<choice>" in text:  # the judge: reads the wordy reply as the gold letter
            return "<choice>A</choice>" if "the first one" in text else "<choice>NONE</choice>"
        low = text.lower()
        if "iron deficiency" in low:
            return "On balance I would pick the first one."
        if "crushing chest pain" in low:
            return "The answer is A, B, and C."
        return f"The answer is \\boxed{{{_gold(body)}}}."

    with ChatServer(responder=responder) as srv:
        judge = {"backend": "openai_compat", "model": "reader", "base_url": srv.base_url, "max_retries": 0}
        res = run_eval(_config(srv.base_url, choice_judge=judge), tmp_path / "run")
        judged = [_user_text(b) for b in srv.bodies() if "<choice>" in _user_text(b)]
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    by_item = {}
    for r in rows:
        by_item.setdefault(r["item_id"], set()).add((r["answer"], r["method"], r["correct"]))
    assert by_item["medqa/0"] == {("A", "judge", True)}
    assert by_item["medqa/1"] == {(None, "none", None)}
    assert judged and all("the first one" in t for t in judged)
    assert res.results["choice_judge"]["answered"] == 2 and res.results["choice_judge"]["asked"] == 2
    assert res.results["benchmarks"]["medqa"]["accuracy"] == pytest.approx(0.75)
