"""`medrecipe run` end to end against a local chat-completions server: resumable, cached,
re-runs only what a config change touches, and never pays for a request twice."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from medrecipe import pipeline
from medrecipe.config import load_recipe
from medrecipe.testing.chat_server import ChatServer


def _responder(body, index):
    """Even samples answer A (right), odd samples B (wrong); one question never closes <think>."""
    text = json.dumps(body["messages"])
    if "never finishes" in text:
        return {"content": "<think>I keep thinking about this", "finish_reason": "length"}
    letter = "A" if index % 2 == 0 else "B"
    return f"<think>Reasoning about sample {index} in some detail.</think>\n<answer>{letter}</answer>"


@pytest.fixture()
def recipe_file(tmp_path):
    Image.new("RGB", (64, 48), (30, 120, 200)).save(tmp_path / "scan.png")
    train = [{"id": f"t{i}", "question": f"Training question number {i} about renal physiology?",
              "options": ["right", "wrong", "other"], "answer": "A"} for i in range(6)]
    train.append({"id": "img", "question": "Which modality shows this picture?",
                  "options": ["CT", "MRI"], "answer": "A", "images": ["scan.png"]})
    train.append({"id": "loop", "question": "A question whose answer never finishes?",
                  "options": ["x", "y"], "answer": "A"})
    leak = ("a sixty year old woman presents with sudden painless loss of vision in one eye "
            "and a cherry red spot on fundoscopy what is the diagnosis")
    train.append({"id": "leak", "question": leak.capitalize() + "?", "options": ["CRAO", "CRVO"],
                  "answer": "A"})
    bench = [{"id": "b0", "question": "Bench: " + leak + "?", "options": ["CRAO", "CRVO"],
              "answer": "A"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train) + "\n")
    (tmp_path / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in bench) + "\n")

    def write(base_url: str, **select):
        data = {
            "name": "e2e", "run_dir": str(tmp_path / "run"),
            "sources": [{"name": "train", "adapter": "generic", "path": "train.jsonl"},
                        {"name": "bench", "adapter": "generic", "path": "bench.jsonl",
                         "role": "benchmark"}],
            "prepare": {"decontaminate": {"against": ["bench"], "n": 16}},
            "teachers": {"t": {"model": "local-model", "base_url": base_url,
                               "api_key_env": "E2E_KEY", "template": "long_reasoning",
                               "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}},
            "generate": {"n": 4, "routes": {"*": "t"}},
            "select": {"cap_per_question": 2, **select},
            "export": {"formats": ["llamafactory", "trl", "jsonl"]},
        }
        p = tmp_path / "recipe.yaml"
        p.write_text(yaml.safe_dump(data))
        return p

    return write


def _run(path):
    recipe, raw = load_recipe(path)
    ctx = pipeline.open_context(recipe, raw, progress=False, echo=False)
    return ctx, pipeline.run_recipe(ctx)


def test_recipe_runs_end_to_end_and_reruns_for_free(recipe_file, monkeypatch):
    monkeypatch.setenv("E2E_KEY", "sk-e2e-secret-0123456789")
    with ChatServer(responder=_responder) as srv:
        path = recipe_file(srv.base_url)
        ctx, out = _run(path)
        first = srv.count
        run = ctx.run

        # The benchmark-overlapping question was removed before any request was made.
        items = run.read_table("items").column("id").to_pylist()
        assert "train/leak" not in items and len(items) == 8
        assert first == 8  # one request per question (native n=4)

        verdicts = run.read_table("verdicts").to_pylist()
        assert len(verdicts) == 32
        assert sum(v["terminated"] is False for v in verdicts) == 4
        sel = run.read_table("selected_train").to_pylist()
        # Correct samples are 0 and 2 of each answerable question, capped at 2 per question.
        assert len(sel) == 7 * 2 and all(r["answer"] == "A" for r in sel)
        assert all(r["target"].startswith("<think>") and "\\boxed{A: " in r["target"] for r in sel)

        from datasets import load_from_disk

        ds = load_from_disk(out.exports["trl"])
        assert ds["train"].num_rows == 14
        assert out.report is not None and out.report.exists()

        # A second run makes no requests and re-runs nothing.
        ctx2, _ = _run(path)
        assert srv.count == first
        assert all(ctx2.run.stage(s).finished_at == run.stage(s).finished_at
                   for s in ("prepare", "generate", "grade", "select"))

        # Changing a filter re-runs select and export only, still with no request.
        path = recipe_file(srv.base_url, cap_per_question=1)
        ctx3, out3 = _run(path)
        assert srv.count == first
        assert ctx3.run.stage("generate").finished_at == run.stage("generate").finished_at
        assert pq.read_table(ctx3.run.path("selected_train")).num_rows == 7

    # The API key is in no file of the run directory.
    secret = b"sk-e2e-secret-0123456789"
    for f in ctx.run.root.rglob("*"):
        if f.is_file():
            assert secret not in f.read_bytes(), f


def test_difficulty_filter_and_annotation_in_a_run(recipe_file, monkeypatch, tmp_path):
    """A judge rates difficulty (kept range 3-6) and a labeller fills anatomy, in one run."""
    monkeypatch.setenv("E2E_KEY", "k")

    def responder(body, index):
        text = json.dumps(body["messages"])
        if "response_format" in body:
            return json.dumps({"modality": "other", "anatomy": "kidney"})
        if "<rating>" in text:  # the difficulty judge: number i -> rating i
            for i in range(9):
                if f"Training question number {i} " in text:
                    return f"<rating>{i}</rating>"
            return "no idea"
        return _responder(body, index)

    with ChatServer(responder=responder) as srv:
        path = recipe_file(srv.base_url)
        data = yaml.safe_load(path.read_text())
        data["teachers"]["judge"] = {"model": "judge-model", "base_url": srv.base_url}
        data["select"]["difficulty"] = {"judge": "judge", "min_rating": 3, "max_rating": 5}
        data["annotate"] = {"enabled": True, "labeller": "judge"}
        path.write_text(yaml.safe_dump(data))
        ctx, _ = _run(path)
    sel = ctx.run.read_table("selected_train").to_pylist()
    assert sorted({r["item_id"] for r in sel}) == ["train/t3", "train/t4", "train/t5"]
    stats = ctx.run.stage("select").extra
    # t0's "rating 0" is out of range: counted as unparsed with the two unrated questions.
    assert stats["difficulty"]["rated"] == 5 and stats["difficulty"]["unparsed"] == 3
    # The labelled items are a stage output of their own (items.parquet stays as prepared).
    items = {r["id"]: r for r in ctx.run.read_table("items_labelled").to_pylist()}
    assert items["train/t0"]["anatomy"] == "kidney"


def test_choice_judge_reads_unread_replies_in_the_grade_stage(recipe_file, monkeypatch):
    """grade.choice_judge: replies no rule reads go to a judge teacher (method judge, counted in
    the stage record); replies with several letters or an invented question never do."""
    monkeypatch.setenv("E2E_KEY", "k")

    def responder(body, index):
        text = json.dumps(body["messages"])
        if "<choice>" in text:  # the reading judge: every reply it is shown reads as A
            return "<choice>A</choice>"
        if "Training question number 0 " in text:
            return "I would go with the first of the three."
        if "Training question number 1 " in text:
            return "The answer is A, B, and C."
        if "Training question number 2 " in text:
            return "Let me think.\n\nQuestion: Another question?\nAnswer: A"
        return _responder(body, index)

    with ChatServer(responder=responder) as srv:
        path = recipe_file(srv.base_url)
        data = yaml.safe_load(path.read_text())
        data["teachers"]["reader"] = {"model": "judge-model", "base_url": srv.base_url}
        data["grade"] = {"choice_judge": "reader"}
        path.write_text(yaml.safe_dump(data))
        ctx, _ = _run(path)
        judged = [json.dumps(b["messages"]) for b in srv.bodies() if "<choice>" in json.dumps(b["messages"])]
    verdicts = ctx.run.read_table("verdicts").to_pylist()
    by_item: dict[str, set] = {}
    for v in verdicts:
        by_item.setdefault(v["item_id"], set()).add((v["answer"], v["method"], v["correct"]))
    assert by_item["train/t0"] == {("A", "judge", True)}
    assert by_item["train/t1"] == {(None, "none", None)}
    assert by_item["train/t2"] == {(None, "none", None)}
    assert judged and all("first of the three" in t for t in judged)
    extra = ctx.run.stage("grade").extra
    assert extra["methods"]["judge"] == 4
    assert (extra["choice_judge"]["asked"], extra["choice_judge"]["answered"]) == (4, 4)
    assert extra["choice_judge"]["unparsed"] == 0
