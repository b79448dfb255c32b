"""`medrecipe curate curate_demo.yaml` runs the packaged curation demo offline, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

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
    # part 2: traces (item ids)
    "d02/spatial_location": "refine:missing_section", "d08/diagnosis": "refine:wrong_option",
    "d04/diagnosis": "verify:source_consistency", "d10/diagnosis": "verify:answer_justification",
    "d05/surgical_management": "verify:reasoning_utility",
    "d07/next_step_management": "verify_unparsed",
}


def medrecipe(*args, cwd):
    return subprocess.run([sys.executable, "-m", "medrecipe.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=ENV)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The packaged curation demo, run once by name in a fresh folder."""
    tmp_path = tmp_path_factory.mktemp("curate_demo")
    r = medrecipe("curate", "curate_demo.yaml", cwd=tmp_path)
    return tmp_path, r


def test_curate_demo_runs_offline_and_accounts_for_every_record(demo):
    tmp_path, r = demo
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
    before = json.loads((run / "manifest.json").read_text())["stages"]
    r2 = medrecipe("curate", "curate_demo.yaml", *quiet, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert ": done" not in r2.stdout and r2.stdout.count("up to date") >= 17
    after = json.loads((run / "manifest.json").read_text())["stages"]
    assert {k: v["finished_at"] for k, v in after.items()} == \
        {k: v["finished_at"] for k, v in before.items()}
    r3 = medrecipe("curate", "curate_demo.yaml", "--force", "all", *quiet, cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    sent = {k: v["extra"].get("requests_sent") for k, v in stages.items()
            if "requests_sent" in v["extra"]}
    assert set(sent) == {"curate.context", "curate.tasks", "curate.questions", "curate.probe",
                         "curate.draft", "curate.refine", "curate.verify"}
    assert set(sent.values()) == {0}

    inspect = medrecipe("inspect", run, cwd=tmp_path)
    assert inspect.returncode == 0 and "curation funnel" in inspect.stdout
    assert "text_solvable: 3" in inspect.stdout
    html = (run / "report" / "report.html").read_text()
    assert 'id="curation"' in html and "Dropped records and questions" in html
    assert html.count('class="example ok"') == 6  # kept question cards (report.examples)
    assert 'id="traces"' in html and html.count('class="example ok trace"') >= 1
    assert "Draft" in html and "source_consistency" in html


def test_packaged_curation_recipes_validate():
    from medrecipe.cli import packaged_recipe
    from medrecipe.curate.config import load_curate_recipe

    recipe, _ = load_curate_recipe(packaged_recipe("openmedreason"))
    assert recipe.sources[0].adapter == "open_pmc" and recipe.probe.teacher == "prober"
    assert recipe.context.teacher == recipe.tasks.teacher == recipe.questions.teacher == "judge"
    assert recipe.traces and recipe.split.benchmark == 1500
    assert recipe.draft.teacher == "drafter" and recipe.verify.teacher == "verifier"
    assert (recipe.grpo.curated or 0) + sum(recipe.grpo.sources.values()) == 5120
    from medrecipe.curate.compose import auxiliary_recipe, check_auxiliary

    check_auxiliary(recipe)  # the auxiliary OctoMed recipe loads and has the benchmark source
    _, aux = auxiliary_recipe(recipe.mix.auxiliary[0])
    assert set(recipe.grpo.sources) <= {s.name for s in aux.sources_by_role("train")}
    demo, _ = load_curate_recipe(packaged_recipe("curate_demo"))
    assert Path(demo.sources[0].path).is_file()
    assert Path(demo.teachers["curator"].replay_path).is_file()
    assert Path(demo.teachers["verifier"].replay_path).is_file()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_curate_demo_exports_sft_data_and_a_grpo_set_without_the_benchmark(demo):
    from medrecipe.export import validate_llamafactory

    tmp_path, r = demo
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "curate_demo"
    items = {i["id"]: i for i in pq.read_table(run / "items.parquet").to_pylist()}
    traced = pq.read_table(run / "curate" / "traced_items.parquet").to_pylist()
    assert len(traced) == 12
    for t in traced:
        meta = json.loads(t["meta"])
        assert set(meta["reference_trace"]) == {"perception", "interpretation", "justification"}
        assert all(v["verdict"] == "pass" for v in meta["trace"]["verdicts"].values())

    # No article in two splits; the two figures of article PMC9000105 stay together.
    splits = pq.read_table(run / "curate" / "splits.parquet").to_pylist()
    articles = [s["article_id"] for s in splits]
    assert len(articles) == len(set(articles))
    by_item = {i: s["split"] for s in splits for i in s["item_ids"]}
    article_of = {i: json.loads(items[i]["meta"])["article_id"] for i in by_item}
    seen: dict[str, set[str]] = {}
    for i, split in by_item.items():
        seen.setdefault(article_of[i], set()).add(split)
    assert all(len(v) == 1 for v in seen.values())
    pair = next(s for s in splits if s["article_id"] == "PMC9000105")
    assert pair["record_ids"] == ["demo_figures/d05", "demo_figures/d11"]
    counts = {k: sum(s["items"] for s in splits if s["split"] == k) for k in
              ("train", "grpo", "benchmark")}
    assert counts == {"train": 7, "grpo": 2, "benchmark": 3}

    # The benchmark is an items file a recipe can read; none of it reaches a training export.
    bench = _lines(run / "benchmark" / "curated_bench.jsonl")
    bench_ids = {b["id"] for b in bench}
    assert bench_ids == {i for i, s in by_item.items() if s == "benchmark"}
    bench_questions = {b["question"] for b in bench}
    sft = _lines(run / "export" / "jsonl" / "curate_demo_train.jsonl")
    grpo = _lines(run / "grpo" / "jsonl" / "curate_demo_grpo_train.jsonl")
    lf = json.loads((run / "export" / "llamafactory" / "curate_demo_train.json").read_text())
    for rows in (sft, grpo):
        assert not bench_ids & {x["item_id"] for x in rows}
        assert not bench_questions & {x["question"] for x in rows}
    assert not any(q in m["content"] for x in lf for m in x["messages"] for q in bench_questions)
    assert validate_llamafactory(run / "export" / "llamafactory") == []

    # The SFT mix: the curated train split with its traces plus auxiliary distilled traces.
    curated = [x for x in sft if x["source"] == "demo_figures"]
    assert {x["item_id"] for x in curated} == {i for i, s in by_item.items() if s == "train"}
    target = curated[0]["messages"][-1]["content"]
    assert target.startswith("<think>\nPerception: ") and "Answer justification: " in target
    assert "</think>\n\n\\boxed{" in target
    aux = [x for x in sft if x["source"] != "demo_figures"]
    assert {x["source"] for x in aux} == {"demo_image_mcq", "demo_classification",
                                          "demo_open_vqa"}
    assert len({x["item_id"] for x in aux if x["source"] == "demo_image_mcq"}) == 6  # quota
    assert len({x["item_id"] for x in aux if x["task"] == "open_vqa"}) == 1  # family quota

    # The auxiliary run's prepare stage removed what overlaps the curated benchmark.
    aux_run = run / "auxiliary" / "curate_aux_demo"
    removed = {r["item_id"]: r["reason"]
               for r in pq.read_table(aux_run / "quarantine" / "prepare.parquet").to_pylist()}
    assert removed == {"demo_overlap/v01": "image_in_benchmark",
                       "demo_overlap/v02": "contaminated:curated_bench"}

    # The GRPO set: the grpo hold-out plus two named auxiliary sources, per-source counts;
    # auxiliary questions already in the SFT mix are not reused.
    assert len(grpo) == 6
    by_source = {}
    for x in grpo:
        by_source[x["source"]] = by_source.get(x["source"], 0) + 1
    assert by_source == {"demo_figures": 2, "demo_image_mcq": 2, "demo_classification": 2}
    assert {x["item_id"] for x in grpo if x["source"] == "demo_figures"} == \
        {i for i, s in by_item.items() if s == "grpo"}
    assert not {x["item_id"] for x in grpo} & {x["item_id"] for x in sft}
    grpo_dir = run / "grpo" / "jsonl"  # JSONL image paths are relative to the file's folder
    assert all(x["answer"] and x["images"] and (grpo_dir / x["images"][0]).is_file() for x in grpo)
    assert "<answer></answer>" in grpo[0]["messages"][0]["content"]  # the GRPO instruction
