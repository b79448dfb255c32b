"""`medrecipe curate curate_demo.yaml` runs the packaged curation demo offline, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ENV = {"MEDRECIPE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
       "PATH": "/usr/bin:/bin"}

EXPECTED = {  # record or candidate -> quarantine reason (see data/demo/curate/README.md)
    "d30": "no_image", "d31": "image_missing", "d32": "no_text",
    "d23": "visual:too_small", "d24": "visual:blurry", "d25": "visual:upsampled",
    "d26": "visual:jpeg_quality", "d27": "visual:padded_border", "d28": "visual:aspect_ratio",
    "d29": "visual:blocky", "d15": "non_english", "d13": "context:clinical_relevance",
    "d14": "context:clinical_relevance", "d16": "context:textual_adequacy",
    "d17": "context:image_text_alignment", "d22": "context:reasoning_readiness",
    "d18": "judge_unparsed", "d19": "no_supported_category", "d20": "tasks_unparsed",
    "d21": "no_supported_category", "d21#annotation_marker": "no_explicit_marker",
    "d04#prognosis": "invalid", "d08#next_step_test": "questions_unparsed",
    "d05#complications": "duplicate_options", "d07#diagnosis": "single_plausible_option",
    "d09#diagnosis": "leakage_answer", "d11#spatial_location": "spatial_not_positional",
    "d12#drug_therapy": "leakage_key_finding", "d04#drug_therapy": "text_solvable",
    "d09#surgical_management": "text_solvable", "d12#diagnosis": "text_solvable",
}


def medrecipe(*args, cwd):
    return subprocess.run([sys.executable, "-m", "medrecipe.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=ENV)


def test_curate_demo_runs_offline_and_accounts_for_every_record(tmp_path):
    r = medrecipe("curate", "curate_demo.yaml", cwd=tmp_path)  # the packaged recipe, by name
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "curate_demo"
    assert "curation funnel: 32 records in, 18 items out" in r.stdout
    assert (run / "report" / "report.html").exists()

    reasons = {}
    for f in (run / "quarantine").glob("curate.*.parquet"):
        for row in pq.read_table(f).to_pylist():
            reasons[row["item_id"].removeprefix("demo_figures/")] = row["reason"]
    assert reasons == EXPECTED

    manifest = json.loads((run / "manifest.json").read_text())
    f = manifest["curate"]["funnel"]
    assert f["records_in"] == 32 and f["items_out"] == 18
    record_stages = [s for s in f["stages"] if s["unit"] == "record"]
    removed = sum(sum(s["removed"].values()) + s["pending"] for s in record_stages)
    assert removed + record_stages[-1]["out"] == 32  # every record is kept or has a reason
    candidates = [s for s in f["stages"] if s["unit"] == "candidate"]
    assert candidates[0]["in"] == sum(sum(s["removed"].values()) + s["pending"]
                                      for s in candidates) + f["items_out"]
    assert sum(f["by_family"].values()) == sum(f["by_category"].values()) == 18

    items = pq.read_table(run / "items.parquet").to_pylist()
    assert len(items) == 18 and {i["task"] for i in items} == {"mm_reasoning"}
    meta = json.loads(items[0]["meta"])
    assert {"record_id", "article_id", "category", "family", "stem_style", "answer_format",
            "source_context"} <= set(meta)

    # A re-run makes no requests: every stage is up to date; even forced, all comes from cache.
    quiet = ["-o", "report.enabled=false"]  # the report is rewritten on every run; skip it here
    r2 = medrecipe("curate", "curate_demo.yaml", *quiet, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("up to date") == 9
    r3 = medrecipe("curate", "curate_demo.yaml", "--force", "all", *quiet, cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    sent = {k: v["extra"].get("requests_sent") for k, v in stages.items()
            if "requests_sent" in v["extra"]}
    assert set(sent) == {"curate.context", "curate.tasks", "curate.questions", "curate.probe"}
    assert set(sent.values()) == {0}

    inspect = medrecipe("inspect", run, cwd=tmp_path)
    assert inspect.returncode == 0 and "curation funnel" in inspect.stdout
    assert "text_solvable: 3" in inspect.stdout
    html = (run / "report" / "report.html").read_text()
    assert 'id="curation"' in html and "Dropped records and questions" in html
    assert html.count('class="example ok"') == 6  # kept question cards (report.examples)


def test_packaged_curation_recipes_validate():
    from medrecipe.cli import packaged_recipe
    from medrecipe.curate.config import load_curate_recipe

    recipe, _ = load_curate_recipe(packaged_recipe("openmedreason"))
    assert recipe.sources[0].adapter == "open_pmc" and recipe.probe.teacher == "prober"
    assert recipe.context.teacher == recipe.tasks.teacher == recipe.questions.teacher == "judge"
    demo, _ = load_curate_recipe(packaged_recipe("curate_demo"))
    assert Path(demo.sources[0].path).is_file()
    assert Path(demo.teachers["curator"].replay_path).is_file()
