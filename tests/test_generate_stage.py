"""The generate stage end to end: items in, generations.parquet out, against a local server."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from medrecipe.config import GenerateConfig, Price, SamplingConfig, TeacherConfig
from medrecipe.errors import UserError
from medrecipe.generate import generate_stage, route
from medrecipe.images import ImageStore
from medrecipe.prompts import load_template
from medrecipe.schema import GENERATION_SCHEMA, Item, to_table
from medrecipe.store import Run, StageRecord
from medrecipe.testing.chat_server import ChatServer


@pytest.fixture
def server():
    with ChatServer(latency=0.0, hang_s=3.0) as srv:
        yield srv


def teacher(srv: ChatServer, **kw) -> TeacherConfig:
    base = dict(model="teacher-x", base_url=srv.base_url, max_in_flight=4, max_retries=2,
                backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0,
                template="reasoning_minimal", sampling=SamplingConfig(max_tokens=64, seed=5))
    base.update(kw)
    return TeacherConfig(**base)


def text_items(k: int, task: str = "text") -> list[Item]:
    return [Item(id=f"q{i}", source="src", task=task, question=f"Which option is right, #{i}?",
                 options=["alpha", "beta", "gamma"], answer="B") for i in range(k)]


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, format="PNG")
    return buf.getvalue()


def test_stage_writes_generations_in_the_schema(server, tmp_path):
    run = Run(tmp_path / "run")
    items = to_table(text_items(3))
    res = generate_stage(items, {"t": teacher(server)}, GenerateConfig(n=2), run, None,
                         progress=False)
    table = pq.read_table(run.path("generations"))
    assert table.schema.equals(GENERATION_SCHEMA)
    assert res.rows == {"generations": 6} and res.complete
    rows = table.to_pylist()
    assert sorted((r["item_id"], r["sample_index"]) for r in rows) == [
        (f"q{i}", s) for i in range(3) for s in range(2)]
    tpl = load_template("reasoning_minimal")
    assert {r["template"] for r in rows} == {"reasoning_minimal"}
    assert {r["template_hash"] for r in rows} == {tpl.hash}
    assert all(r["text"] and r["error"] is None and r["source"] == "src" for r in rows)
    assert res.extra["failures"] == 0 and res.extra["requests_sent"] == 3
    assert run.manifest["prompt_templates"]["generate.t"] == tpl.hash
    # The body carries the rendered template: question, lettered options, answer instruction.
    content = server.bodies()[0]["messages"][0]["content"]
    assert "A. alpha\nB. beta\nC. gamma" in content and "<answer>" in content


def test_stage_rerun_uses_the_cache(server, tmp_path):
    run = Run(tmp_path / "run")
    items = to_table(text_items(4))
    generate_stage(items, {"t": teacher(server)}, GenerateConfig(n=3), run, None, progress=False)
    assert server.count == 4
    res = generate_stage(items, {"t": teacher(server)}, GenerateConfig(n=3), run, None,
                         progress=False)
    assert server.count == 4 and res.extra["cached"] == 12 and res.rows["generations"] == 12


def test_tasks_are_routed_to_their_teachers(tmp_path):
    with ChatServer() as a, ChatServer() as b:
        teachers = {"reasoner": teacher(a, model="r1"), "vision": teacher(b, model="vl")}
        items = to_table(text_items(2) + [
            Item(id="m1", source="src", task="mm_reasoning", question="What is seen?",
                 options=["x", "y"], answer="A")])
        cfg = GenerateConfig(n=1, routes={"text": "reasoner", "*": "vision"})
        run = Run(tmp_path / "run")
        generate_stage(items, teachers, cfg, run, None, progress=False)
        assert a.count == 2 and b.count == 1
        by_item = {r["item_id"]: r for r in run.read_table("generations").to_pylist()}
        assert by_item["q0"]["teacher"] == "reasoner" and by_item["q0"]["model"] == "r1"
        assert by_item["m1"]["teacher"] == "vision" and by_item["m1"]["model"] == "vl"


def test_routing_errors_name_what_to_add():
    teachers = {"a": TeacherConfig(model="a"), "b": TeacherConfig(model="b")}
    assert route("text", {}, {"a": teachers["a"]}) == "a"
    assert route("open_vqa", {"text": "a", "*": "b"}, teachers) == "b"
    with pytest.raises(UserError, match="generate.routes.text"):
        route("text", {}, teachers)


def test_user_template_file_is_used_and_hashed(server, tmp_path):
    tpl = tmp_path / "mine.j2"
    tpl.write_text("@@system\nBe brief.\n@@user\nQ: {{ question }}\n{{ option_block }}\n")
    run = Run(tmp_path / "run")
    generate_stage(to_table(text_items(1)), {"t": teacher(server, template=str(tpl))},
                   GenerateConfig(n=1), run, None, progress=False)
    body = server.bodies()[0]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: Which option is right, #0?\nA. alpha\nB. beta\nC. gamma"}]
    row = run.read_table("generations").to_pylist()[0]
    assert row["template"] == "mine" and row["template_hash"] == load_template(str(tpl)).hash


def test_images_are_sent_as_base64_data_url_parts(server, tmp_path):
    store = ImageStore(tmp_path / "images")
    raw = png_bytes((200, 30, 30))
    ref = store.put_bytes(raw)
    item = Item(id="img1", source="src", task="mm_reasoning", question="What colour dominates?",
                options=["red", "blue"], answer="A", images=[ref])
    run = Run(tmp_path / "run")
    generate_stage(to_table([item]), {"t": teacher(server, template="direct")},
                   GenerateConfig(n=1), run, store, progress=False)
    parts = server.bodies()[0]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == raw
    assert "What colour dominates?" in parts[1]["text"]


def test_budget_stop_leaves_the_stage_incomplete_and_a_rerun_finishes(server, tmp_path):
    cfg = teacher(server, max_in_flight=1, price=Price(output_per_mtok=1e6),
                  sampling=SamplingConfig(max_tokens=20, seed=1))
    run = Run(tmp_path / "run")
    items = to_table(text_items(8))
    res = generate_stage(items, {"t": cfg}, GenerateConfig(n=1, budget_usd=50.0), run, None,
                         progress=False)
    assert not res.complete and res.extra["stopped"] == "budget"
    done = res.rows["generations"]
    assert 0 < done < 8 and run.num_rows("generations") == done
    res2 = generate_stage(items, {"t": cfg}, GenerateConfig(n=1), run, None, progress=False)
    assert res2.complete and res2.rows["generations"] == 8
    assert server.count == 8 and res2.extra["cached"] == done


def test_failed_generations_are_reported_and_retried(server, tmp_path):
    server.inject("503", times=50, match=lambda b: "#1?" in str(b))
    run = Run(tmp_path / "run")
    items = to_table(text_items(3))
    res = generate_stage(items, {"t": teacher(server)}, GenerateConfig(n=1), run, None,
                         progress=False)
    assert res.extra["failures"] == 1 and not res.complete
    failed = [r for r in run.read_table("generations").to_pylist() if r["error"]]
    assert [r["item_id"] for r in failed] == ["q1"] and "HTTP 503" in failed[0]["error"]
    server.clear_faults()
    res2 = generate_stage(items, {"t": teacher(server)}, GenerateConfig(n=1), run, None,
                          progress=False)
    assert res2.complete and res2.extra["failures"] == 0 and res2.extra["cached"] == 2


def test_api_key_is_written_nowhere(server, tmp_path, monkeypatch, caplog):
    secret = "sk-proj-TOPSECRET-4c1f9e2b7a"
    monkeypatch.setenv("MEDRECIPE_TEST_API_KEY", secret)
    caplog.set_level("DEBUG")
    # Some endpoints echo the credentials in their error text; that must be scrubbed too.
    server.inject("400", times=1, message="invalid request from {authorization}")
    server.inject("500", times=2, message="upstream said {authorization}")
    store = ImageStore(tmp_path / "run" / "images")
    ref = store.put_bytes(png_bytes((0, 90, 200)))
    items = text_items(3) + [Item(id="img", source="src", task="mm_reasoning", question="Q?",
                                  options=["a", "b"], answer="A", images=[ref])]
    run = Run(tmp_path / "run")
    cfg = teacher(server, api_key_env="MEDRECIPE_TEST_API_KEY", max_retries=1)
    res = generate_stage(to_table(items), {"t": cfg}, GenerateConfig(n=2), run, store,
                         progress=False)
    # What a pipeline keeps in the manifest is scanned too.
    run.record_stage(StageRecord(name="generate", fingerprint="x", config_hash="y",
                                 extra=res.extra))
    assert server.received[0].headers["authorization"] == f"Bearer {secret}"  # it was sent
    assert res.extra["failures"] >= 1  # the echoed errors were recorded
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name.startswith("requests.sqlite") for p in files)
    for p in files:
        assert secret.encode() not in p.read_bytes(), p
    assert secret not in caplog.text
    from medrecipe.generate import Engine, make_backend

    assert secret not in repr(make_backend(cfg)) and secret not in repr(Engine({"t": cfg}, None))
    errors = [r["error"] for r in run.read_table("generations").to_pylist() if r["error"]]
    assert errors and all("Bearer ***" in e for e in errors)


_CHILD = textwrap.dedent("""
    import sys
    import pyarrow.parquet as pq
    from medrecipe.config import GenerateConfig, SamplingConfig, TeacherConfig
    from medrecipe.generate import generate_stage
    from medrecipe.store import Run

    base_url, run_dir, items_path = sys.argv[1:4]
    t = TeacherConfig(model="m", base_url=base_url, max_in_flight=4, template="direct",
                      sampling=SamplingConfig(max_tokens=16, seed=0))
    generate_stage(pq.read_table(items_path), {"t": t}, GenerateConfig(n=1), Run(run_dir), None,
                   progress=False)
""")


def test_resume_after_sigkill_repeats_at_most_the_in_flight_requests(tmp_path):
    items = text_items(40)
    items_path = tmp_path / "items.parquet"
    pq.write_table(to_table(items), items_path)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    run_dir = tmp_path / "run"
    with ChatServer(latency=0.1) as srv:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        child = subprocess.Popen([sys.executable, str(script), srv.base_url, str(run_dir),
                                  str(items_path)], env=env)
        deadline = time.monotonic() + 60
        while srv.count < 14 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        at_kill = srv.count
        assert 0 < at_kill < 40, "the child should be killed in the middle of the run"
        assert not (run_dir / "generations.parquet").exists()  # no half-written output
        res = generate_stage(to_table(items), {"t": TeacherConfig(
            model="m", base_url=srv.base_url, max_in_flight=4, template="direct",
            sampling=SamplingConfig(max_tokens=16, seed=0))}, GenerateConfig(n=1),
            Run(run_dir), None, progress=False)
        assert res.complete and res.rows["generations"] == 40
        bodies = [str(b["messages"]) for b in srv.bodies()]
    repeats = sum(c - 1 for c in Counter(bodies).values())
    assert len(set(bodies)) == 40
    assert repeats <= 4  # at most the requests that were in flight when the child died
    assert res.extra["cached"] >= at_kill - 4
    rows = Run(run_dir).read_table("generations").to_pylist()
    assert sorted(r["item_id"] for r in rows) == sorted(i.id for i in items)
    assert all(r["error"] is None for r in rows)
