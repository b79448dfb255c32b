"""Review labels survive crashes; the server refuses foreign hosts and bad labels; resume rule;
agreement summary; Cohen's kappa."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from medrecipe.evaluate.agreement import cohen_kappa, percent_agreement
from medrecipe.review.labels import LabelStore
from medrecipe.review.server import ReviewApp, make_server
from medrecipe.review.source import load_review_items
from medrecipe.review.summary import render_summary, summarize_labels
from review_helpers import make_review_run


def test_labels_latest_wins_and_a_cut_line_never_swallows_the_next(tmp_path):
    path = tmp_path / "labels.jsonl"
    s = LabelStore(path, clock=lambda: 1.0)
    s.add("a", "faithful", True, "r1")
    s.add("a", "faithful", False, "r1")
    s.add("a", "modality", True, "r1")
    s.add("a", "modality", None, "r1")  # taken back
    assert s.latest() == {("r1", "a", "faithful"): False}
    # a crash in the middle of a write leaves a line without its end
    with open(path, "ab") as f:
        f.write(b'{"item_id": "a", "dimension": "answ')
    s2 = LabelStore(path)
    s2.add("b", "answerable", True, "r1")
    assert s2.latest() == {("r1", "a", "faithful"): False, ("r1", "b", "answerable"): True}
    with pytest.raises(ValueError, match="unknown dimension"):
        s2.add("b", "pretty", True, "r1")


def test_review_items_carry_context_reference_trace_and_images(tmp_path):
    items = load_review_items(make_review_run(tmp_path / "run"))
    assert [ri.item.id for ri in items] == [f"omr/omr-{i}" for i in range(1, 5)]
    first = items[0].view()
    assert first["images"] == 1 and first["modality"] == "x-ray" and first["answer"] == "B"
    assert [name for name, _ in first["trace"]] == ["perception", "interpretation", "justification"]
    assert first["context"][0][1].startswith("Figure 1.")
    assert items[3].trace == [] and items[3].item.images == []


def test_resume_goes_to_the_last_labelled_item_or_the_next_open_one(tmp_path):
    app = ReviewApp(make_review_run(tmp_path / "run"), "alice")
    assert app.resume_index() == 0
    app.store.add("omr/omr-3", "faithful", True, "alice")
    assert app.resume_index() == 2
    for d in ("answer_correct", "meaningful", "answerable", "modality"):
        app.store.add("omr/omr-3", d, True, "alice")
    assert app.resume_index() == 3  # item 3 is complete: the next open one
    app.store.add("omr/omr-1", "faithful", True, "bob")  # another reviewer's labels do not count
    assert app.resume_index() == 3


@pytest.fixture()
def server(tmp_path):
    srv = make_server(make_review_run(tmp_path / "run"), port=0, reviewer="alice")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    srv.shutdown()
    srv.server_close()


def test_server_saves_labels_and_refuses_what_it_should(server):
    url, srv = server
    with httpx.Client(base_url=url) as c:
        ok = c.post("/api/label", json={"item_id": "omr/omr-2", "dimension": "modality",
                                        "value": False})
        assert ok.status_code == 200 and ok.json()["saved"] is True
        assert c.get("/api/item/1").json()["labels"] == {"modality": False}
        assert c.get("/api/state").json()["resume"] == 1
        # a page on another origin that resolved to 127.0.0.1 sends its own Host
        assert c.get("/api/state", headers={"Host": "attacker.example"}).status_code == 403
        form = c.post("/api/label", content=b"item_id=omr/omr-2",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status_code == 415
        for bad in ({"item_id": "nope", "dimension": "modality", "value": True},
                    {"item_id": "omr/omr-2", "dimension": "beauty", "value": True},
                    {"item_id": "omr/omr-2", "dimension": "modality", "value": 1}):
            assert c.post("/api/label", json=bad).status_code == 400
        assert c.get("/img/0/0").headers["content-type"] == "image/png"
        assert c.get("/img/3/0").status_code == 404  # item 4 has no image
        assert c.get("/img/0/0/../../etc").status_code == 404
    lines = (srv.RequestHandlerClass.app.store.path).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["reviewer"] == "alice"


def test_summary_rates_and_agreement_between_reviewers(tmp_path):
    store = LabelStore(tmp_path / "labels.jsonl")
    ids = ["i1", "i2", "i3", "i4"]
    alice = [True, True, False, True]
    bob = [True, False, False, True]
    for i, a, b in zip(ids, alice, bob, strict=True):
        store.add(i, "answer_correct", a, "alice")
        store.add(i, "answer_correct", b, "bob")
    store.add("i1", "modality", True, "alice")
    s = summarize_labels(store, ids, resamples=200)
    d = s["dimensions"]["answer_correct"]
    assert d["n"] == 8 and d["yes_rate"] == pytest.approx(5 / 8)
    assert s["dimensions"]["modality"]["n"] == 1 and s["dimensions"]["faithful"]["yes_rate"] is None
    pair = s["between_reviewers"][0]
    assert pair["reviewers"] == ["alice", "bob"]
    ac = pair["dimensions"]["answer_correct"]
    # observed 3/4; chance: alice yes 3/4, bob yes 2/4 -> 3/8 + 1/8 = 1/2; kappa = 0.5
    assert ac == {"n": 4, "agreement": 0.75, "kappa": pytest.approx(0.5)}
    assert pair["dimensions"]["modality"]["n"] == 0
    text = render_summary(s)
    assert "| Answer correct | 8 | 62.5 |" in text and "| Answer correct | 4 | 75.0 | 0.50 |" in text


def test_cohen_kappa_edge_cases():
    assert cohen_kappa(["y", "n"], ["n", "y"]) == pytest.approx(-1.0)
    assert cohen_kappa(["y", "y"], ["y", "y"]) is None  # chance agreement 1: undefined
    assert cohen_kappa([None, "y"], ["y", None]) is None  # nothing labelled by both
    assert percent_agreement(["y", None, "n"], ["y", "n", "y"]) == 0.5
    with pytest.raises(ValueError):
        cohen_kappa(["y"], ["y", "n"])
