"""Backends: replay files, the local transformers model, and the HTTP transport details."""

from __future__ import annotations

import email.utils
import io
import json
import time

import pytest
from PIL import Image

from medrecipe.config import GenerateConfig, SamplingConfig, TeacherConfig
from medrecipe.errors import UserError
from medrecipe.generate import Engine, GenRequest, generate_stage
from medrecipe.generate.backends.openai_compat import parse_duration, retry_after_from
from medrecipe.images import ImageStore
from medrecipe.schema import Item, to_table
from medrecipe.store import Run
from medrecipe.testing.chat_server import ChatServer


def items(k: int) -> list[Item]:
    return [Item(id=f"q{i}", source="demo", task="text", question=f"Question {i}?",
                 options=["yes", "no"], answer="A") for i in range(k)]


# ---------------------------------------------------------------------------- replay


def test_replay_jsonl_answers_by_item_and_sample(tmp_path):
    path = tmp_path / "replay.jsonl"
    lines = [
        {"item_id": "q0", "sample_index": 1, "text": "q0 second", "completion_tokens": 7},
        {"item_id": "q0", "sample_index": 0, "text": "q0 first", "prompt_tokens": 30},
        {"item_id": "q1", "text": "q1 first"},  # no index: numbered in file order
        {"item_id": "q1", "text": "q1 second", "reasoning": "thinking",
         "finish_reason": "length"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    t = TeacherConfig(backend="replay", model="demo-teacher", replay_path=str(path))
    run = Run(tmp_path / "run")
    res = generate_stage(to_table(items(3)), {"demo": t}, GenerateConfig(n=2), run, None,
                         progress=False)
    rows = {(r["item_id"], r["sample_index"]): r for r in run.read_table("generations").to_pylist()}
    assert rows[("q0", 0)]["text"] == "q0 first" and rows[("q0", 0)]["prompt_tokens"] == 30
    assert rows[("q0", 1)]["text"] == "q0 second" and rows[("q0", 1)]["completion_tokens"] == 7
    assert rows[("q1", 0)]["text"] == "q1 first"
    assert rows[("q1", 1)]["text"] == "<think>thinking</think>q1 second"
    assert rows[("q1", 1)]["finish_reason"] == "length"
    # q2 is not in the file: a failed generation that says so, not an invented answer.
    assert rows[("q2", 0)]["text"] is None
    assert "replay: no record for item 'q2' sample 0" in rows[("q2", 0)]["error"]
    assert res.extra["failures"] == 2


def test_replay_of_an_earlier_runs_parquet(tmp_path):
    with ChatServer() as srv:
        live = TeacherConfig(model="m", base_url=srv.base_url, template="direct",
                             sampling=SamplingConfig(max_tokens=16))
        first = Run(tmp_path / "first")
        srv.inject("400", times=1)  # one failed row: replay must skip it
        generate_stage(to_table(items(3)), {"t": live}, GenerateConfig(n=2), first, None,
                       progress=False)
    replay = TeacherConfig(backend="replay", model="m", replay_path=str(first.path("generations")),
                           template="direct")
    second = Run(tmp_path / "second")
    generate_stage(to_table(items(3)), {"t": replay}, GenerateConfig(n=2), second, None,
                   progress=False)
    old = {(r["item_id"], r["sample_index"]): r for r in first.read_table("generations").to_pylist()}
    new = {(r["item_id"], r["sample_index"]): r for r in second.read_table("generations").to_pylist()}
    for k, r in old.items():
        if r["error"]:
            assert new[k]["error"] and "replay: no record" in new[k]["error"]
        else:
            assert new[k]["text"] == r["text"] and new[k]["completion_tokens"] == r["completion_tokens"]


def test_replay_filters_by_model_and_reports_bad_files(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"item_id": "q0", "text": "from a", "model": "a"}) + "\n"
                    + json.dumps({"item_id": "q0", "text": "from b", "model": "b"}) + "\n")
    t = TeacherConfig(backend="replay", model="b", replay_path=str(path))
    res = Engine({"b": t}, None, progress=False).run(
        [GenRequest(item_id="q0", teacher="b", messages=[{"role": "user", "content": "x"}])])
    assert [g.text for g in res.generations] == ["from b"]
    path.write_text('{"item_id": "q0"}\n')
    with pytest.raises(UserError, match="line 1: a replay record needs item_id and text"):
        Engine({"b": t}, None, progress=False).run(
            [GenRequest(item_id="q0", teacher="b", messages=[{"role": "user", "content": "x"}])])
    missing = TeacherConfig(backend="replay", model="b", replay_path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="replay file not found"):
        Engine({"b": missing}, None, progress=False).run(
            [GenRequest(item_id="q0", teacher="b", messages=[{"role": "user", "content": "x"}])])


# ---------------------------------------------------------------------------- local model


def test_local_tiny_vlm_answers_an_image_and_text_prompt(tiny_vlm, tmp_path):
    store = ImageStore(tmp_path / "images")
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (120, 10, 200)).save(buf, format="PNG")
    ref = store.put_bytes(buf.getvalue())
    item = Item(id="img", source="demo", task="mm_reasoning", question="What is shown?",
                options=["a lesion", "nothing"], answer="A", images=[ref])
    t = TeacherConfig(backend="transformers_local", model=str(tiny_vlm), device="cpu",
                      template="direct", sampling=SamplingConfig(max_tokens=6, temperature=0.0))
    run = Run(tmp_path / "run")
    res = generate_stage(to_table([item]), {"local": t}, GenerateConfig(n=2), run, store,
                         progress=False)
    rows = run.read_table("generations").to_pylist()
    assert res.complete and len(rows) == 2
    for r in rows:
        assert r["error"] is None and isinstance(r["text"], str)
        assert 0 < r["completion_tokens"] <= 6 and r["finish_reason"] in ("stop", "length")
        # The image became vision tokens: the prompt is longer than the text alone.
        assert r["prompt_tokens"] > 20
    # Greedy decoding of the same prompt gives the same answer for both samples.
    assert rows[0]["text"] == rows[1]["text"]


# ---------------------------------------------------------------------------- HTTP details


def _requests(k: int) -> list[GenRequest]:
    return [GenRequest(item_id=f"q{i}", teacher="t",
                       messages=[{"role": "user", "content": f"question {i}"}]) for i in range(k)]


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_connections_are_kept_alive(transport):
    with ChatServer() as srv:
        t = TeacherConfig(model="m", base_url=srv.base_url, max_in_flight=1,
                          http_transport=transport)
        res = Engine({"t": t}, None, progress=False).run(_requests(15))
        assert res.failures == 0 and srv.count == 15
        assert srv.connections == 1


def test_chunked_responses_are_read():
    with ChatServer(chunked=True) as srv:
        t = TeacherConfig(model="m", base_url=srv.base_url, max_in_flight=2)
        res = Engine({"t": t}, None, progress=False).run(_requests(4))
    assert res.failures == 0
    assert all(g.text.endswith("<answer>A</answer>") for g in res.generations)


def test_unreachable_endpoint_fails_each_sample_with_a_connection_error():
    with ChatServer() as srv:
        url = srv.base_url
    t = TeacherConfig(model="m", base_url=url, max_retries=1, backoff_base_s=0.01)
    res = Engine({"t": t}, None, progress=False).run(_requests(2))
    assert res.failures == 2
    assert all("connection error" in g.error for g in res.generations)


def test_retry_after_headers_are_understood():
    assert retry_after_from({"Retry-After": "3"}) == 3.0
    assert retry_after_from({"retry-after-ms": "250"}) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_from({"Retry-After": future}) <= 31
    assert retry_after_from({"x-ratelimit-remaining-requests": "0",
                             "x-ratelimit-reset-requests": "6m0s"}) == 360.0
    assert retry_after_from({"x-ratelimit-remaining-tokens": "0",
                             "x-ratelimit-reset-tokens": "20ms"}) == pytest.approx(0.02)
    assert retry_after_from({"x-ratelimit-remaining-requests": "5",
                             "x-ratelimit-reset-requests": "1s"}) is None
    assert parse_duration("1m30s") == 90.0 and parse_duration("later") is None


@pytest.fixture
def tls_files(tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_https_endpoints_are_verified_and_used(tls_files, monkeypatch, transport):
    import ssl

    cert, key = tls_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    with ChatServer(ssl_context=ctx) as srv:
        assert srv.base_url.startswith("https://")
        t = TeacherConfig(model="m", base_url=srv.base_url, max_in_flight=2, max_retries=0,
                          http_transport=transport)
        # Not trusted: the certificate is refused, nothing is answered.
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        refused = Engine({"t": t}, None, progress=False).run(_requests(1))
        assert refused.failures == 1 and "connection error" in refused.generations[0].error
        # Trusted through SSL_CERT_FILE (as for a private CA): answered over TLS.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        ok = Engine({"t": t}, None, progress=False).run(_requests(3))
        assert ok.failures == 0 and srv.count == 3
        assert all(g.text.endswith("<answer>A</answer>") for g in ok.generations)


def test_an_endpoint_that_never_answers_stops_the_run():
    with ChatServer() as srv:
        url = srv.base_url  # closed again: every connection is refused
    t = TeacherConfig(model="m", base_url=url, max_retries=0, max_in_flight=8)
    with pytest.raises(UserError, match="100 requests in a row failed.*connection error"):
        Engine({"t": t}, None, progress=False).run(_requests(400))


def test_proxy_environment_variables_are_honoured(monkeypatch):
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    with ChatServer() as proxy:  # answers proxied requests itself
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        t = TeacherConfig(model="m", base_url="http://127.0.0.1:9/v1", max_retries=0)
        res = Engine({"t": t}, None, progress=False).run(_requests(2))
        assert res.failures == 0 and proxy.count == 2
        # A proxied request names the full target URL.
        assert proxy.received[0].path == "http://127.0.0.1:9/v1/chat/completions"
