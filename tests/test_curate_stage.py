"""The curation stages against the local chat server, through the engine users run.

Malformed judge output, INVALID, leakage and text-solvable items each end in quarantine with
their reason; nothing is kept on a parse failure; failed requests and the budget leave work
waiting for the next run, which resumes from the cache.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from chat_helpers import prompt_text
from curate_images import clean_set
from medrecipe.config import load_recipe
from medrecipe.curate.config import curate_recipe_from_data, load_curate_recipe
from medrecipe.curate.context import CRITERIA
from medrecipe.curate.stage import open_curate_context, run_curation
from medrecipe.errors import RecipeError
from medrecipe.testing.chat_server import ChatServer

CAPTIONS = {
    "R1": "Axial CT of the chest showing a right upper lobe mass with spiculated margins.",
    "R2": "Axial CT of the abdomen showing a liver lesion with peripheral nodular enhancement.",
    "R3": "Frontal chest radiograph showing a large right pleural effusion with a meniscus.",
    "R4": "Liver section from a rat given a high-fat diet, showing diffuse fatty change.",
    "R5": "Radiografía de tórax que muestra un derrame pleural derecho con menisco y la "
          "consolidación del lóbulo inferior.",
}


_text = prompt_text


def _case(body) -> str:
    text = _text(body)
    return next((k for k, v in CAPTIONS.items() if v in text), "")


def _verdict(**fail) -> str:
    return json.dumps({c: {"verdict": "fail" if c in fail else "pass",
                           "reason": fail.get(c, "Clear and clinical.")} for c in CRITERIA})


def _question(stem: str, correct_text: str, key: str = "effusion") -> str:
    opts = [correct_text, "Pneumothorax", "Lobar collapse", "Mesothelioma"]
    return json.dumps({"stem": stem, "options": opts, "correct": "A", "answer_format": "mcq",
                       "rationale": "The caption states it.", "image_scope": "whole image",
                       "stem_style": "short", "key_finding": key})


def responder(body, index):
    text, case, seed = _text(body), _case(body), body.get("seed")
    if "Judge the record on each criterion" in text:
        if case == "R1":
            return "This record looks fine to me."  # never valid
        if case == "R2" and seed == 0:
            return '{"textual_adequacy": {"verdict": "pass"'  # cut off; the re-ask parses
        if case == "R4":
            return _verdict(clinical_relevance="An animal model, not a patient.")
        return _verdict()
    if "Task categories" in text:
        if case == "R2":
            return ('<categories><category id="diagnosis"><answer>haemangioma</answer>'
                    "<evidence>peripheral nodular enhancement</evidence></category></categories>")
        return ('<categories><category id="findings"><answer>pleural effusion</answer>'
                "<evidence>large right pleural effusion</evidence></category>"
                '<category id="anatomy"><answer>right hemithorax</answer><evidence>right '
                "pleural effusion</evidence></category>"
                '<category id="counting"><answer>one</answer><evidence>a large right pleural '
                "effusion</evidence></category></categories>")
    if "Write one question" in text:
        if case == "R2":
            return "INVALID: the record does not support a question of this kind."
        if "findings / description" in text:  # leaks its answer
            return _question("This radiograph shows a pleural effusion. What is the main "
                             "finding?", "Pleural effusion")
        if "anatomy / localization" in text:
            return _question("Which structure holds the abnormality on this image?",
                             "Right pleural space", key="fluid")
        return _question("What is the main abnormality here, counted once?", "One collection",
                         key="fluid")
    # The text-only probe: right every time on the anatomy item only.
    if "Right pleural space" in text:
        return "Without the image, it must be the first option. \\boxed{A}"
    return "I would guess the second option. \\boxed{B}"


def _recipe(tmp_path, base_url, **over):
    if not (tmp_path / "figs.jsonl").exists():  # written once: a re-run sees the same files
        rows = []
        for (_, data), (rid, caption) in zip(clean_set(5, seed=7), CAPTIONS.items(),
                                             strict=True):
            (tmp_path / f"{rid}.jpg").write_bytes(data)
            rows.append({"id": rid, "image": f"{rid}.jpg", "caption": caption,
                         "references": [f"The figure ({rid}) is discussed in the text."]})
        (tmp_path / "figs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"kind": "curate", "name": "t", "run_dir": str(tmp_path / "run"),
            "sources": [{"name": "s", "path": str(tmp_path / "figs.jsonl")}],
            "teachers": {"m": {"model": "m", "base_url": base_url, "max_retries": 0,
                               "backoff_base_s": 0.01}},
            "probe": {"k": 3}, "report": {"enabled": False}}
    for k, v in over.items():
        data[k] = v
    return curate_recipe_from_data(data), data


def _run(recipe, data, **kw):
    ctx = open_curate_context(recipe, data, progress=False, echo=False, **kw)
    return ctx, run_curation(ctx)


def _reasons(run_dir) -> dict[str, str]:
    out = {}
    for f in sorted((run_dir / "quarantine").glob("curate.*.parquet")):
        for r in pq.read_table(f).to_pylist():
            out[r["item_id"]] = r["reason"]
    return out


def test_each_failure_ends_in_quarantine_with_its_reason(tmp_path):
    with ChatServer(responder=responder) as srv:
        recipe, data = _recipe(tmp_path, srv.base_url)
        ctx, outcome = _run(recipe, data)
        bodies = srv.bodies()
    reasons = _reasons(ctx.run.root)
    assert reasons["s/R1"] == "judge_unparsed"
    assert reasons["s/R4"] == "context:clinical_relevance"
    assert reasons["s/R5"] == "non_english"
    assert reasons["s/R2#diagnosis"] == "invalid"
    assert reasons["s/R3#findings"] == "leakage_answer"
    assert reasons["s/R3#anatomy"] == "text_solvable"
    assert outcome.complete and outcome.items == 1
    items = pq.read_table(ctx.run.path("items")).to_pylist()
    assert [i["id"] for i in items] == ["s/R3/counting"]
    meta = json.loads(items[0]["meta"])
    assert (items[0]["task"], meta["record_id"], meta["category"], meta["family"]) == (
        "mm_reasoning", "s/R3", "counting", "perception")
    assert meta["source_context"]["caption"] == CAPTIONS["R3"] and meta["probe"]["correct"] == 0

    # An unparseable verdict is re-asked as new samples (seeds 0, 1, 2), then counted.
    r1 = [b for b in bodies if _case(b) == "R1"]
    assert sorted(b["seed"] for b in r1) == [0, 1, 2]
    context = {r["record_id"]: r for r in pq.read_table(ctx.run.path("curate/context"))
               .to_pylist()}
    assert context["s/R1"]["kept"] is False and context["s/R1"]["attempts"] == 3
    assert context["s/R2"]["kept"] is True and context["s/R2"]["attempts"] == 2
    assert not any("Spanish" in _text(b) or _case(b) == "R5" for b in bodies)  # no model call
    # Nothing of R1 reaches a later stage; nothing is kept on a parse failure.
    later = pq.read_table(ctx.run.path("curate/candidates")).column("record_id").to_pylist()
    assert "s/R1" not in later and "s/R4" not in later

    # The funnel accounts for every record and every candidate.
    f = ctx.run.manifest["curate"]["funnel"]
    st = {s["stage"]: s for s in f["stages"]}
    assert f["records_in"] == 5
    chain = ["ingest", "visual", "context", "tasks"]
    for a, b in zip(chain, chain[1:], strict=False):
        assert st[a]["out"] == st[b]["in"]
    for s in f["stages"]:
        assert s["in"] == s["out"] + sum(s["removed"].values()) + s["pending"], s
    assert st["tasks (categories)"]["out"] == st["questions"]["in"] == 4
    assert st["probe"]["out"] == f["items_out"] == 1
    assert f["by_family"] == {"perception": 1}

    # A re-run sends nothing; a threshold change re-runs thresholding only, from the cache.
    with ChatServer(responder=responder) as srv:
        recipe, data = _recipe(tmp_path, srv.base_url)
        _run(recipe, data)
        assert srv.count == 0
        recipe2, data2 = _recipe(tmp_path, srv.base_url, visual={"min_short_side": 64})
        ctx2, _ = _run(recipe2, data2)
        assert srv.count == 0
    measure, visual = ctx2.run.stage("curate.measure"), ctx2.run.stage("curate.visual")
    assert measure.finished_at == ctx.run.stage("curate.measure").finished_at  # not re-decoded
    assert visual.finished_at > ctx.run.stage("curate.visual").finished_at
    assert visual.extra["thresholds"]["min_short_side"] == 64


def test_failed_requests_wait_and_the_next_run_resumes(tmp_path):
    with ChatServer(responder=responder) as srv:
        srv.inject("500", times=50, match=lambda b: _case(b) == "R3")
        recipe, data = _recipe(tmp_path, srv.base_url)
        ctx, outcome = _run(recipe, data)
        assert not outcome.complete and _reasons(ctx.run.root)["s/R3"] == "judge_failed"
        assert ctx.run.stage("curate.context").complete is False
        srv.clear_faults()
        sent = srv.count
        ctx, outcome = _run(recipe, data)
        assert outcome.complete and outcome.items == 1
        # Only R3's verdict and what follows from it were asked again.
        judged = [b for b in srv.bodies()[sent:] if "Judge the record" in _text(b)]
        assert [_case(b) for b in judged] == ["R3"]
    assert "s/R3" not in _reasons(ctx.run.root)


def test_the_budget_stops_new_requests_and_the_funnel_shows_them_waiting(tmp_path):
    with ChatServer(responder=responder) as srv:
        recipe, data = _recipe(tmp_path, srv.base_url, budget_usd=1e-9)  # below the price of any request
        data["teachers"]["m"]["price"] = {"input_per_mtok": 100.0, "output_per_mtok": 100.0}
        recipe = curate_recipe_from_data(data)
        ctx, outcome = _run(recipe, data)
        assert srv.count == 0 and not outcome.complete and outcome.items == 0
        st = {s["stage"]: s for s in ctx.run.manifest["curate"]["funnel"]["stages"]}
        assert st["context"]["pending"] == 4 and st["context"]["removed"] == {"non_english": 1}
        data["budget_usd"] = None
        ctx, outcome = _run(curate_recipe_from_data(data), data)
        assert outcome.complete and outcome.items == 1


def test_structured_output_sends_the_verdict_schema(tmp_path):
    with ChatServer(responder=responder) as srv:
        recipe, data = _recipe(tmp_path, srv.base_url,
                               context={"structured_output": True, "with_image": False})
        _run(recipe, data)
        judged = [b for b in srv.bodies() if "Judge the record" in _text(b)]
    fmt = judged[0]["response_format"]
    assert fmt["type"] == "json_schema"
    assert set(fmt["json_schema"]["schema"]["required"]) == set(CRITERIA)
    # with_image: false sends the texts only.
    assert all(p.get("type") == "text" for b in judged for m in b["messages"]
               if isinstance(m["content"], list) for p in m["content"])


def test_steps_can_be_switched_off_and_recipes_say_what_they_are(tmp_path):
    with ChatServer(responder=responder) as srv:
        recipe, data = _recipe(tmp_path, srv.base_url, context={"enabled": False},
                               probe={"enabled": False})
        ctx, outcome = _run(recipe, data)
        assert not any("Judge the record" in _text(b) for b in srv.bodies())
    # Without the judge and the probe, R1 and R4 go on; R5 still fails the English check.
    reasons = _reasons(ctx.run.root)
    assert reasons["s/R5"] == "non_english" and "s/R1" not in reasons
    assert "s/R3#anatomy" not in reasons and outcome.items >= 2

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({k: v for k, v in data.items()
                                                     if k != "kind"}))
    with pytest.raises(RecipeError, match="kind: curate"):
        load_curate_recipe(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="medrecipe curate"):
        load_recipe(tmp_path / "c.yaml")
