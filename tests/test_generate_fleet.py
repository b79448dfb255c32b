"""A teacher served by a fleet of endpoints: spread, per-endpoint limits, health, failover.

Every test drives the real engine and OpenAI-compatible client against several local chat
servers; where timing matters the engine runs on an injected clock and sleep.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest

from medrecipe.config import GenerateConfig, SamplingConfig, TeacherConfig
from medrecipe.errors import RecipeError
from medrecipe.generate import Engine, GenRequest, generate_stage
from medrecipe.schema import Item, to_table
from medrecipe.store import Run
from medrecipe.testing.chat_server import ChatServer
from medrecipe.testing.clock import FakeClock


@pytest.fixture
def fleet(request):
    """Started ChatServers: `fleet(k, **kw)` returns k of them; all stopped at the end."""
    servers: list[ChatServer] = []

    def make(k: int, **kw) -> list[ChatServer]:
        new = [ChatServer(**kw).start() for _ in range(k)]
        servers.extend(new)
        return new

    yield make
    for s in servers:
        s.stop()


def teacher(servers, **kw) -> TeacherConfig:
    base = dict(model="teacher-x", base_urls=[s.base_url for s in servers], max_in_flight=3,
                max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0,
                native_n=False, sampling=SamplingConfig(max_tokens=64, temperature=0.7, seed=3))
    base.update(kw)
    return TeacherConfig(**base)


def requests(k: int, n: int = 1) -> list[GenRequest]:
    return [GenRequest(item_id=f"q{i}", teacher="t", n=n,
                       messages=[{"role": "user",
                                  "content": [{"type": "text", "text": f"Question {i}?"}]}])
            for i in range(k)]


def run(cfg: TeacherConfig, reqs, cache, **kw):
    return Engine({"t": cfg}, cache, progress=False, **kw).run(reqs)


def endpoint_counts(res, key: str = "requests") -> dict[str, int]:
    return {url: e[key] for url, e in res.by_teacher["t"]["endpoints"].items()}


# ---------------------------------------------------------------------------- config


def test_base_urls_are_validated_one_by_one_and_keys_stay_encrypted():
    with pytest.raises(ValueError, match="base_urls.1") as e:
        TeacherConfig(model="m", base_urls=["http://127.0.0.1:1/v1", "htps://host/v1"])
    assert "scheme must be http or https" in str(e.value)
    # One remote plain-http server among them is enough to refuse the key...
    with pytest.raises(ValueError, match="unencrypted"):
        TeacherConfig(model="m", api_key_env="KEY", endpoints=[
            {"url": "https://a.example/v1"}, {"url": "http://10.0.0.7:8000/v1"}])
    # ...unless the recipe says it trusts that network; loopback and https are always fine.
    TeacherConfig(model="m", api_key_env="KEY", allow_insecure_http=True,
                  base_urls=["http://10.0.0.7:8000/v1"])
    TeacherConfig(model="m", api_key_env="KEY",
                  base_urls=["http://127.0.0.1:8000/v1", "https://b.example/v1"])


def test_base_url_base_urls_and_endpoints_are_mutually_exclusive(tmp_path):
    from medrecipe.config import recipe_from_data

    data = {"name": "r", "sources": [{"name": "a", "path": "a.jsonl"}],
            "teachers": {"t": {"model": "m", "base_url": "http://127.0.0.1:1/v1",
                               "base_urls": ["http://127.0.0.1:2/v1"]}}}
    with pytest.raises(RecipeError, match="only one of base_url, base_urls and endpoints"):
        recipe_from_data(data)
    with pytest.raises(ValueError, match="repeats"):
        TeacherConfig(model="m", base_urls=["http://127.0.0.1:1/v1"] * 2)
    with pytest.raises(ValueError, match="only backend openai_compat"):
        TeacherConfig(model="m", backend="replay", base_urls=["http://127.0.0.1:1/v1"])


def test_limits_apply_per_endpoint_unless_an_endpoint_overrides_them():
    t = TeacherConfig(model="m", max_in_flight=32, requests_per_minute=600, endpoints=[
        {"url": "http://127.0.0.1:1/v1"},
        {"url": "http://127.0.0.1:2/v1", "max_in_flight": 128, "tokens_per_minute": 1e6}])
    a, b = t.fleet()
    assert (a.max_in_flight, a.requests_per_minute, a.tokens_per_minute) == (32, 600, None)
    assert (b.max_in_flight, b.requests_per_minute, b.tokens_per_minute) == (128, 600, 1e6)
    one = t.for_endpoint(b)
    assert one.base_url == b.url and one.max_in_flight == 128 and one.urls() == [b.url]
    # base_url is the one-endpoint case of the same thing.
    single = TeacherConfig(model="m", base_url="http://127.0.0.1:1/v1", max_in_flight=8)
    assert [(e.url, e.max_in_flight) for e in single.fleet()] == [("http://127.0.0.1:1/v1", 8)]


# ---------------------------------------------------------------------------- spread


def test_requests_spread_across_the_fleet_and_a_rerun_on_another_fleet_sends_nothing(fleet,
                                                                                    tmp_path):
    servers = fleet(4, latency=0.02)
    res = run(teacher(servers), requests(160), tmp_path / "c")
    assert res.failures == 0 and len(res.generations) == 160
    counts = [s.count for s in servers]
    assert sum(counts) == 160 == res.requests_sent
    for c in counts:  # a fair share each: 40, within tolerance
        assert 20 <= c <= 60, counts
    # The manifest's view of the spread is what the servers saw.
    assert endpoint_counts(res) == {s.base_url: s.count for s in servers}
    assert endpoint_counts(res, "answered") == {s.base_url: s.count for s in servers}
    # The cache key does not name the endpoint: a smaller fleet in another order reuses all.
    other = fleet(1, latency=0.02)[0]
    again = run(teacher([other, servers[2]]), requests(160), tmp_path / "c")
    assert again.cached == 160 and again.requests_sent == 0
    assert other.count == 0 and sum(s.count for s in servers) == 160
    assert [g.text for g in again.generations] == [g.text for g in res.generations]


def test_calls_go_to_the_least_loaded_endpoint_and_take_turns_when_all_are_idle(fleet,
                                                                               tmp_path):
    servers = fleet(4, latency=0.2)
    # 12 calls start together on 4 x 4 free slots: 3 each, not 4 + 4 + 4 + 0.
    res = run(teacher(servers, max_in_flight=4), requests(12), tmp_path / "a")
    assert res.failures == 0 and [s.count for s in servers] == [3, 3, 3, 3]
    # Load is relative to each endpoint's limit: 4 calls on 2 + 6 slots go 1 + 3, not 2 + 2.
    small, big = servers[:2]
    cfg = teacher([], base_urls=[], endpoints=[{"url": small.base_url, "max_in_flight": 2},
                                               {"url": big.base_url, "max_in_flight": 6}])
    before = small.count, big.count
    run(cfg, requests(4), tmp_path / "r")
    assert (small.count - before[0], big.count - before[1]) == (1, 3)
    for s in servers:
        s.reset_counts()
        s.latency = 0.0

    async def one_at_a_time():  # each call is answered before the next one is asked
        for r in requests(12):
            yield r
            await asyncio.sleep(0.02)

    eng = Engine({"t": teacher(servers, max_in_flight=4)}, tmp_path / "b", progress=False)
    res = asyncio.run(eng.arun(one_at_a_time()))
    assert res.failures == 0 and sum(s.count for s in servers) == 12
    assert min(s.count for s in servers) >= 2, [s.count for s in servers]  # not all on one


def test_each_endpoint_keeps_its_own_in_flight_limit(fleet, tmp_path):
    small, big = fleet(2, latency=0.03)
    cfg = teacher([], base_urls=[], endpoints=[{"url": small.base_url, "max_in_flight": 2},
                                               {"url": big.base_url, "max_in_flight": 6}])
    res = run(cfg, requests(120), tmp_path / "c")
    assert res.failures == 0 and small.count + big.count == 120
    assert small.max_in_flight_seen <= 2 and big.max_in_flight_seen <= 6
    assert big.max_in_flight_seen > 2  # the big one was used beyond the small one's limit
    # More capacity, more of the work (6 of 8 slots): the least-loaded choice follows it.
    assert big.count > 2 * small.count
    eps = res.by_teacher["t"]["endpoints"]
    assert eps[small.base_url]["max_in_flight"] == 2 and eps[big.base_url]["max_in_flight"] == 6


# ---------------------------------------------------------------------------- failover


def test_a_server_stopped_mid_run_is_failed_over_with_no_sample_lost(fleet, tmp_path):
    servers = fleet(3, latency=0.02)
    doomed = servers[1]
    answered = Counter()

    def responder(body, i):  # runs on the doomed server's thread
        answered["n"] += 1
        if answered["n"] == 10:  # stop it from another thread, with calls still in flight
            threading.Thread(target=doomed.stop).start()
        return "<think>ok</think><answer>A</answer>"

    doomed.responder = responder
    cfg = teacher(servers, backoff_base_s=0.05, backoff_max_s=0.5)
    res = run(cfg, requests(300), tmp_path / "c")
    assert res.failures == 0 and len(res.generations) == 300
    assert sorted(g.item_id for g in res.generations) == sorted(f"q{i}" for i in range(300))
    eps = res.by_teacher["t"]["endpoints"]
    dead = eps[doomed.base_url]
    assert dead["times_down"] >= 1
    # Taken out of the rotation: after the calls it had in flight and the few failures that
    # take it out, only a probe per cool-down went to it (an idle dead server would
    # otherwise look least loaded and get most calls).
    never_reached = dead["requests"] - doomed.count
    assert 1 <= never_reached <= 45
    for s in (servers[0], servers[2]):  # every attempt to a live server is in the ledger
        assert eps[s.base_url]["requests"] == s.count and eps[s.base_url]["failures"] == 0
    assert res.requests_sent == sum(e["requests"] for e in eps.values())
    assert res.by_teacher["t"]["requests"] == res.requests_sent
    # Answers of the stopped server were cached like any other: a re-run pays nothing.
    again = run(teacher([servers[0]]), requests(300), tmp_path / "c")
    assert again.requests_sent == 0 and again.cached == 300


def test_a_failed_call_is_retried_on_another_endpoint_at_once(fleet, tmp_path):
    a, b = fleet(2)
    for s in (a, b):
        s.inject("500", times=1)
    clock = FakeClock()
    res = run(teacher([a, b], max_in_flight=1), requests(1), tmp_path / "c", clock=clock,
              sleep=clock.sleep)
    assert res.failures == 0 and res.requests_sent == 3 == a.count + b.count
    # First try on one, the retry on the other without a backoff wait; only when both had
    # failed once did the third attempt back off (one sleep) before going out.
    assert [r.answered for r in a.received] + [r.answered for r in b.received] in (
        ["500", "ok", "500"], ["500", "500", "ok"])
    assert len([s for s in clock.sleeps if s > 0]) == 1


def test_an_endpoint_that_comes_back_is_probed_and_gets_traffic_again(fleet, tmp_path):
    flaky, steady = fleet(2, latency=0.01)
    flaky.inject("503", times=8)  # down for a while, then healthy again
    res = run(teacher([flaky, steady]), requests(240), tmp_path / "c")
    assert res.failures == 0 and len(res.generations) == 240
    eps = res.by_teacher["t"]["endpoints"]
    assert eps[flaky.base_url]["times_down"] >= 1
    assert eps[flaky.base_url]["failures"] == 8  # every fault was one attempt, failed over
    assert eps[flaky.base_url]["answered"] >= 40  # real traffic found it healthy again
    assert flaky.count + steady.count == res.requests_sent


def test_a_429_on_one_server_does_not_pause_the_others(fleet, tmp_path):
    a, b = fleet(2, latency=0.01)
    a.inject("429", times=1, retry_after=60)
    clock = FakeClock()
    seen_while_paused: dict[str, int] = {}

    async def sleep(s: float) -> None:
        clock.sleeps.append(s)
        if s >= 30:  # a's pause: keep it running while b works, then let the time pass
            for _ in range(2000):
                if b.count >= 30:
                    break
                await asyncio.sleep(0.005)
            seen_while_paused.setdefault("a", a.count)
            seen_while_paused.setdefault("b", b.count)
        clock.now += s
        await asyncio.sleep(0)

    cfg = teacher([a, b], max_in_flight=2)
    res = run(cfg, requests(60), tmp_path / "c", clock=clock, sleep=sleep)
    assert res.failures == 0 and len(res.generations) == 60
    assert seen_while_paused["b"] >= 30  # b kept serving through a's pause
    assert seen_while_paused["a"] <= 2  # a got nothing after its 429 (2 were in flight)
    assert a.count + b.count == res.requests_sent == 61  # the 429 was one more attempt
    assert a.count > seen_while_paused["a"]  # and a was used again once its pause was over


def test_every_endpoint_down_waits_for_cool_downs_and_stops_within_the_retry_budget(fleet,
                                                                                    tmp_path):
    clock = FakeClock(start=1000.0)
    servers = fleet(2)
    for s in servers:  # every request is a 503
        s.inject("503", times=10_000)
    cfg = teacher(servers, max_in_flight=5, max_retries=6, backoff_base_s=1.0, backoff_max_s=8.0)
    res = run(cfg, requests(10), tmp_path / "c", clock=clock, sleep=clock.sleep)
    assert res.failures == 10 and all(g.text is None for g in res.generations)
    assert res.requests_sent == sum(s.count for s in servers)
    # No sample got more than 1 + max_retries attempts, whichever servers they went to.
    per_item = Counter(b["messages"][0]["content"] for s in servers for b in s.bodies())
    assert max(per_item.values()) <= 7
    # Waiting, not spinning: once both were out, calls waited for a cool-down and one probe
    # per endpoint went at a time, so most retries were never spent (spending them all, as
    # retrying without health tracking does, sends 10 x 7 = 70 calls; this sends ~25).
    assert res.requests_sent <= 40
    assert any("down" in (g.error or "") for g in res.generations)


def test_the_ledger_equals_what_the_servers_saw_in_a_fault_storm(tmp_path):
    storm = {"429": 0.05, "500": 0.05, "malformed": 0.05, "empty": 0.05, "close": 0.08,
             "truncated": 0.05, "timeout": 0.02}
    servers = [ChatServer(chaos=storm, chaos_seed=seed, chaos_retry_after=0.01,
                          hang_s=1.0).start() for seed in (1, 2, 3)]
    try:
        cfg = teacher(servers, max_in_flight=3, max_retries=8, timeout_s=0.3, native_n=True)
        res = run(cfg, requests(60, n=2), tmp_path / "c")
        faulted = sum(1 for s in servers for r in s.received if r.answered != "ok")
    finally:
        for s in servers:
            s.stop()
    assert faulted > 10  # the storm happened
    assert res.requests_sent == sum(s.count for s in servers) == res.by_teacher["t"]["requests"]
    assert endpoint_counts(res) == {s.base_url: s.count for s in servers}
    assert sorted((g.item_id, g.sample_index) for g in res.generations) == sorted(
        (f"q{i}", j) for i in range(60) for j in range(2))


# ---------------------------------------------------------------------------- the stage


def test_the_generate_stage_records_the_spread_for_the_manifest(fleet, tmp_path):
    servers = fleet(2)
    items = [Item(id=f"q{i}", source="src", task="text", question=f"Which one, #{i}?",
                  options=["alpha", "beta"], answer="A") for i in range(12)]
    cfg = teacher(servers, template="reasoning_minimal")
    res = generate_stage(to_table(items), {"t": cfg}, GenerateConfig(n=2), Run(tmp_path / "r"),
                         None, progress=False)
    eps = res.extra["by_teacher"]["t"]["endpoints"]
    assert set(eps) == {s.base_url for s in servers}
    assert sum(e["requests"] for e in eps.values()) == res.extra["requests_sent"] == 24
    assert all(e["requests"] > 0 and e["latency_s"] is not None for e in eps.values())
