"""Judge-model steps on the real engine against a local server: difficulty ratings feed the
select filter, open answers are judged, missing modality/anatomy are labelled via JSON."""

from __future__ import annotations

import json

from medrecipe.config import TeacherConfig
from medrecipe.judge import (
    ChoiceReader,
    annotate_items,
    make_open_judge,
    parse_choice,
    parse_labels,
    parse_rating,
    parse_verdict,
    rate_difficulty,
)
from medrecipe.schema import ITEM_SCHEMA, Item, items_from_table, to_table
from medrecipe.testing.chat_server import ChatServer


def _items():
    return [Item(id=f"s/{i}", source="s", task="text", question=f"Difficulty probe {i}?",
                 options=["a", "b"], answer="A") for i in range(4)]


def _user_text(body) -> str:
    msg = body["messages"][-1]["content"]
    return msg if isinstance(msg, str) else " ".join(p.get("text", "") for p in msg)


def test_parsers_never_guess():
    assert parse_rating("fairly hard <rating>7</rating>") == 7
    assert parse_rating("<rating>11</rating>") is None and parse_rating("seven") is None
    assert parse_rating("<rating>2</rating> then <rating>5</rating>") == 5
    assert parse_verdict("<verdict>correct</verdict>") is True
    assert parse_verdict("<verdict>Incorrect</verdict>") is False
    assert parse_verdict("probably right") is None
    assert parse_labels('{"modality": "CT", "anatomy": "brain"}') == {"modality": "ct", "anatomy": "brain"}
    assert parse_labels('{"modality": "x-ray", "anatomy": "elbowish"}') == {"modality": "x-ray",
                                                                           "anatomy": None}
    assert parse_labels("not json") == {"modality": None, "anatomy": None}


def test_difficulty_ratings_are_cached_and_unparsed_left_out(tmp_path):
    def responder(body, index):
        text = _user_text(body)
        n = int(text.split("Difficulty probe ")[1].split("?")[0])
        return "I cannot say." if n == 3 else f"Moderate. <rating>{n + 2}</rating>"

    with ChatServer(responder=responder) as srv:
        teachers = {"j": TeacherConfig(model="judge", base_url=srv.base_url)}
        table = to_table(_items(), ITEM_SCHEMA)
        res = rate_difficulty(table, "j", teachers, "judge_difficulty", tmp_path / "cache")
        assert res.values == {"s/0": 2, "s/1": 3, "s/2": 4} and res.unparsed == 1
        sent = srv.count
        again = rate_difficulty(table, "j", teachers, "judge_difficulty", tmp_path / "cache")
        assert again.values == res.values and srv.count == sent  # served from the cache
        body = srv.bodies()[0]
        assert body["temperature"] == 0.0  # judgements are greedy


def test_open_answer_judge_sees_reference_and_candidate(tmp_path):
    def responder(body, index):
        text = _user_text(body)
        ok = "Candidate answer: pleural effusion" in text and "Reference answer: effusion" in text
        return "<verdict>correct</verdict>" if ok else "<verdict>incorrect</verdict>"

    item = Item(id="v/1", source="v", task="open_vqa", question="What is seen?", answer="effusion")
    with ChatServer(responder=responder) as srv:
        judge = make_open_judge("j", {"j": TeacherConfig(model="judge", base_url=srv.base_url)},
                                "judge_open", tmp_path / "cache")
        assert judge([(item, "pleural effusion"), (item, "pneumothorax")]) == [True, False]


def test_annotate_fills_only_missing_fields_with_allowed_values(tmp_path):
    items = [Item(id="a/1", source="a", task="mm_reasoning", question="Which lobe?",
                  options=["upper", "lower"], answer="A", modality="ct"),
             Item(id="a/2", source="a", task="text", question="Which drug?", options=["x", "y"],
                  answer="B"),
             Item(id="a/3", source="a", task="text", question="Labelled already?",
                  options=["x", "y"], answer="A", modality="mri", anatomy="brain")]

    def responder(body, index):
        assert body["response_format"]["type"] == "json_schema"
        return json.dumps({"modality": "x-ray", "anatomy": "chest"})

    with ChatServer(responder=responder) as srv:
        table, res = annotate_items(to_table(items, ITEM_SCHEMA), "lab",
                                    {"lab": TeacherConfig(model="l", base_url=srv.base_url)},
                                    "annotate", tmp_path / "cache")
        assert srv.count == 2  # the fully labelled item is not sent
    out = {it.id: it for it in items_from_table(table)}
    assert (out["a/1"].modality, out["a/1"].anatomy) == ("ct", "chest")  # modality kept
    assert (out["a/2"].modality, out["a/2"].anatomy) == ("x-ray", "chest")
    assert (out["a/3"].modality, out["a/3"].anatomy) == ("mri", "brain")
    assert out["a/2"].meta["labelled_by"] == "lab" and res.unparsed == 0


def test_choice_parser_reads_one_valid_letter_or_none_only():
    assert parse_choice("<choice>C</choice>", 4) == "C"
    assert parse_choice("  <CHOICE> b </CHOICE>\n", 4) == "B"
    assert parse_choice("<choice>NONE</choice>", 4) == "NONE"
    assert parse_choice("D", 4) == "D" and parse_choice("none", 4) == "NONE"
    assert parse_choice("<choice>E</choice>", 4) is None  # no option E
    assert parse_choice("<choice>A</choice> or maybe <choice>B</choice>", 4) is None
    assert parse_choice("<choice>A or B</choice>", 4) is None
    assert parse_choice("I think the reply means B", 4) is None
    assert parse_choice("", 4) is None and parse_choice(None, 4) is None


def test_choice_reader_reads_replies_through_the_cached_engine(tmp_path):
    def responder(body, index):
        text = _user_text(body)
        if "the duct is blocked" in text:
            return "<choice>C</choice>"
        if "cannot decide" in text:
            return "<choice>NONE</choice>"
        return "Probably C, but hard to say."  # unparseable

    item = Item(id="m/1", source="m", task="text", question="Cause of jaundice?",
                options=["Hepatitis", "Haemolysis", "Gallstone in the duct", "Gilbert"], answer="C")
    pairs = [(item, "Given the dilated ducts, the duct is blocked."), (item, "I cannot decide here."),
             (item, "Some words about bilirubin.")]
    with ChatServer(responder=responder) as srv:
        teachers = {"j": TeacherConfig(model="judge", base_url=srv.base_url)}
        reader = ChoiceReader("j", teachers, "judge_choice", tmp_path / "cache")
        assert reader(pairs) == ["C", "NONE", None]
        counts = reader.counts()
        assert (counts["asked"], counts["answered"], counts["declined"], counts["unparsed"],
                counts["failed"]) == (3, 1, 1, 1, 0)
        sent = srv.count
        assert ChoiceReader("j", teachers, "judge_choice", tmp_path / "cache")(pairs) == ["C", "NONE", None]
        assert srv.count == sent  # the same readings come from the cache
        body = srv.bodies()[0]
        prompt = _user_text(body)
        assert body["temperature"] == 0.0
        assert "C. Gallstone in the duct" in prompt and "the duct is blocked" in prompt


def test_choice_reader_counts_failed_requests(tmp_path):
    item = Item(id="m/2", source="m", task="text", question="Q?", options=["x", "y"], answer="A")
    with ChatServer() as srv:
        srv.inject("400", times=5)
        reader = ChoiceReader("j", {"j": TeacherConfig(model="judge", base_url=srv.base_url)},
                              "judge_choice", tmp_path / "cache")
        assert reader([(item, "whatever")]) == [None]
    assert reader.counts()["failed"] == 1 and reader.counts()["answered"] == 0
