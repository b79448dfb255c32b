"""The CLI as a user runs it: validate, ingest, inspect, and user errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from PIL import Image


def medrecipe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "medrecipe.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd,
                          env={"MEDRECIPE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
                               "COLUMNS": "200", "PATH": "/usr/bin:/bin"})


def _recipe(tmp_path, sources, **extra):
    data = {"name": "t", "run_dir": str(tmp_path / "run"), "sources": sources, **extra}
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_invalid_recipe_exits_2_with_paths_and_no_traceback(tmp_path):
    p = _recipe(tmp_path, [{"name": "a", "adapter": "generic", "path": "x.jsonl", "limit": 0}],
                generate={"n": -1})
    r = medrecipe("validate", p)
    assert r.returncode == 2
    assert "sources.0.limit" in r.stderr and "generate.n" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_missing_source_file_is_a_user_error(tmp_path):
    p = _recipe(tmp_path, [{"name": "a", "adapter": "generic", "path": str(tmp_path / "nope.jsonl")}])
    r = medrecipe("ingest", p)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_unknown_adapter_is_a_user_error(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    p = _recipe(tmp_path, [{"name": "a", "adapter": "medqaa", "path": "a.jsonl"}])
    r = medrecipe("ingest", p)
    assert r.returncode == 2 and "unknown source adapter 'medqaa'" in r.stderr


def test_ingest_quarantines_each_defect_and_keeps_good_rows(tmp_path):
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = [
        {"id": "g1", "question": "Which drug?", "options": ["a", "b", "c"], "answer": "B"},
        {"id": "g2", "question": "Which lesion?", "options": ["x", "y"], "answer": "A",
         "images": ["ok.png"]},
        {"id": "g3", "question": "Is it normal?", "answer": "yes", "images": ["ok.png"]},
    ]
    bad = [
        {"id": "b1", "question": "No answer here?", "options": ["a", "b"], "answer": ""},
        {"id": "b2", "question": "Out of range?", "options": ["a", "b"], "answer": "D"},
        {"id": "g1", "question": "Duplicate id?", "options": ["a", "b"], "answer": "A"},
        {"id": "b4", "question": "Missing image?", "options": ["a", "b"], "answer": "A",
         "images": ["missing.png"]},
        {"id": "b5", "question": "Broken image?", "options": ["a", "b"], "answer": "A",
         "images": ["broken.png"]},
        {"id": "b6", "question": "   ", "options": ["a", "b"], "answer": "A"},
    ]
    lines = [json.dumps(r) for r in good[:2] + bad[:3]] + ["{not json"] + \
            [json.dumps(r) for r in bad[3:] + good[2:]]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    p = _recipe(tmp_path, [{"name": "mix", "adapter": "generic", "path": "data.jsonl"}])
    r = medrecipe("ingest", p)
    assert r.returncode == 0, r.stderr
    assert "3 items, 7 quarantined" in r.stdout

    import pyarrow.parquet as pq

    items = pq.read_table(tmp_path / "run" / "ingest" / "mix.parquet")
    assert sorted(items.column("id").to_pylist()) == ["mix/g1", "mix/g2", "mix/g3"]
    assert dict(zip(items.column("id").to_pylist(), items.column("task").to_pylist(), strict=True)) == {
        "mix/g1": "text", "mix/g2": "mm_reasoning", "mix/g3": "open_vqa"}
    q = pq.read_table(tmp_path / "run" / "quarantine" / "ingest.mix.parquet").to_pylist()
    reasons = {row["reason"] for row in q}
    assert reasons == {"missing_answer", "answer_not_in_options", "duplicate_id", "image_missing",
                       "image_undecodable", "empty_question", "malformed_json"}
    assert len(q) == 7

    r2 = medrecipe("ingest", p)  # nothing changed: the stage is skipped
    assert r2.returncode == 0 and "up to date" in r2.stdout

    r3 = medrecipe("inspect", tmp_path / "run")
    assert r3.returncode == 0, r3.stderr
    assert "duplicate_id" in r3.stdout and "mm_reasoning" in r3.stdout


def test_inspect_on_a_non_run_is_a_user_error(tmp_path):
    r = medrecipe("inspect", tmp_path)
    assert r.returncode == 2 and "not a medrecipe run directory" in r.stderr


def test_run_fails_before_any_work_when_a_key_variable_or_template_is_missing(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "1", "question": "Q?", "options": ["x", "y"],
                                                  "answer": "A"}) + "\n")
    p = _recipe(tmp_path, [{"name": "a", "adapter": "generic", "path": "a.jsonl"}],
                teachers={"t": {"model": "m", "base_url": "https://api.example.invalid/v1",
                                "api_key_env": "MEDRECIPE_TEST_UNSET_KEY",
                                "template": "missing_template.j2"}})
    for cmd in ("validate", "run"):
        r = medrecipe(cmd, p)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "teachers.t.api_key_env" in r.stderr and "MEDRECIPE_TEST_UNSET_KEY" in r.stderr
        assert "teachers.t.template" in r.stderr
    assert not (tmp_path / "run" / "ingest").exists()  # nothing was ingested


def test_a_usage_error_prints_usage_not_a_traceback(tmp_path):
    r = medrecipe("validate", "a.yaml", "extra", "args")
    assert r.returncode == 2 and "Usage:" in r.stderr and "Traceback" not in r.stderr
