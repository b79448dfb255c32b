"""Sharded stage outputs: the same results as one shard, resume per shard, caches that
survive a new shard count, and the Ray executor giving the local executor's outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from medrecipe import pipeline
from medrecipe.config import load_recipe
from medrecipe.shards import shard_of
from medrecipe.testing.chat_server import ChatServer


def _responder(body, index):
    text = json.dumps(body["messages"])
    n = int(text.split("number ")[1].split(" ")[0]) if "number " in text else 0
    letter = "A" if (index + n) % 3 else "B"
    return f"<think>Reasoning {n}/{index} in some words.</think><answer>{letter}</answer>"


def _recipe(tmp_path: Path, base_url: str, *, shards: int, run: str, n_items: int = 30,
            **extra) -> Path:
    data_file = tmp_path / "train.jsonl"
    if not data_file.exists():
        rows = []
        for i in range(n_items):
            rows.append({"id": f"q{i}", "question": f"Question number {i} about the liver?",
                         "options": ["right", "wrong", "other"], "answer": "A"})
        data_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        other = [{"id": f"o{i}", "question": f"Other number {i} about the heart?",
                  "options": ["right", "wrong"], "answer": "A"} for i in range(12)]
        (tmp_path / "other.jsonl").write_text("\n".join(json.dumps(r) for r in other) + "\n")
    data = {"name": "sharded", "run_dir": str(tmp_path / run), "shards": shards,
            "sources": [{"name": "train", "path": str(data_file)},
                        {"name": "other", "path": str(tmp_path / "other.jsonl")}],
            "teachers": {"t": {"model": "m", "base_url": base_url, "max_in_flight": 4,
                               "template": "reasoning_minimal",
                               "sampling": {"max_tokens": 64, "seed": 1}}},
            "generate": {"n": 4, "routes": {"*": "t"},
                         "cache_dir": str(tmp_path / extra.pop("cache", "cache"))},
            "select": {"cap_per_question": 2, "val_fraction": 0.2,
                       "mix": {"weights": {"train": 2, "other": 1}}},
            "export": {"dataset_name": "sh"}, "report": {"enabled": False}, **extra}
    p = tmp_path / f"{run}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _run(path: Path):
    recipe, raw = load_recipe(path)
    ctx = pipeline.open_context(recipe, raw, progress=False, echo=False)
    return ctx.run, pipeline.run_recipe(ctx)


def _rows(run, name):
    return sorted((r["id"], r["target"], r["split"]) for r in run.read_table(name).to_pylist())


def test_sharded_outputs_equal_the_one_shard_run(tmp_path):
    with ChatServer(responder=_responder) as srv:
        one, _ = _run(_recipe(tmp_path, srv.base_url, shards=1, run="one", cache="c1"))
        many, _ = _run(_recipe(tmp_path, srv.base_url, shards=4, run="many", cache="c4"))
    assert len(list(many.path("generations").glob("shard-*-of-00004.parquet"))) == 4
    for name in ("selected_train", "selected_val"):
        assert _rows(many, name) == _rows(one, name) and _rows(one, name)
    s1, s4 = one.stage("select").extra["stats"], many.stage("select").extra["stats"]
    for key in ("totals", "by_source", "by_teacher", "questions", "questions_by_source",
                "mix_quotas"):
        assert s4[key] == s1[key], key
    assert s1["totals"]["filtered_mix"] > 0  # the mix quotas really cut something
    # Every sample, verdict and trace of a question is in the question's shard.
    for name in ("items", "generations", "verdicts", "selected_train"):
        for f in sorted(many.path(name).glob("shard-*.parquet")):
            shard = int(f.name.split("-")[1])
            key = "id" if name == "items" else "item_id"
            assert {shard_of(x, 4) for x in pq.read_table(f).column(key).to_pylist()} <= {shard}
    lf1 = json.loads((one.root / "export/llamafactory/sh_train.json").read_text())
    lf4 = json.loads((many.root / "export/llamafactory/sh_train.json").read_text())
    assert sorted(json.dumps(r["messages"]) for r in lf1) == sorted(
        json.dumps(r["messages"]) for r in lf4)


def test_a_new_shard_count_reuses_every_cached_answer(tmp_path):
    with ChatServer(responder=_responder) as srv:
        _run(_recipe(tmp_path, srv.base_url, shards=1, run="a"))
        paid = srv.count
        run, out = _run(_recipe(tmp_path, srv.base_url, shards=3, run="b"))
        assert srv.count == paid  # answers stored under 1 shard serve the 3-shard layout
        assert run.stage("generate").extra["cached"] == 42 * 4 and out.complete
        _run(_recipe(tmp_path, srv.base_url, shards=5, run="c"))
        assert srv.count == paid


def test_a_killed_stage_resumes_from_its_last_complete_shard(tmp_path, monkeypatch):
    import medrecipe.sharded as sharded

    real = sharded.generate_shard
    calls: list[int] = []

    def dies_on_the_third(job):
        calls.append(job.shard)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    with ChatServer(responder=_responder) as srv:
        path = _recipe(tmp_path, srv.base_url, shards=4, run="r")
        monkeypatch.setattr(sharded, "generate_shard", dies_on_the_third)
        with pytest.raises(KeyboardInterrupt):
            _run(path)
        monkeypatch.setattr(sharded, "generate_shard", real)
        before = srv.count
        run, out = _run(path)
        rec = run.stage("generate")
    assert out.complete and rec.extra["resumed_shards"] == 2
    assert rec.extra["cached"] == 0  # the two finished shards were not even reopened
    ids = [f"train/q{i}" for i in range(30)] + [f"other/o{i}" for i in range(12)]
    # Only the items of the two unfinished shards were asked for (one request each, n=4),
    # and over both runs every item was asked for exactly once.
    assert srv.count - before == sum(1 for x in ids if shard_of(x, 4) in (2, 3))
    assert srv.count == len(ids)
    gens = run.read_table("generations").to_pylist()
    assert Counter((g["item_id"], g["sample_index"]) for g in gens).most_common(1)[0][1] == 1
    assert len(gens) == 42 * 4


# --------------------------------------------------------------------------- Ray

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _demo(tmp_path, run: str, **over) -> Path:
    from medrecipe.cli import packaged_recipe

    data = yaml.safe_load(packaged_recipe("demo").read_text())
    base = packaged_recipe("demo").parent
    for s in data["sources"]:
        s["path"] = str((base / s["path"]).resolve())
    for t in data["teachers"].values():
        if t.get("replay_path"):
            t["replay_path"] = str((base / t["replay_path"]).resolve())
    data.update({"run_dir": str(tmp_path / run), "shards": 3, "image_store":
                 str(tmp_path / "images"), **over})
    p = tmp_path / f"{run}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_the_demo_under_ray_gives_the_local_executors_outputs(tmp_path, ray_cluster):
    local, lo = _run(_demo(tmp_path, "local"))
    remote, ro = _run(_demo(tmp_path, "ray", executor={"kind": "ray"}))
    assert lo.complete and ro.complete
    for name in ("generations", "verdicts", "selected_train", "selected_val"):
        for a, b in zip(sorted(local.path(name).glob("shard-*")), sorted(remote.path(name).glob(
                "shard-*")), strict=True):
            assert pq.read_table(a).equals(pq.read_table(b)), (name, a.name)
    for f in ("llamafactory/medrecipe_demo_train.json", "jsonl/medrecipe_demo_train.jsonl"):
        assert (local.root / "export" / f).read_text() == (remote.root / "export" / f).read_text()


def test_a_killed_ray_worker_is_retried_with_nothing_lost_or_doubled(tmp_path, ray_cluster):
    with ChatServer(responder=_responder, latency=0.05) as srv:
        path = _recipe(tmp_path, srv.base_url, shards=2, run="k", executor={"kind": "ray"},
                       n_items=80)
        killed: list[int] = []

        def kill_one_worker():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                if srv.count >= 10:
                    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True,
                                        text=True).stdout
                    pids = [int(line.split()[0]) for line in ps.splitlines()
                            if "ray::generate_shard" in line]
                    if pids:
                        os.kill(pids[0], signal.SIGKILL)
                        killed.append(pids[0])
                        return
                time.sleep(0.01)

        t = threading.Thread(target=kill_one_worker)
        t.start()
        run, out = _run(path)
        t.join()
        ok = [r for r in srv.received if r.answered == "ok"]
    assert killed, "no shard task was running to kill"
    assert out.complete and run.stage("generate").complete
    gens = run.read_table("generations").to_pylist()
    assert len(gens) == 92 * 4
    assert Counter((g["item_id"], g["sample_index"]) for g in gens).most_common(1)[0][1] == 1
    # Answers repaid after the kill: at most what that worker had in flight (4).
    sent = Counter((json.dumps(r.body["messages"]), r.body.get("seed")) for r in ok)
    assert sum(c - 1 for c in sent.values()) <= 4
