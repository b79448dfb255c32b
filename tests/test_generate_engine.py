"""Engine behaviour against a real local chat-completions server (no mocks of the client)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from medrecipe.config import Price, SamplingConfig, TeacherConfig
from medrecipe.errors import UserError
from medrecipe.generate import Engine, GenRequest, RequestCache
from medrecipe.generate.limits import RateLimiter, backoff_delay
from medrecipe.testing.chat_server import ChatServer
from medrecipe.testing.clock import FakeClock


@pytest.fixture
def server():
    with ChatServer(latency=0.0, hang_s=3.0) as srv:
        yield srv


def teacher(srv: ChatServer, **kw) -> TeacherConfig:
    base = dict(model="teacher-x", base_url=srv.base_url, max_in_flight=4, max_retries=3,
                backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0,
                sampling=SamplingConfig(max_tokens=64, temperature=0.7, seed=11))
    base.update(kw)
    return TeacherConfig(**base)


def requests(k: int, n: int = 1, teacher_name: str = "t") -> list[GenRequest]:
    return [GenRequest(item_id=f"q{i}", teacher=teacher_name, n=n,
                       messages=[{"role": "user",
                                  "content": [{"type": "text", "text": f"Question number {i}?"}]}])
            for i in range(k)]


def run(cfg: TeacherConfig, reqs, cache, **kw):
    return Engine({"t": cfg}, cache, progress=False, **kw).run(reqs)


# ---------------------------------------------------------------------------- caching


def test_second_run_makes_no_requests(server, tmp_path):
    cfg = teacher(server)
    first = run(cfg, requests(6, n=2), tmp_path / "cache")
    assert server.count == 6 and first.requests_sent == 6
    assert len(first.generations) == 12 and first.cached == 0
    second = run(cfg, requests(6, n=2), tmp_path / "cache")
    assert server.count == 6  # nothing new reached the server
    assert second.cached == 12 and second.requests_sent == 0 and second.spend_usd == 0
    assert [g.text for g in second.generations] == [g.text for g in first.generations]
    assert [g.key for g in second.generations] == [g.key for g in first.generations]


def test_changed_sampling_or_prompt_is_a_new_request(server, tmp_path):
    cfg = teacher(server)
    run(cfg, requests(2), tmp_path / "c")
    hotter = cfg.model_copy(update={"sampling": SamplingConfig(max_tokens=64, temperature=1.0,
                                                               seed=11)})
    run(hotter, requests(2), tmp_path / "c")
    assert server.count == 4
    reqs = requests(2)
    reqs[0].messages[0]["content"][0]["text"] += " (reworded)"
    run(cfg, reqs, tmp_path / "c")
    assert server.count == 5  # only the reworded question is new


def test_native_n_sends_one_request_with_n(server, tmp_path):
    res = run(teacher(server, native_n=True), requests(3, n=4), tmp_path / "c")
    assert server.count == 3
    assert [b["n"] for b in server.bodies()] == [4, 4, 4]
    assert sorted({g.sample_index for g in res.generations}) == [0, 1, 2, 3]
    assert len({g.key for g in res.generations}) == 12


def test_fan_out_sends_one_request_per_sample(server, tmp_path):
    res = run(teacher(server, native_n=False), requests(3, n=4), tmp_path / "c")
    assert server.count == 12
    assert all("n" not in b for b in server.bodies())
    # Seeds differ per sample so the samples are not copies of each other.
    assert sorted(b["seed"] for b in server.bodies() if b["messages"][0]["content"]
                  == "Question number 0?") == [11, 12, 13, 14]
    assert len(res.generations) == 12


def test_each_sample_is_cached_separately(server, tmp_path):
    cfg = teacher(server, native_n=True)
    run(cfg, requests(2, n=2), tmp_path / "c")
    assert server.count == 2
    res = run(cfg, requests(2, n=5), tmp_path / "c")
    # Only the three missing samples of each question were asked for.
    assert server.count == 4
    assert [b["n"] for b in server.bodies()[2:]] == [3, 3]
    assert res.cached == 4 and len(res.generations) == 10
    # And in fan-out mode the same cache entries serve the same samples.
    res2 = run(teacher(server, native_n=False), requests(2, n=5), tmp_path / "c")
    assert server.count == 4 and res2.cached == 10


def test_endpoint_returning_fewer_choices_is_topped_up(tmp_path):
    with ChatServer(choices_cap=1) as srv:
        res = run(teacher(srv, native_n=True), requests(1, n=3), tmp_path / "c")
        # Each call asks only for what is still missing.
        assert [b.get("n", 1) for b in srv.bodies()] == [3, 2, 1]
    assert sorted(g.sample_index for g in res.generations) == [0, 1, 2]
    assert all(g.error is None for g in res.generations)


def test_cache_survives_reopen_and_keys_are_stable(tmp_path):
    cache = RequestCache(tmp_path / "c")
    cache.put("k1", {"text": "hello", "completion_tokens": 3})
    cache.close()
    again = RequestCache(tmp_path / "c")
    assert again.get("k1")["text"] == "hello" and "k1" in again and len(again) == 1
    assert again.path.name == "requests.sqlite"
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---------------------------------------------------------------------------- reasoning fields


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_separate_reasoning_field_is_joined_as_think(tmp_path, field):
    with ChatServer(reasoning_field=field) as srv:
        res = run(teacher(srv), requests(1), tmp_path / "c")
    g = res.generations[0]
    assert g.reasoning == "Looking at the options carefully (choice 0)."
    assert g.text == "<think>Looking at the options carefully (choice 0).</think><answer>A</answer>"


def test_responder_output_and_token_usage_are_recorded(tmp_path):
    def responder(body, i):
        return f"answer for {body['messages'][0]['content']} #{i}"

    with ChatServer(responder=responder) as srv:
        res = run(teacher(srv), requests(2, n=2), tmp_path / "c")
    texts = [g.text for g in res.generations]
    assert texts == ["answer for Question number 0? #0", "answer for Question number 0? #1",
                     "answer for Question number 1? #0", "answer for Question number 1? #1"]
    for g in res.generations:
        assert g.prompt_tokens > 0 and g.completion_tokens > 0 and g.finish_reason == "stop"
        assert g.teacher == "t" and g.model == "teacher-x"


# ---------------------------------------------------------------------------- retries


def test_429_with_retry_after_is_honoured(server, tmp_path):
    server.inject("429", times=2, retry_after=0.25)
    clock = FakeClock()
    eng = Engine({"t": teacher(server, max_in_flight=1)}, tmp_path / "c", progress=False,
                 clock=clock, sleep=clock.sleep)
    res = eng.run(requests(1))
    assert server.count == 3 and res.failures == 0
    # The client waited at least as long as the server asked, each time (by its own clock).
    waits = [s for s in clock.sleeps if s > 0]
    assert len(waits) >= 2 and all(w >= 0.25 for w in waits[:2])
    assert res.generations[0].error is None


@pytest.mark.parametrize("kind", ["500", "502", "503", "malformed", "empty", "close",
                                  "truncated"])
def test_transient_failures_are_retried(server, tmp_path, kind):
    server.inject(kind, times=2)
    res = run(teacher(server, max_in_flight=1), requests(2), tmp_path / "c")
    assert res.failures == 0
    assert all(g.text and g.error is None for g in res.generations)
    assert server.count >= 4  # two failed attempts, then both questions


def test_timeouts_are_retried(server, tmp_path):
    server.inject("timeout", times=1)
    res = run(teacher(server, timeout_s=0.3, max_in_flight=1), requests(1), tmp_path / "c")
    assert server.count == 2 and res.failures == 0
    assert res.generations[0].text


def test_failure_after_retry_limit_is_recorded_not_cached_and_retried_next_run(server, tmp_path):
    server.inject("malformed", times=10, match=lambda b: "number 1?" in json.dumps(b))
    cfg = teacher(server, max_retries=2)
    res = run(cfg, requests(3), tmp_path / "c")
    assert res.failures == 1 and res.complete
    bad = [g for g in res.generations if g.error]
    assert [g.item_id for g in bad] == ["q1"]
    assert "malformed JSON" in bad[0].error and "3 attempts" in bad[0].error
    assert bad[0].text is None
    assert server.count == 2 + 3  # two good questions + three tries of the bad one
    server.clear_faults()
    again = run(cfg, requests(3), tmp_path / "c")
    assert again.failures == 0 and again.cached == 2
    assert server.count == 6  # only the failed question was asked again


def test_client_errors_are_not_retried(server, tmp_path):
    server.inject("400", times=1, message="context length exceeded")
    res = run(teacher(server), requests(1), tmp_path / "c")
    assert server.count == 1 and res.failures == 1
    assert "HTTP 400: context length exceeded" in res.generations[0].error


def test_rejected_credentials_stop_the_run_with_a_user_error(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_TEST_KEY", "sk-live-abcdef123456")
    server.inject("401", times=100, message="bad key {authorization}")
    with pytest.raises(UserError) as e:
        run(teacher(server, api_key_env="GEN_TEST_KEY", max_in_flight=1), requests(5),
            tmp_path / "c")
    assert "GEN_TEST_KEY" in str(e.value)
    assert "sk-live-abcdef123456" not in str(e.value)
    assert server.count == 1  # no more calls after the endpoint refused the key


def test_missing_api_key_variable_is_a_user_error(server, tmp_path, monkeypatch):
    monkeypatch.delenv("GEN_TEST_MISSING", raising=False)
    with pytest.raises(UserError, match="GEN_TEST_MISSING"):
        run(teacher(server, api_key_env="GEN_TEST_MISSING"), requests(1), tmp_path / "c")
    assert server.count == 0


def test_key_is_sent_as_bearer_or_named_header(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_TEST_KEY", "sk-abc")
    run(teacher(server, api_key_env="GEN_TEST_KEY"), requests(1), tmp_path / "a")
    run(teacher(server, api_key_env="GEN_TEST_KEY", api_key_header="api-key",
                url_params={"api-version": "2024-10-21"}), requests(1), tmp_path / "b")
    first, second = server.received
    assert first.headers["authorization"] == "Bearer sk-abc"
    assert second.headers["api-key"] == "sk-abc" and "authorization" not in second.headers
    assert second.path.endswith("/chat/completions?api-version=2024-10-21")


# ---------------------------------------------------------------------------- cost and budget


def test_spend_follows_the_price_table(server, tmp_path):
    cfg = teacher(server, price=Price(input_per_mtok=2.0, output_per_mtok=10.0))
    res = run(cfg, requests(3, n=2), tmp_path / "c")
    prompt = sum(g.prompt_tokens for g in res.generations) / 2  # a prompt is billed once per call
    completion = sum(g.completion_tokens for g in res.generations)
    assert res.spend_usd == pytest.approx((prompt * 2.0 + completion * 10.0) / 1e6)
    assert sum(g.cost_usd for g in res.generations) == pytest.approx(res.spend_usd)
    assert res.by_teacher["t"]["spend_usd"] == pytest.approx(res.spend_usd)
    again = run(cfg, requests(3, n=2), tmp_path / "c")
    assert again.spend_usd == 0 and again.cost_usd_total == pytest.approx(res.spend_usd)


def test_budget_stops_launching_and_next_run_continues(server, tmp_path):
    # $1 per completion token: one default answer costs about $15.
    cfg = teacher(server, max_in_flight=1, native_n=False,
                  price=Price(input_per_mtok=0.0, output_per_mtok=1e6),
                  sampling=SamplingConfig(max_tokens=20, seed=3))
    res = run(cfg, requests(10), tmp_path / "c", budget_usd=60.0)
    per_sample = res.spend_usd / len(res.generations)
    assert not res.complete and res.stopped == "budget"
    assert 0 < len(res.generations) < 10
    assert res.not_launched == 10 - len(res.generations)
    assert res.spend_usd <= 60.0 + per_sample
    sent = server.count
    assert sent == len(res.generations)
    more = run(cfg, requests(10), tmp_path / "c")
    assert more.complete and len(more.generations) == 10
    assert server.count == 10  # the stopped run's answers were not bought twice
    assert more.cached == sent


# ---------------------------------------------------------------------------- flow control


def test_in_flight_limit_is_respected(tmp_path):
    with ChatServer(latency=0.05) as srv:
        run(teacher(srv, max_in_flight=3), requests(12), tmp_path / "c")
        assert srv.max_in_flight_seen <= 3
        assert srv.count == 12


def _start_times(limiter: RateLimiter, clock: FakeClock, tokens: list[int]) -> list[float]:
    async def go():
        out = []
        for t in tokens:
            await limiter.acquire(t)
            out.append(clock.now)
        return out

    return asyncio.run(go())


def test_requests_per_minute_are_paced(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("medrecipe.generate.limits.asyncio.sleep", clock.sleep)
    lim = RateLimiter(requests_per_minute=120, burst_s=0.0, clock=clock)
    starts = _start_times(lim, clock, [0] * 5)
    assert [round(s - starts[0], 6) for s in starts] == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_an_idle_or_fresh_limiter_lets_no_burst_through():
    # Providers enforce RPM over short windows: 600 RPM is about 10 requests in any second.
    clock = FakeClock()
    lim = RateLimiter(requests_per_minute=600, clock=clock, sleep=clock.sleep)
    clock.now += 30.0  # created long before the first call (or idle between calls)
    first = _start_times(lim, clock, [0] * 8)
    assert [round(s - first[0], 6) for s in first] == [round(0.1 * i, 6) for i in range(8)]
    clock.now += 120.0  # idle again: still no credit for the missed slots
    second = _start_times(lim, clock, [0] * 3)
    assert [round(s - second[0], 6) for s in second] == [0.0, 0.1, 0.2]


def test_concurrent_callers_get_evenly_spaced_slots():
    import math
    import random

    clock = FakeClock()
    starts: list[float] = []

    async def sleep_until(s: float) -> None:  # every caller arrives at the same instant
        starts.append(clock.now + s)

    lim = RateLimiter(requests_per_minute=600, clock=clock, sleep=sleep_until)

    async def go():
        await asyncio.gather(*(lim.acquire() for _ in range(8)))

    asyncio.run(go())
    assert sorted(round(s - clock.now, 6) for s in starts) == [round(0.1 * i, 6)
                                                               for i in range(1, 8)]
    # Arrivals at random times: no window of w seconds ever holds more than ceil(w*rpm/60).
    rng = random.Random(5)
    clock2 = FakeClock()
    lim2 = RateLimiter(requests_per_minute=300, clock=clock2, sleep=clock2.sleep)
    times = []
    for _ in range(300):
        clock2.now += rng.choice([0.0, 0.0, 0.05, 0.3, 2.0])
        times.extend(_start_times(lim2, clock2, [0]))
    for w in (0.5, 1.0, 5.0):
        most = max(sum(1 for t in times if a <= t < a + w - 1e-9) for a in times)
        assert most <= math.ceil(w * 300 / 60)


def test_engine_paces_requests_on_the_endpoint_by_the_injected_clock(tmp_path):
    clock = FakeClock()
    seen: list[float] = []

    def responder(body, i):  # runs when the request reaches the server
        seen.append(clock.now)
        return "<answer>A</answer>"

    def slow_start():  # the teacher's limiter exists long before the first request
        clock.now += 5.0
        yield from requests(8)

    with ChatServer(responder=responder) as srv:
        eng = Engine({"t": teacher(srv, requests_per_minute=600, max_in_flight=1)},
                     tmp_path / "c", progress=False, clock=clock, sleep=clock.sleep)
        res = eng.run(slow_start())
    assert res.failures == 0 and srv.count == 8
    assert [round(t - seen[0], 6) for t in seen] == [round(0.1 * i, 6) for i in range(8)]


def test_tokens_per_minute_are_paced_and_corrected(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("medrecipe.generate.limits.asyncio.sleep", clock.sleep)
    lim = RateLimiter(tokens_per_minute=6000, burst_s=0.0, clock=clock)
    starts = _start_times(lim, clock, [1000, 1000, 1000])
    assert [round(s - starts[0], 6) for s in starts] == [0.0, 10.0, 20.0]
    lim.correct_tokens(estimated=1000, actual=4000)  # the last call used more than thought
    nxt = _start_times(lim, clock, [1000])[0]
    assert round(nxt - starts[0], 6) == 60.0


def test_pause_holds_every_caller(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("medrecipe.generate.limits.asyncio.sleep", clock.sleep)
    lim = RateLimiter(clock=clock)
    lim.pause(7.0)
    assert _start_times(lim, clock, [0])[0] == pytest.approx(107.0)


def test_backoff_is_exponential_with_jitter_and_capped():
    import random

    rng = random.Random(0)
    delays = [backoff_delay(a, 1.0, 8.0, rng=rng) for a in range(6)]
    for a, d in enumerate(delays):
        cap = min(8.0, 2 ** a)
        assert cap / 2 <= d <= cap
    assert backoff_delay(0, 1.0, 8.0, retry_after=5.0, rng=rng) >= 5.0


# ---------------------------------------------------------------------------- progress and logs


def test_progress_bar_shows_counts_spend_and_failures(server, tmp_path, capsys):
    server.inject("400", times=1)
    cfg = teacher(server, price=Price(output_per_mtok=1.0))
    Engine({"t": cfg}, tmp_path / "c", progress=True).run(requests(4))
    err = capsys.readouterr().err
    assert "4/4" in err and "1 failed" in err and "$" in err


def test_failures_are_logged_without_the_key(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GEN_TEST_KEY", "sk-secret-zyx987")
    server.inject("400", times=1, message="echo {authorization}")
    caplog.set_level(logging.DEBUG, logger="medrecipe")
    res = run(teacher(server, api_key_env="GEN_TEST_KEY"), requests(1), tmp_path / "c")
    assert "echo Bearer ***" in res.generations[0].error
    assert "sk-secret-zyx987" not in caplog.text and "echo Bearer ***" in caplog.text


# ---------------------------------------------------------------------------- every attempt counts


def test_connection_closed_without_answer_is_an_attempt_in_the_ledger(server, tmp_path):
    # The server reads the request (and may bill it), then closes the kept-alive connection.
    server.inject("close", times=50, match=lambda b: "number 1?" in json.dumps(b))
    cfg = teacher(server, max_retries=3, max_in_flight=1)
    res = run(cfg, requests(3), tmp_path / "c")
    bad = [g for g in res.generations if g.error]
    assert [g.item_id for g in bad] == ["q1"] and "after 4 attempts" in bad[0].error
    tries = [r for r in server.received if "number 1?" in json.dumps(r.body)]
    assert len(tries) == 1 + cfg.max_retries  # never more than max_retries resends
    assert res.requests_sent == server.count == res.by_teacher["t"]["requests"]


@pytest.mark.parametrize("content", [None, "", "   \n"])
def test_empty_replies_are_failed_attempts_not_answers(tmp_path, content):
    calls = {"n": 0}

    def responder(body, i):
        calls["n"] += 1
        if "number 0?" in json.dumps(body) and calls["n"] <= 2:
            return {"content": content, "finish_reason": "stop"}
        if "number 1?" in json.dumps(body):
            return {"content": content, "finish_reason": "stop"}
        return "<answer>A</answer>"

    with ChatServer(responder=responder) as srv:
        cfg = teacher(srv, max_retries=2, max_in_flight=1)
        res = run(cfg, requests(3), tmp_path / "c")
        by_id = {g.item_id: g for g in res.generations}
        assert by_id["q0"].text == "<answer>A</answer>"  # retried until a real answer came
        assert by_id["q1"].text is None and "empty reply" in by_id["q1"].error
        assert "after 3 attempts" in by_id["q1"].error
        assert res.failures == 1 and res.requests_sent == srv.count
        before = srv.count
        again = run(cfg, requests(3), tmp_path / "c")  # the empty one was not cached
        assert again.cached == 2 and srv.count == before + 3
        # A user who really wants empty replies can keep them (and they are cached).
        kept = run(teacher(srv, allow_empty=True), requests(3), tmp_path / "c2")
        assert kept.failures == 0 and {g.item_id: g.text for g in kept.generations}["q1"] in (
            None, "", "   \n")


def test_budget_keeps_sending_while_spend_plus_reservations_fit(tmp_path):
    # Worst case per call (max_tokens) is 50x what an answer really costs.
    with ChatServer(latency=0.02) as srv:
        cfg = teacher(srv, max_in_flight=8, native_n=False,
                      price=Price(input_per_mtok=0.0, output_per_mtok=1e6),
                      sampling=SamplingConfig(max_tokens=800, seed=1))
        worst = 800.0
        res = run(cfg, requests(40), tmp_path / "c", budget_usd=5 * worst)
        # Old behaviour: 5 worst cases fill the budget and the stop is final (~5 answers).
        assert res.complete and res.failures == 0 and len(res.generations) == 40
        assert res.spend_usd <= 5 * worst and srv.count == 40


def test_budget_is_never_exceeded_when_answers_use_max_tokens(tmp_path):
    long_answer = "word " * 400  # ~500 tokens by the server's count

    with ChatServer(responder=lambda b, i: long_answer) as srv:
        per_call = (len(long_answer) // 4) * 1.0
        cfg = teacher(srv, max_in_flight=4, native_n=False,
                      price=Price(input_per_mtok=0.0, output_per_mtok=1e6),
                      sampling=SamplingConfig(max_tokens=len(long_answer) // 4, seed=1))
        res = run(cfg, requests(10), tmp_path / "c", budget_usd=3.5 * per_call + 50)
        assert res.stopped == "budget" and not res.complete
        assert res.spend_usd <= 3.5 * per_call + 50
        assert len(res.generations) == 3 and res.not_launched == 7


def test_a_fault_storm_leaves_the_ledger_equal_to_what_the_server_saw(tmp_path):
    storm = {"429": 0.05, "500": 0.05, "malformed": 0.05, "empty": 0.05, "close": 0.08,
             "truncated": 0.05, "timeout": 0.02}
    with ChatServer(chaos=storm, chaos_seed=3, chaos_retry_after=0.01, hang_s=1.0) as srv:
        cfg = teacher(srv, max_in_flight=8, max_retries=8, timeout_s=0.3)
        res = run(cfg, requests(60, n=2), tmp_path / "c")
        faulted = sum(1 for r in srv.received if r.answered != "ok")
    assert faulted > 10  # the storm happened
    assert res.requests_sent == srv.count == res.by_teacher["t"]["requests"]
    assert sorted((g.item_id, g.sample_index) for g in res.generations) == sorted(
        (f"q{i}", j) for i in range(60) for j in range(2))
