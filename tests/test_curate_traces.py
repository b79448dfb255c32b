"""Curation part 2 against the local chat server: draft, refine, verify, splits, exports.

Crafted replies per record: a refined trace missing a section, one whose justification
names another option, verdicts failing each criterion, a verdict that never parses and one
that parses on the re-ask. Only traces that pass every step reach the exports.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from chat_helpers import prompt_text
from curate_images import clean_set
from medrecipe.curate.config import curate_recipe_from_data
from medrecipe.curate.stage import open_curate_context, run_curation
from medrecipe.curate.traces import VERIFY_CRITERIA
from medrecipe.testing.chat_server import ChatServer

# One record per behaviour; the case is found in a prompt by its caption.
CASES = {
    "good": "Axial CT of the chest showing a spiculated mass in the right upper lobe of a smoker.",
    "no_section": "Axial CT of the chest showing a cavitating mass in the left upper lobe.",
    "wrong_option": "Axial CT of the chest showing a lobulated mass in the right lower lobe.",
    "inconsistent": "Axial CT of the chest showing an irregular mass in the left lower lobe.",
    "unjustified": "Axial CT of the chest showing a solid mass abutting the right hilum.",
    "not_useful": "Axial CT of the chest showing a necrotic mass invading the left hilum.",
    "never_parses": "Axial CT of the chest showing a large mass encasing the right bronchus.",
    "reask": "Axial CT of the chest showing a mass with pleural tags in the right apex.",
    "no_context": "Axial CT.",
}
OPTIONS = ["Lung carcinoma", "Pulmonary hamartoma", "Round pneumonia", "Tuberculoma"]
GOOD = {"perception": "Axial chest CT with a spiculated mass in one lung lobe.",
        "interpretation": "Spiculated margins on CT point to an invasive tumour, and the "
                          "caption reports a smoker.",
        "justification": "A spiculated lung mass in a smoker is best explained by lung "
                         "carcinoma."}


_text = prompt_text


def _case(text: str) -> str:
    hits = [k for k, v in CASES.items() if v in text]
    return max(hits, key=lambda k: len(CASES[k])) if hits else ""


def _trace(**over) -> str:
    s = {**GOOD, **over}
    return "".join(f"<{k}>{v}</{k}>" for k, v in s.items() if v is not None)


def _verdict(**fail) -> str:
    return json.dumps({c: {"verdict": "fail" if c in fail else "pass",
                           "reason": fail.get(c, "Supported by the figure and its texts.")}
                       for c in VERIFY_CRITERIA})


def responder(body, index):
    text, seed = _text(body), body.get("seed")
    case = _case(text)
    if "Task categories" in text:
        return ('<categories><category id="diagnosis"><answer>a lung tumour</answer>'
                "<evidence>a mass in the lobe</evidence></category></categories>")
    if "Write one question" in text:
        return json.dumps({"stem": f"A 60-year-old has this scan ({case}). What is the most "
                                   "likely diagnosis?", "options": OPTIONS, "correct": "A",
                           "answer_format": "mcq", "rationale": "The record says so.",
                           "image_scope": "whole image", "stem_style": "long",
                           "key_finding": "spiculation"})
    if "Explain why this answer is correct" in text:
        return ("The image shows a mass in the lung on CT. The caption describes it, and the "
                "text links it to the diagnosis, so the correct answer is lung carcinoma, which "
                "fits the findings and the history given in the article.")
    if "Rewrite the draft into exactly three sections" in text:
        if case == "no_section":
            return _trace(interpretation=None)  # every sample lacks a section
        if case == "wrong_option":
            return _trace(justification="The lobulated mass fits lung carcinoma rather than a "
                                        "pulmonary hamartoma, which would be calcified.")
        return _trace()
    if "Check the trace against each criterion" in text:
        if case == "inconsistent":
            return _verdict(source_consistency="It calls the mass spiculated; the caption "
                                               "says irregular.")
        if case == "unjustified":
            return _verdict(answer_justification="The conclusion is stated without inference.")
        if case == "not_useful":
            return _verdict(reasoning_utility="Half of it is generic background on smoking.",
                            answer_justification="It would fit tuberculoma just as well.")
        if case == "never_parses":
            return "The trace looks good to me overall."
        if case == "reask" and seed == 0:
            return '{"source_consistency": {"verdict": "pass"'  # cut off; the re-ask parses
        return _verdict()
    return "unexpected prompt"


def _recipe(tmp_path, base_url, **over):
    if not (tmp_path / "figs.jsonl").exists():
        rows = []
        for (_, data), (case, caption) in zip(clean_set(len(CASES), seed=11), CASES.items(),
                                              strict=True):
            (tmp_path / f"{case}.jpg").write_bytes(data)
            refs = [] if case == "no_context" else [f"The mass ({case}) was biopsied."]
            rows.append({"id": case, "image": f"{case}.jpg", "caption": caption,
                         "references": refs, "article_id": f"PMC-{case}"})
        (tmp_path / "figs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"kind": "curate", "name": "t", "run_dir": str(tmp_path / "run"),
            "sources": [{"name": "s", "path": str(tmp_path / "figs.jsonl")}],
            "teachers": {"m": {"model": "m", "base_url": base_url, "max_retries": 0,
                               "backoff_base_s": 0.01}},
            "context": {"enabled": False}, "probe": {"enabled": False},
            "checks": {"leakage": False},
            "draft": {}, "refine": {}, "verify": {"structured_output": True},
            "split": {"benchmark": 1, "grpo": 0},
            "export": {"formats": ["jsonl"], "dataset_name": "t"},
            "report": {"enabled": False}}
    data.update(over)
    return curate_recipe_from_data(data), data


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("traces")
    with ChatServer(responder=responder) as srv:
        recipe, data = _recipe(tmp, srv.base_url)
        ctx = open_curate_context(recipe, data, progress=False, echo=False)
        outcome = run_curation(ctx)
        bodies = srv.bodies()
        rerun_ctx = open_curate_context(recipe, data, progress=False, echo=False)
        run_curation(rerun_ctx)
        rerun_requests = srv.count - len(bodies)
    return {"ctx": ctx, "outcome": outcome, "bodies": bodies, "rerun_requests": rerun_requests,
            "tmp": tmp}


def _reasons(run_dir, stage):
    path = run_dir / "quarantine" / f"curate.{stage}.parquet"
    return {r["item_id"].split("/")[1]: r["reason"] for r in pq.read_table(path).to_pylist()}


def _exported(run_dir) -> list[dict]:
    rows = []
    for f in (run_dir / "export" / "jsonl").glob("*.jsonl"):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def test_every_failed_trace_is_dropped_with_its_reason(traced):
    root = traced["ctx"].run.root
    assert traced["outcome"].items == len(CASES)  # part 1 kept every record
    assert _reasons(root, "draft") == {"no_context": "no_source_context"}
    assert _reasons(root, "refine") == {"no_section": "refine:missing_section",
                                        "wrong_option": "refine:wrong_option"}
    assert _reasons(root, "verify") == {"inconsistent": "verify:source_consistency",
                                        "unjustified": "verify:answer_justification",
                                        "not_useful": "verify:answer_justification",
                                        "never_parses": "verify_unparsed"}
    traced_ids = {r["id"].split("/")[1] for r in
                  pq.read_table(root / "curate" / "traced_items.parquet").to_pylist()}
    assert traced_ids == {"good", "reask"}
    q = {r["item_id"].split("/")[1]: r for r in
         pq.read_table(root / "quarantine" / "curate.refine.parquet").to_pylist()}
    assert "option B (Pulmonary hamartoma)" in q["wrong_option"]["detail"]
    assert "interpretation section is missing" in q["no_section"]["detail"]


def test_verdicts_are_stored_and_counted_per_criterion(traced):
    root = traced["ctx"].run.root
    rows = {r["item_id"].split("/")[1]: r for r in
            pq.read_table(root / "curate" / "verified.parquet").to_pylist()}
    not_useful = json.loads(rows["not_useful"]["verdicts"])
    assert rows["not_useful"]["failed"] == ["answer_justification", "reasoning_utility"]
    assert not_useful["reasoning_utility"]["reason"].startswith("Half of it")
    assert rows["good"]["kept"] and json.loads(rows["good"]["verdicts"])[
        "source_consistency"]["verdict"] == "pass"
    f = traced["ctx"].run.manifest["stages"]["curate.verify"]["extra"]
    assert f["failed_by_criterion"] == {"source_consistency": 1, "answer_justification": 2,
                                        "reasoning_utility": 1}
    funnel = f["funnel"]
    assert funnel["in"] == funnel["out"] + sum(funnel["removed"].values()) + funnel["pending"]


def test_an_unparseable_verdict_is_reasked_then_failed_never_passed(traced):
    bodies = [b for b in traced["bodies"] if "Check the trace against" in _text(b)]
    asked = sorted(b["seed"] for b in bodies if _case(_text(b)) == "never_parses")
    assert asked == [0, 1, 2]  # parse_retries: 2 -> three samples, then counted
    assert sorted(b["seed"] for b in bodies if _case(_text(b)) == "reask") == [0, 1]
    assert all(b["response_format"]["json_schema"]["name"] == "trace_verdict" for b in bodies)
    # The refine step re-asked the trace without a section too, and never kept it.
    refine = [b for b in traced["bodies"] if "Rewrite the draft" in _text(b)
              and _case(_text(b)) == "no_section"]
    assert len(refine) == 3
    rows = {r["item_id"].split("/")[1]: r for r in pq.read_table(
        traced["ctx"].run.root / "curate" / "verified.parquet").to_pylist()}
    assert rows["never_parses"]["kept"] is False and rows["never_parses"]["attempts"] == 3
    assert rows["reask"]["kept"] is True


def test_only_passing_traces_are_exported_and_the_benchmark_never(traced):
    root = traced["ctx"].run.root
    exported = _exported(root)
    splits = {r["article_id"]: r["split"] for r in
              pq.read_table(root / "curate" / "splits.parquet").to_pylist()}
    assert sorted(splits.values()) == ["benchmark", "train"]
    train_case = next(a for a, s in splits.items() if s == "train").removeprefix("PMC-")
    bench_case = next(a for a, s in splits.items() if s == "benchmark").removeprefix("PMC-")
    assert [r["item_id"] for r in exported] == [f"s/{train_case}/diagnosis"]
    target = exported[0]["messages"][-1]["content"]
    assert target.startswith("<think>\nPerception: Axial chest CT")
    assert target.endswith("</think>\n\n\\boxed{A: Lung carcinoma}")
    bench = [json.loads(line) for line in
             (root / "benchmark" / "curated_bench.jsonl").read_text().splitlines()]
    assert [b["id"] for b in bench] == [f"s/{bench_case}/diagnosis"]
    assert set(bench[0]["meta"]["reference_trace"]) == {"perception", "interpretation",
                                                        "justification"}
    assert (root / "benchmark" / bench[0]["images"][0]).is_file()
    # A re-run asks nothing new.
    assert traced["rerun_requests"] == 0


def test_verification_switched_off_keeps_refined_traces_unverified(tmp_path):
    with ChatServer(responder=responder) as srv:
        recipe, data = _recipe(tmp_path, srv.base_url, verify={"enabled": False},
                               split={"benchmark": 0, "grpo": 0})
        run_curation(open_curate_context(recipe, data, progress=False, echo=False))
        assert not any("Check the trace against" in _text(b) for b in srv.bodies())
    rows = pq.read_table(tmp_path / "run" / "curate" / "verified.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"not_verified"} and len(rows) == 6
    # Code checks still apply: the missing section and the wrong option never get exported.
    exported = {r["item_id"].split("/")[1] for r in _exported(tmp_path / "run")}
    assert exported == {"good", "inconsistent", "unjustified", "not_useful", "never_parses",
                        "reask"}


def test_an_existing_octomed_run_feeds_the_mix_and_the_grpo_set(tmp_path):
    from medrecipe import pipeline
    from medrecipe.cli import packaged_recipe
    from medrecipe.config import load_recipe

    with ChatServer(responder=responder) as srv:
        recipe, data = _recipe(tmp_path, srv.base_url, split={"benchmark": 1, "grpo": 1})
        run_curation(open_curate_context(recipe, data, progress=False, echo=False))
        bench = tmp_path / "run" / "benchmark" / "curated_bench.jsonl"
        aux, _ = load_recipe(packaged_recipe("curate_aux_demo"), [
            f"run_dir={tmp_path / 'aux'}", f"sources.4.path={bench}"])
        aux.sources = [s for s in aux.sources if s.name != "demo_overlap"]  # the demo's own
        assert pipeline.run_recipe(pipeline.open_context(aux, echo=False)).complete
        data.update(mix={"auxiliary": [{"run": str(tmp_path / "aux")}],
                         "quotas": {"demo_image_mcq": 3}, "family_quotas": {"open_vqa": 0}},
                    grpo={"sources": {"demo_classification": 2}})
        recipe = curate_recipe_from_data(data)
        outcome = run_curation(open_curate_context(recipe, data, progress=False, echo=False))
    sft = _exported(tmp_path / "run")
    per_source = {}
    for r in sft:
        per_source.setdefault(r["source"], set()).add(r["item_id"])
    assert len(per_source["demo_image_mcq"]) == 3 and "demo_open_vqa" not in per_source
    assert "s" not in per_source  # the two traces went to the benchmark and the GRPO hold-out
    grpo = [json.loads(x) for x in open(outcome.grpo["jsonl_train"]).read().splitlines()]
    assert sorted(r["source"] for r in grpo) == ["demo_classification", "demo_classification",
                                                 "s"]
    assert not {r["item_id"] for r in grpo} & {r["item_id"] for r in sft}


@pytest.mark.parametrize("over, where, message", [
    ({"verify": None}, "", "traces need draft, refine and verify"),
    ({"split": {"benchmark": 1.5}}, "split.benchmark", "a share must lie in [0, 1)"),
    ({"mix": {"auxiliary": [{"recipe": "a.yaml", "run": "runs/a"}]}}, "mix.auxiliary.0",
     "not both"),
    ({"grpo": {"sources": {"pmc_vqa": 10}}}, "", "lists no auxiliary run"),
])
def test_recipe_mistakes_fail_with_their_yaml_path(tmp_path, over, where, message):
    from medrecipe.errors import RecipeError

    _, data = _recipe(tmp_path, "http://127.0.0.1:9/v1")
    data.update(over)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(RecipeError) as e:
        curate_recipe_from_data(data)
    loc, msg = e.value.problems[0]
    assert loc.startswith(where) and message in msg
