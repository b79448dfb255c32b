"""A user's bad day: two runs at once, kills and Ctrl-C mid-stage, failed requests, a full
disk, leftovers of killed runs, an empty selection. Each case keeps money and data safe."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from medrecipe import pipeline
from medrecipe.config import load_recipe
from medrecipe.errors import UserError
from medrecipe.store import Run, StageResult, run_stage
from medrecipe.testing.chat_server import ChatServer

ENV = {"MEDRECIPE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
       "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def _responder(body, index):
    return f"<think>Reasoning, sample {index}.</think><answer>{'A' if index % 2 == 0 else 'B'}</answer>"


def _recipe(tmp_path: Path, base_url: str, n_items: int = 8, run: str = "run",
            file: str = "recipe", **over) -> Path:
    rows = [{"id": f"q{i}", "question": f"Question number {i} about the kidney?",
             "options": ["right", "wrong"], "answer": "A"} for i in range(n_items)]
    data_file = tmp_path / f"train{n_items}.jsonl"
    if not data_file.exists():  # rewriting it would change its mtime, hence every fingerprint
        data_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = {"name": "safety", "run_dir": str(tmp_path / run),
            "sources": [{"name": "train", "path": str(data_file)}],
            "teachers": {"t": {"model": "m", "base_url": base_url, "max_in_flight": 4,
                               "max_retries": 0, "template": "reasoning_minimal",
                               "sampling": {"max_tokens": 64, "seed": 1}}},
            "generate": {"n": 2, "routes": {"*": "t"}},
            "select": {"cap_per_question": 2},
            "export": {"dataset_name": "safety"},
            "report": {"enabled": False}}
    for key, value in over.items():
        node = data
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    p = tmp_path / f"{file}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "medrecipe.cli", *map(str, args)],
                          capture_output=True, text=True, env={**ENV, **(env or {})}, **kw)


def _run_in_process(path: Path):
    recipe, raw = load_recipe(path)
    ctx = pipeline.open_context(recipe, raw, progress=False, echo=False)
    return ctx.run, pipeline.run_recipe(ctx)


# --------------------------------------------------------------------------- two processes


def test_a_second_run_on_the_same_directory_is_refused_and_nothing_is_paid_twice(tmp_path):
    with ChatServer(responder=_responder, latency=0.15) as srv:
        path = _recipe(tmp_path, srv.base_url, n_items=12)
        first = subprocess.Popen([sys.executable, "-m", "medrecipe.cli", "run", str(path)],
                                 env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        deadline = time.monotonic() + 60
        while srv.count == 0 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        second = _cli("run", path)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 2
    assert f"in use by process {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    # Every (question, sample) was bought exactly once (n=2 goes in one request).
    assert srv.count == 12 and sum(b.get("n", 1) for b in srv.bodies()) == 24


def test_a_request_cache_in_use_by_another_process_is_refused_before_any_request(tmp_path):
    from medrecipe.config import SamplingConfig, TeacherConfig
    from medrecipe.generate import Engine, GenRequest

    cache = tmp_path / "shared-cache"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from medrecipe.generate.cache import RequestCache
            c = RequestCache({str(cache)!r}); print("ready", flush=True); time.sleep(60)
        """)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with ChatServer() as srv:
            cfg = TeacherConfig(model="m", base_url=srv.base_url, sampling=SamplingConfig(seed=1))
            eng = Engine({"t": cfg}, cache, progress=False)
            with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
                eng.run([GenRequest(item_id="q", teacher="t",
                                    messages=[{"role": "user", "content": "hi"}])])
            assert srv.count == 0
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- records and outputs


def test_a_stage_record_is_forgotten_before_its_outputs_change(tmp_path):
    run = Run(tmp_path / "run")
    import pyarrow as pa

    def body(value):
        def go():
            run.write_table("a", pa.table({"x": [value]}))
            if value == "new":
                raise KeyboardInterrupt  # killed between its two outputs
            run.write_table("b", pa.table({"x": [value]}))
            return StageResult()
        return go

    run_stage(run, "two", "cfg-old", {}, ["a", "b"], body("old"))
    with pytest.raises(KeyboardInterrupt):
        run_stage(run, "two", "cfg-new", {}, ["a", "b"], body("new"))
    assert run.stage("two") is None  # not "up to date" over half-new outputs
    ran, _ = run_stage(Run(tmp_path / "run"), "two", "cfg-old", {}, ["a", "b"], body("old"))
    assert ran


def test_an_interrupted_export_is_redone_not_reported_up_to_date(tmp_path, monkeypatch):
    import medrecipe.export as export_mod

    with ChatServer(responder=lambda b, i: f"<think>Sample {i}.</think><answer>A</answer>") as srv:
        path = _recipe(tmp_path, srv.base_url)
        _run_in_process(path)
        capped = _recipe(tmp_path, srv.base_url, file="capped", select__cap_per_question=1)
        real = export_mod.export_jsonl

        def dies(*a, **k):
            real(*a, **k)
            raise KeyboardInterrupt

        monkeypatch.setattr(export_mod, "export_jsonl", dies)
        with pytest.raises(KeyboardInterrupt):
            _run_in_process(capped)
        monkeypatch.setattr(export_mod, "export_jsonl", real)
        run, out = _run_in_process(path)
    selected = pq.read_table(run.path("selected_train")).num_rows
    lf = json.loads((run.root / "export/llamafactory/safety_train.json").read_text())
    jl = (run.root / "export/jsonl/safety_train.jsonl").read_text().splitlines()
    assert len(lf) == len(jl) == selected == 16  # 8 questions x 2 correct samples (cap 2)
    assert run.stage("export").finished_at > run.stage("select").finished_at - 1


# --------------------------------------------------------------------------- exit codes


def test_failed_requests_exit_3_with_the_real_reason_and_log_it(tmp_path):
    with ChatServer(responder=_responder) as srv:
        srv.inject("500", times=100, match=lambda b: "number 3 " in json.dumps(b))
        r = _cli("run", _recipe(tmp_path, srv.base_url))
    assert r.returncode == 3, r.stderr
    assert "generate: 2 request(s) failed" in r.stderr and "budget" not in r.stderr
    log = (tmp_path / "run/logs/medrecipe.log").read_text()
    assert "HTTP 500" in log and "incomplete: generate" in log


def test_an_empty_selection_is_a_normal_result(tmp_path):
    with ChatServer(responder=lambda b, i: "<answer>B</answer>") as srv:  # always wrong
        r = _cli("run", _recipe(tmp_path, srv.base_url, report__enabled=True,
                                select__target_format="direct"))
    assert r.returncode == 0, r.stderr
    assert "0 traces were selected" in r.stdout and "Traceback" not in r.stderr
    export = tmp_path / "run/export"
    assert json.loads((export / "llamafactory/safety_train.json").read_text()) == []
    assert (export / "jsonl/safety_train.jsonl").read_text() == ""
    html = (tmp_path / "run/report/report.html").read_text()
    assert "No trace was kept" in html and "has not run yet" not in html.split('id="selection"')[1]


def test_ctrl_c_during_export_keeps_the_previous_export_and_exits_130(tmp_path):
    with ChatServer(responder=_responder) as srv:
        path = _recipe(tmp_path, srv.base_url)
        assert _cli("run", path).returncode == 0
        lf = tmp_path / "run/export/llamafactory/safety_train.json"
        before = lf.read_text()
        # The user presses Ctrl-C while the TRL dataset is being written.
        script = textwrap.dedent(f"""
            import os, signal, sys, time
            # As on a terminal, whatever the test runner did with SIGINT (a background job
            # starts with it ignored, and Python then never raises KeyboardInterrupt).
            signal.signal(signal.SIGINT, signal.default_int_handler)
            import medrecipe.export as e
            real = e.export_trl
            def slow(*a, **k):
                os.kill(os.getpid(), signal.SIGINT); time.sleep(5)
                return real(*a, **k)
            e.export_trl = slow
            sys.argv = ["medrecipe", "run", {str(_recipe(tmp_path, srv.base_url, file="capped",
                                                         select__cap_per_question=1))!r}]
            from medrecipe.cli import main
            main()
        """)
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=ENV)
    assert r.returncode == 130, r.stderr
    assert "interrupted" in r.stderr and "interrupted during export" in r.stdout
    assert lf.read_text() == before  # the previous export, whole
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".export")]
    assert leftovers == []


# --------------------------------------------------------------------------- disk full


def test_a_full_disk_is_said_once_and_the_cache_stays_consistent(tmp_path):
    with ChatServer(responder=lambda b, i: "<answer>A</answer>" + " pad" * 200) as srv:
        path = _recipe(tmp_path, srv.base_url, n_items=60)
        # Files may not grow beyond 96 KB: the request cache hits it after some answers.
        script = textwrap.dedent(f"""
            import resource, signal, sys
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))
            sys.argv = ["medrecipe", "run", {str(path)!r}]
            from medrecipe.cli import main
            main()
        """)
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=ENV)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert r.stderr.count("cannot write the request cache") == 1
        db = sqlite3.connect(tmp_path / "run/cache/requests.sqlite")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        db.close()
        def samples_bought():
            return sum(b.get("n", 1) for b in srv.bodies())

        sent = samples_bought()
        # Lost at most the answers of the 4 requests in flight (2 samples each).
        assert 0 < stored < 120 and sent - stored <= 4 * 2
        again = _cli("run", path)
        assert again.returncode == 0, again.stderr
        assert samples_bought() - sent == 120 - stored  # only the missing answers were bought


# --------------------------------------------------------------------------- leftovers


def test_leftovers_of_killed_runs_are_removed_on_the_next_run(tmp_path):
    root = tmp_path / "run"
    (root / "export").mkdir(parents=True)
    junk = [root / ".items.parquet.tmp-4242", root / "ingest" / ".train.parquet.tmp-7",
            root / "export" / ".trl.tmp-99", root / "export" / ".trl.cache-99",
            root / ".export.tmp-12"]
    for p in junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.name.startswith(".trl") or p.name.startswith(".export"):
            p.mkdir()
            (p / "part").write_text("x")
        else:
            p.write_text("x")
    with ChatServer(responder=_responder) as srv:
        _run_in_process(_recipe(tmp_path, srv.base_url))
    assert [p for p in junk if p.exists()] == []
    assert not any(p.name.endswith(tuple(f"-{n}" for n in (4242, 7, 99, 12)))
                   for p in root.rglob(".*"))
