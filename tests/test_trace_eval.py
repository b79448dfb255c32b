"""Trace scoring in `medrecipe eval` against the local server: crafted checklists, scripted probe
replies, every edge case, hand-computed expectations; checklists shared between runs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medrecipe.evaluate import eval_config_from_data, run_eval
from medrecipe.evaluate.checklist import reference_sections
from medrecipe.schema import Item
from medrecipe.testing.chat_server import ChatServer
from medrecipe.testing.trace_judge import user_text

FIX = Path(__file__).parent / "fixtures" / "trace"

# Crafted checklists, keyed by a fragment of the item's question.
CHECKLISTS = {
    "dyspnoea": [
        ("perception", "costophrenic angle", "The right costophrenic angle is blunted."),
        ("perception", "meniscus", "A concave meniscus sits at the right base."),
        ("perception", "trachea", "The trachea is central."),
        ("knowledge", "pleural fluid", "Free pleural fluid collects in the dependent recess."),
        ("knowledge", "meniscus physics", "A meniscus reflects fluid tracking along the pleura."),
        ("rationale", "diagnosis", "The diagnosis is a right pleural effusion."),
        ("rationale", "pneumothorax exclusion", "Lung markings reach the chest wall."),
        ("rationale", "answer restated", "Pleural effusion"),  # an option: dropped by code
        ("perception", "angle again", "The right costophrenic angle is blunted."),  # duplicate
    ],
    "jaundice": [  # no knowledge units at all
        ("perception", "echogenic foci", "The gallbladder contains echogenic foci."),
        ("perception", "shadowing", "The foci cast posterior acoustic shadowing."),
        ("rationale", "gallstone diagnosis", "The diagnosis is cholelithiasis."),
    ],
}
# (presence reply, correctness reply) per unit topic; "?" is an unparseable reply.
PROBES = {
    "costophrenic angle": ("yes", "yes"),
    "meniscus": ("yes", "?"),
    "trachea": ("no", None),
    "pleural fluid": ("?", None),
    "meniscus physics": ("yes", "no"),
    "diagnosis": ("yes", "yes"),
    "pneumothorax exclusion": ("yes", "yes"),
    "echogenic foci": ("yes", "yes"),
    "shadowing": ("no", None),
    "gallstone diagnosis": ("no", None),
}
STUDENT = {"dyspnoea": "B", "jaundice": "C", "fundus": "A", "most likely diagnosis": "A"}


def _reply(answer: str | None) -> str:
    if answer == "?":
        return "Yes, I think so."  # not the JSON asked for: unparsed
    return json.dumps({"answer": answer, "reason": f"scripted {answer}"})


def responder(body, index):
    text = user_text(body)
    if body["model"] != "judge":
        letter = next(v for k, v in STUDENT.items() if k in text)
        return f"<think>Reading the image.</think>The answer is \\boxed{{{letter}}}."
    if "<reference_trace>" in text:
        key = next((k for k in CHECKLISTS if k in text), None)
        if key is None:
            return "Here is a checklist: perception is good."  # unparseable checklist
        units = [{"axis": a, "topic": t, "claim": c} for a, t, c in CHECKLISTS[key]]
        return json.dumps({"units": units})
    topic = text.split("<topic>")[1].split("</topic>")[0]
    presence, correctness = PROBES[topic]
    if "state the unit's claim accurately" in text:
        assert correctness is not None, f"correctness asked for absent unit {topic!r}"
        return _reply(correctness)
    return _reply(presence)


def _config(base_url: str, tmp_path: Path, name: str = "student", **kw):
    data = {
        "name": name, "seeds": [0], "bootstrap": {"resamples": 300},
        "model": {"backend": "openai_compat", "model": name, "base_url": base_url,
                  "max_retries": 0},
        "trace": {"judge": {"backend": "openai_compat", "model": "judge", "base_url": base_url,
                            "max_retries": 0},
                  "checklist_dir": str(tmp_path / "checklists")},
        "benchmarks": [{"name": "openmedreason_bench", "path": str(FIX / "bench.jsonl"),
                        "image_root": str(FIX)}],
    }
    data.update(kw)
    return eval_config_from_data(data)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trace")
    with ChatServer(responder=responder) as srv:
        res = run_eval(_config(srv.base_url, tmp), tmp / "a")
        bodies = srv.bodies()
    return tmp, res, bodies


def test_metrics_equal_the_hand_computation(first_run):
    _, res, _ = first_run
    t = res.results["benchmarks"]["openmedreason_bench"]["trace"]
    # item 1 (dyspnoea): perception P 2/3 C 1/2 S 1/3; knowledge P 1/2 C 0 S 0;
    #                    rationale P 1 C 1 S 1; trace 4/9
    # item 2 (jaundice): perception P 1/2 C 1 S 1/2; knowledge: no units;
    #                    rationale P 0 C undefined S 0; trace (1/2 + 0) / 2 = 1/4
    ax = t["axes"]
    assert ax["perception"]["presence"]["mean"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert ax["perception"]["correctness"]["mean"] == pytest.approx((1 / 2 + 1) / 2)
    assert ax["perception"]["score"]["mean"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert ax["knowledge"]["presence"] == pytest.approx(
        {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n_items": 1})
    assert ax["knowledge"]["correctness"]["mean"] == 0.0
    assert ax["knowledge"]["score"]["mean"] == 0.0
    assert ax["rationale"]["presence"]["mean"] == pytest.approx(0.5)
    assert ax["rationale"]["correctness"]["mean"] == 1.0
    assert ax["rationale"]["correctness"]["n_items"] == 1
    assert ax["rationale"]["score"]["mean"] == pytest.approx(0.5)
    assert t["trace_score"]["mean"] == pytest.approx((4 / 9 + 1 / 4) / 2)
    assert t["n_items"] == 2 and t["n_items_total"] == 4
    # answer accuracy over the scored items: item 1 right (B), item 2 wrong (C instead of A)
    assert t["answer_accuracy"]["mean"] == pytest.approx(0.5)
    assert ax["perception"]["units"] == 3 + 2 and ax["knowledge"]["units"] == 2


def test_unparsed_probes_and_checklists_are_counted_and_never_credited(first_run):
    _, res, _ = first_run
    t = res.results["benchmarks"]["openmedreason_bench"]["trace"]
    assert t["probes"]["presence_unparsed"] == 1 and t["probes"]["correctness_unparsed"] == 1
    assert t["probes"]["presence_ok"] == 9 and t["probes"]["correctness_ok"] == 5
    assert t["unparsed_rate"]["presence"] == pytest.approx(1 / 10)
    assert t["unparsed_rate"]["correctness"] == pytest.approx(1 / 6)
    assert t["axes"]["perception"]["unparsed"] == 1
    c = t["checklists"]["counts"]
    assert c == {"from_judge": 2, "unparsed": 1, "no_reference_trace": 1,
                 "dropped_duplicate": 1, "dropped_restates_stem_or_option": 1}
    q = pq.read_table(res.run_dir / "quarantine" / "trace_openmedreason_bench.parquet").to_pylist()
    assert sorted((r["item_id"], r["reason"]) for r in q) == [
        ("openmedreason_bench/omr-3", "checklist_unparsed"),
        ("openmedreason_bench/omr-4", "no_reference_trace")]


def test_correctness_is_asked_only_for_present_units(first_run):
    _, _, bodies = first_run
    texts = [user_text(b) for b in bodies if b["model"] == "judge"]
    asked = sorted(t.split("<topic>")[1].split("</topic>")[0] for t in texts
                   if "state the unit's claim accurately" in t)
    assert asked == sorted(["costophrenic angle", "meniscus", "meniscus physics", "diagnosis",
                            "pneumothorax exclusion", "echogenic foci"])
    # probes are text only: the judge never receives the image
    for b in bodies:
        if b["model"] == "judge":
            assert all(isinstance(m["content"], str) or
                       all(p["type"] == "text" for p in m["content"]) for m in b["messages"])


def test_checklist_is_stored_with_items_and_reused_by_another_model(first_run):
    tmp, first, _ = first_run
    items = pq.read_table(first.run_dir / "items" / "openmedreason_bench.parquet").to_pylist()
    meta = {r["id"]: json.loads(r["meta"]) for r in items}
    units = meta["openmedreason_bench/omr-1"]["checklist"]["units"]
    assert len(units) == 7 and units[0]["topic"] == "costophrenic angle"
    assert "checklist" not in meta["openmedreason_bench/omr-4"]
    rows = [json.loads(x) for x in (first.run_dir / "trace_probes.jsonl").read_text().splitlines()]
    assert len(rows) == 7 + 3
    assert {r["presence_status"] for r in rows} == {"ok", "unparsed"}
    with ChatServer(responder=responder) as srv:
        other = run_eval(_config(srv.base_url, tmp, name="other"), tmp / "b")
        judged = [user_text(b) for b in srv.bodies() if b["model"] == "judge"]
    # stored checklists are reused without a request; only the item whose checklist could
    # not be built is asked again (this run folder has its own request cache)
    assert sum("<reference_trace>" in t for t in judged) == 1
    a = first.results["benchmarks"]["openmedreason_bench"]["trace"]["checklists"]
    b = other.results["benchmarks"]["openmedreason_bench"]["trace"]["checklists"]
    assert a["hash"] == b["hash"] and b["counts"]["from_store"] == 2


def test_a_trace_benchmark_needs_a_judge():
    from medrecipe.errors import RecipeError

    with pytest.raises(RecipeError, match="trace.judge"):
        eval_config_from_data({"name": "x", "model": {"model": "m"},
                               "benchmarks": [{"name": "openmedreason_bench", "path": "b.jsonl"}]})
    cfg = eval_config_from_data({"name": "x", "model": {"model": "m"}, "benchmarks": [
        {"name": "openmedreason_bench", "path": "b.jsonl", "trace": False}]})
    assert cfg.benchmarks[0].resolved().trace is False


def test_reference_sections_accept_mappings_and_strings():
    base = {"id": "i", "source": "s", "task": "text", "question": "q?", "answer": "x"}
    it = Item(**base, meta={"reference_trace": {"justification": "J.", "perception": "P.",
                                                "interpretation": "I.", "extra": "E."}})
    assert [n for n, _ in reference_sections(it)] == ["perception", "interpretation",
                                                      "justification", "extra"]
    assert reference_sections(Item(**base, meta={"reference_trace": "  whole  "})) == [
        ("reference", "whole")]
    assert reference_sections(Item(**base)) == []
