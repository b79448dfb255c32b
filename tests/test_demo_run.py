"""`medrecipe demo` runs the whole packaged recipe offline, as `make demo` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq


def test_demo_runs_the_whole_recipe_offline(tmp_path):
    env = {**os.environ, "MEDRECIPE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "medrecipe.cli", "demo", "--out", str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last == f"report: {out / 'report' / 'report.html'}"
    assert (out / "report" / "report.html").exists()

    manifest = json.loads((out / "manifest.json").read_text())
    assert all(manifest["stages"][s]["complete"] for s in
               ("prepare", "generate", "grade", "select", "export"))
    # Deliberate defects of the demo data are quarantined with their reasons.
    reasons = {}
    for f in (out / "quarantine").glob("*.parquet"):
        for row in pq.read_table(f).to_pylist():
            reasons[row["item_id"]] = row["reason"]
    assert reasons["demo_text/t17"] == "empty_question"
    assert reasons["demo_image_mcq/m13"] == "image_missing"
    assert reasons["demo_text/t09"].startswith("contaminated:")

    verdicts = pq.read_table(out / "verdicts.parquet").to_pylist()
    assert any(v["terminated"] is False for v in verdicts)  # unterminated responses exist
    assert any(v["correct"] is False for v in verdicts)
    assert any(v["correct"] is None and v["terminated"] for v in verdicts)  # unparsed
    sel = pq.read_table(out / "selected_train.parquet").to_pylist()
    correct = {(v["item_id"], v["key"]) for v in verdicts if v["correct"]}
    assert sel and all((s["item_id"], s["key"]) in correct for s in sel)

    # Exports load in their trainers' formats.
    from datasets import load_from_disk

    from medrecipe.export import validate_llamafactory

    assert load_from_disk(str(out / "export" / "trl"))["train"].num_rows == len(sel)
    assert validate_llamafactory(out / "export" / "llamafactory") == []

    # A second run is served entirely from what is on disk.
    r2 = subprocess.run([sys.executable, "-m", "medrecipe.cli", "demo", "--out", str(out)],
                        capture_output=True, text=True, env=env)
    assert r2.returncode == 0, r2.stderr
    assert "generate: up to date" in r2.stdout and "select: up to date" in r2.stdout
