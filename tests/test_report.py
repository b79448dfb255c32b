"""Report: statistics, PNG plots and a self-contained, escaped HTML page over a run directory."""

from __future__ import annotations

import io
from html.parser import HTMLParser

import pytest
from PIL import Image

from medrecipe.config import ReportConfig, SelectConfig
from medrecipe.images import ImageStore
from medrecipe.report import summary_stats, write_report
from medrecipe.schema import (
    GENERATION_SCHEMA,
    ITEM_SCHEMA,
    VERDICT_SCHEMA,
    Generation,
    Item,
    QuarantineRow,
    Verdict,
    to_table,
)
from medrecipe.select import select
from medrecipe.store import Run, StageRecord

INJECTED = "<script>alert('pwned')</script>"


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="PNG")
    return buf.getvalue()


def make_items(store: ImageStore) -> list[Item]:
    ref = store.put_bytes(_png((10, 120, 200)))
    return [
        Item(id="p1", source="bcss", task="mm_classification", question="Which tissue?",
             options=["Tumor", "Stroma", "Necrosis"], answer="B", images=[ref],
             modality="pathology", anatomy="breast"),
        Item(id="p2", source="bcss", task="mm_classification",
             question='Which tissue? <img src="http://evil.example/x.png">',
             options=["Tumor", "Stroma"], answer="A", images=[ref], modality="pathology"),
        Item(id="m1", source="medqa", task="text", question="Drug of choice?",
             options=["Aspirin", "Heparin", "Warfarin", "None"], answer="C"),
    ]


# (item, outcome) per generation: c correct, w wrong, n unparsed, u unterminated, e failed
PLAN = [("p1", "c"), ("p1", "c"), ("p1", "w"), ("p2", "n"), ("p2", "c"),
        ("m1", "u"), ("m1", "e"), ("m1", "c"), ("m1", "w")]


def build_run(root, with_selection=True):
    run = Run(root)
    store = ImageStore(run.root / "images")
    items = make_items(store)
    by_id = {i.id: i for i in items}
    gens, verdicts = [], []
    for k, (item_id, o) in enumerate(PLAN):
        it = by_id[item_id]
        teacher = "reasoner" if it.task == "text" else "vision"
        key = f"g{k}"
        wrong = "A" if it.answer != "A" else "B"
        text = {
            "c": f"<think>Looking closely {INJECTED}.</think>\\boxed{{{it.answer}}}",
            "w": f"<think>Hmm.</think>\\boxed{{{wrong}}}",
            "n": f"I cannot tell {INJECTED}",
            "u": "<think>still thinking and never closing",
            "e": None,
        }[o]
        gens.append(Generation(key=key, item_id=item_id, source=it.source, teacher=teacher,
                               model=teacher + "-model", sample_index=k, text=text,
                               completion_tokens=50 + 10 * k, error="HTTP 500: boom" if o == "e" else None,
                               finish_reason="length" if o == "u" else "stop"))
        verdicts.append(Verdict(key=key, item_id=item_id, source=it.source, teacher=teacher,
                                sample_index=k, answer={"c": it.answer, "w": wrong}.get(o),
                                method="boxed" if o in "cw" else "none", terminated=o != "u",
                                correct={"c": True, "w": False}.get(o)))
    items_t, gens_t, ver_t = (to_table(items, ITEM_SCHEMA), to_table(gens, GENERATION_SCHEMA),
                              to_table(verdicts, VERDICT_SCHEMA))
    run.write_table("items", items_t)
    run.write_table("generations", gens_t)
    run.write_table("verdicts", ver_t)
    if with_selection:
        res = select(items_t, gens_t, ver_t, SelectConfig(cap_per_question=4))
        res.write(run)
        run.record_stage(StageRecord(name="select", fingerprint="f", config_hash="c",
                                     rows={"train": res.train.num_rows}, extra={"stats": res.stats}))
    run.write_quarantine("ingest", [
        QuarantineRow(stage="ingest", source="bcss", row=3, reason="missing_answer"),
        QuarantineRow(stage="ingest", source="bcss", row=9, reason="missing_answer"),
        QuarantineRow(stage="ingest", source="medqa", row=1, reason=f"bad {INJECTED}"),
    ])
    return run


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "data"):
                self.refs.append((tag, name, value or ""))


def test_report_has_sections_plots_and_is_self_contained(tmp_path):
    run = build_run(tmp_path / "run")
    path = write_report(run, config=ReportConfig(examples=4))
    assert path == run.root / "report" / "report.html"
    html = path.read_text()
    for section in ("stages", "items", "generation", "grading", "selection", "quarantine", "examples"):
        assert f'id="{section}"' in html
    # PNG plots written next to the page
    pngs = {p.stem for p in (run.root / "report").glob("*.png")}
    assert {"items_by_source", "items_by_task", "items_by_modality", "items_by_anatomy",
            "acceptance_by_source", "acceptance_by_teacher", "traces_per_question",
            "response_tokens", "trace_length", "unparsed_by_source", "unparsed_by_teacher",
            "quarantine_reasons"} <= pngs
    for p in (run.root / "report").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # self-contained: every src is a data: URI, every link in-page; no scripts or stylesheets
    parser = _Refs()
    parser.feed(html)
    assert parser.refs, "expected embedded images"
    for tag, name, value in parser.refs:
        assert value.startswith("data:image/png;base64,") if name == "src" else value.startswith("#"), (tag, name, value)
    assert "script" not in parser.tags and "link" not in parser.tags
    # model text is escaped, not interpreted
    assert INJECTED not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert "evil.example" in html and 'src="http://evil' not in html
    # examples: accepted and rejected kinds, with the item image embedded
    assert html.count('class="example ok"') >= 1
    for kind in ("wrong answer", "unparsed", "unterminated", "failed request"):
        assert f'<span class="tag">{kind}</span>' in html
    assert html.count("data:image/png;base64,") > len(pngs)  # plots plus example images


def test_summary_stats_counts_match_the_run(tmp_path):
    run = build_run(tmp_path / "run")
    s = summary_stats(run.root)
    assert s["items"]["by_source"] == {"bcss": 2, "medqa": 1}
    assert s["items"]["by_modality"] == {"pathology": 2, "(unknown)": 1}
    v = s["verdicts"]
    n = len(PLAN)
    outcomes = [o for _, o in PLAN]
    assert v["total"] == n
    assert v["correct"] == outcomes.count("c") and v["wrong"] == outcomes.count("w")
    # failed and unterminated responses are counted apart from unparsed ones
    assert v["unparsed"] == outcomes.count("n")
    assert v["correct"] + v["wrong"] + v["unparsed"] + v["unterminated"] + v["failed"] == n
    assert v["unterminated"] == outcomes.count("u") and v["failed"] == outcomes.count("e")
    assert v["by_source"]["medqa"]["unterminated_rate"] == pytest.approx(1 / 4, abs=1e-4)
    sel = s["selected"]
    accepted = outcomes.count("c")  # cap 4 keeps every correct trace
    assert sel["train"] + sel["val"] == accepted
    assert sel["questions"] == 3
    assert sel["traces_per_question"] == {"1": 2, "2": 1}
    assert sel["acceptance_by_source"]["bcss"] == pytest.approx(3 / 5, abs=1e-4)
    assert sel["acceptance_by_teacher"]["reasoner"] == pytest.approx(1 / 4, abs=1e-4)
    assert s["quarantine"]["by_reason"]["ingest: missing_answer"] == 2
    assert s["generations"]["failed"] == 1
    assert s["select_stats"]["totals"]["accepted"] == accepted


def test_report_degrades_when_stages_have_not_run(tmp_path):
    run = Run(tmp_path / "run")
    run.save_manifest()
    html = write_report(run).read_text()
    assert html.count("has not run yet") >= 4
    assert list((run.root / "report").glob("*.png")) == []
    assert summary_stats(run.root)["items"] is None

    # only ingest output (per-source tables) exists: items come from there
    store = ImageStore(run.root / "images")
    items = make_items(store)
    run.write_table("ingest/bcss", to_table(items[:2], ITEM_SCHEMA))
    run.write_table("ingest/medqa", to_table(items[2:], ITEM_SCHEMA))
    html = write_report(run).read_text()
    assert "3 items" in html
    assert (run.root / "report" / "items_by_source.png").exists()
    assert not (run.root / "report" / "acceptance_by_source.png").exists()
    assert summary_stats(run.root)["selected"] is None


def test_report_without_selection_still_shows_rejected_examples(tmp_path):
    run = build_run(tmp_path / "run", with_selection=False)
    out = tmp_path / "elsewhere"
    missing = []

    def resolver(ref):
        missing.append(ref)
        raise FileNotFoundError(ref)

    html = write_report(run, out_dir=out, config=ReportConfig(examples=3),
                        image_resolver=resolver).read_text()
    assert (out / "report.html").exists()
    assert '<span class="tag">accepted</span>' not in html
    assert html.count('class="example bad"') == 3
    assert "not available" in html and missing  # images that cannot be resolved are named
