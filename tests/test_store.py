"""Run directory: atomic Parquet outputs, manifest, stage skipping, quarantine."""

from __future__ import annotations

import pyarrow as pa
import pytest

from medrecipe.schema import ITEM_SCHEMA, Item, QuarantineRow, to_table
from medrecipe.store import Run, StageResult, run_stage


def _items(n: int) -> pa.Table:
    return to_table([Item(id=f"s/{i}", source="s", task="text", question=f"q{i}?",
                          options=["x", "y"], answer="A") for i in range(n)], ITEM_SCHEMA)


def test_writer_is_atomic_on_failure(tmp_path):
    run = Run(tmp_path / "run")
    run.write_table("items", _items(3))
    with pytest.raises(RuntimeError), run.writer("items", ITEM_SCHEMA) as w:
        w.write(_items(5))
        raise RuntimeError("crash in the middle")
    # The old complete file is untouched and no temporary file is left behind.
    assert run.read_table("items").num_rows == 3
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


def test_stage_skipped_when_inputs_and_config_unchanged(tmp_path):
    run = Run(tmp_path / "run")
    calls = []

    def body() -> StageResult:
        calls.append(1)
        run.write_table("items", _items(2))
        return StageResult(rows={"items": 2})

    assert run_stage(run, "s", "cfg1", {"in": "x"}, ["items"], body)[0]
    assert not run_stage(run, "s", "cfg1", {"in": "x"}, ["items"], body)[0]
    # Reopening the run directory sees the same manifest.
    assert not run_stage(Run(tmp_path / "run"), "s", "cfg1", {"in": "x"}, ["items"], body)[0]
    assert run_stage(run, "s", "cfg2", {"in": "x"}, ["items"], body)[0]  # config changed
    assert run_stage(run, "s", "cfg2", {"in": "y"}, ["items"], body)[0]  # input changed
    run.path("items").unlink()
    assert run_stage(run, "s", "cfg2", {"in": "y"}, ["items"], body)[0]  # output missing
    assert len(calls) == 4
    rec = run.stage("s")
    assert rec.rows == {"items": 2} and rec.seconds >= 0


def test_incomplete_stage_is_rerun(tmp_path):
    run = Run(tmp_path / "run")
    results = [StageResult(complete=False), StageResult()]
    calls = []

    def body():
        calls.append(1)
        run.write_table("g", _items(1))
        return results[len(calls) - 1]

    run_stage(run, "gen", "c", {}, ["g"], body)
    run_stage(run, "gen", "c", {}, ["g"], body)
    assert len(calls) == 2 and run.stage("gen").complete


def test_quarantine_is_per_stage_and_combined(tmp_path):
    run = Run(tmp_path / "run")
    run.write_quarantine("ingest.a", [QuarantineRow(stage="ingest", source="a", reason="missing_answer")])
    run.write_quarantine("prepare", [QuarantineRow(stage="prepare", source="a", reason="x"),
                                     QuarantineRow(stage="prepare", source="b", reason="y")])
    assert run.read_quarantine().num_rows == 3
    run.write_quarantine("prepare", [])  # a re-run replaces only its own rows
    assert run.read_quarantine().column("reason").to_pylist() == ["missing_answer"]
