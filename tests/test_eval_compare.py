"""`compare` over two evaluation runs: the Table-2 style table and both figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from medrecipe.errors import UserError
from medrecipe.evaluate import compare, eval_config_from_data, run_eval
from medrecipe.testing.chat_server import ChatServer

FIX = Path(__file__).parent / "fixtures" / "eval"
GOLD = {  # fixture question fragment -> answer letter
    "iron deficiency": "A", "crushing chest pain": "B", "periorbital edema": "C",
    "heat intolerance": "D",
    "imaging modality": "A", "organ shows": "B", "most likely finding": "C",
}


def _text(body):
    parts = [m["content"] for m in body["messages"] if m["role"] == "user"]
    out = []
    for c in parts:
        out += [c] if isinstance(c, str) else [p.get("text", "") for p in c if p.get("type") == "text"]
    return " ".join(out).lower()


def oracle(body, i):
    """Right on the MCQ fixtures, thinks at length; says 'glioma' (A) for every scan."""
    text = _text(body)
    letter = next((v for k, v in GOLD.items() if k in text), "A")
    return f"<think>{'careful reasoning ' * 40}</think>\\boxed{{{letter}}}"


def always_b(body, i):
    """Short, always answers B."""
    return "<think>quick</think>\\boxed{B}"


def _benchmarks():
    return [
        {"name": "medqa", "path": str(FIX / "medqa_test.jsonl")},
        {"name": "pmc_vqa", "path": str(FIX / "pmc_vqa" / "test_clean.csv")},
        {"name": "brain_tumor", "path": str(FIX / "brain_tumor" / "Testing")},
    ]


def _run(responder, name, label, out):
    with ChatServer(responder=responder) as srv:
        cfg = eval_config_from_data({
            "name": name, "label": label, "seeds": [0, 1], "bootstrap": {"resamples": 300},
            "model": {"backend": "openai_compat", "model": name, "base_url": srv.base_url},
            "benchmarks": _benchmarks()})
        return run_eval(cfg, out)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    a = _run(oracle, "oracle", "Oracle-7B", root / "oracle")
    b = _run(always_b, "bee", "AlwaysB", root / "bee")
    return root, a, b


def test_runs_cover_each_category(two_runs):
    _, a, b = two_runs
    assert set(a.results["categories"]) == {"text", "mm_reasoning", "mm_classification"}
    # oracle: MCQ fixtures all right; brain tumor: 'A' (glioma) is right for 2 of 8 scans
    assert a.results["categories"] == {"text": 1.0, "mm_reasoning": 1.0,
                                       "mm_classification": pytest.approx(0.25)}
    # always B: MedQA 1/4, PMC-VQA 1/3, brain tumor (B = meningioma) 2/8
    assert b.results["benchmarks"]["medqa"]["accuracy"] == pytest.approx(0.25)
    assert b.results["categories"]["mm_reasoning"] == pytest.approx(1 / 3)
    bt = b.results["benchmarks"]["brain_tumor"]
    # predicting one class for everything: recall 1 for that class, 0 for three -> 0.25
    assert bt["balanced_accuracy"] == pytest.approx(0.25)
    # F1: meningioma 2*2/(2*2+6) = 0.4, others 0 -> 0.1
    assert bt["macro_f1"] == pytest.approx(0.1)


def test_compare_writes_table_and_both_plots(two_runs):
    root, a, b = two_runs
    res = compare([a.run_dir, b.run_dir], root / "compare")
    md = res.markdown.read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["Model", "MedQA", "Text-only avg", "PMC-VQA", "Multimodal reasoning avg",
                    "Brain Tumor", "Multimodal classification avg"]
    table = md.split("## Parse failures")[0]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
            for r in table.splitlines() if r.startswith("| Oracle-7B") or r.startswith("| AlwaysB")}
    # two seeds with identical results: a std of 0.0 is printed, not left out
    assert rows["Oracle-7B"][1:5] == ["**100.0 ± 0.0**", "**100.0**", "**100.0 ± 0.0**", "**100.0**"]
    assert rows["AlwaysB"][1:5] == ["25.0 ± 0.0", "25.0", "33.3 ± 0.0", "33.3"]
    # both models score 25% on brain tumor: a tie is bold in both rows
    assert rows["Oracle-7B"][5] == rows["AlwaysB"][5] == "**25.0 ± 0.0**"
    assert "Parse failures" in md
    page = res.html.read_text()
    assert "Oracle-7B" in page and "AlwaysB" in page and "<table>" in page
    assert "accuracy_by_category.png" in page and "response_length.png" in page
    for png in (res.accuracy_plot, res.length_plot):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 300
    data = json.loads(res.json.read_text())
    lengths = {m["label"]: m["benchmarks"]["medqa"]["mean_thinking_tokens"] for m in data["models"]}
    assert lengths["Oracle-7B"] > lengths["AlwaysB"] > 0


def test_compare_marks_partial_category_average_and_rejects_non_runs(two_runs, tmp_path):
    root, a, _ = two_runs
    with ChatServer(responder=oracle) as srv:
        cfg = eval_config_from_data({
            "name": "textonly", "seeds": [0], "bootstrap": {"resamples": 100},
            "model": {"backend": "openai_compat", "model": "t", "base_url": srv.base_url},
            "benchmarks": [_benchmarks()[0],
                           {"name": "headqa_like", "adapter": "medqa", "category": "text",
                            "path": str(FIX / "medqa_test.jsonl"), "limit": 2}]})
        c = run_eval(cfg, tmp_path / "textonly")
    res = compare([a.run_dir, c.run_dir], tmp_path / "cmp")
    md = res.markdown.read_text()
    oracle_row = next(r for r in md.splitlines() if r.startswith("| Oracle-7B"))  # first table
    assert "†" in oracle_row  # lacks headqa_like in the text category
    assert "not comparable" in md
    with pytest.raises(UserError, match="not an evaluation run"):
        compare([tmp_path], tmp_path / "x")


def test_eval_command_runs_a_recipe_file_then_compares(two_runs, tmp_path):
    import io

    from rich.console import Console

    from medrecipe.evaluate.commands import eval_command

    _, a, _ = two_runs
    buf = io.StringIO()
    con = Console(file=buf, width=200, highlight=False)
    with ChatServer(responder=always_b) as srv:
        recipe = tmp_path / "eval.yaml"
        recipe.write_text(json.dumps({
            "name": "cli", "label": "CLI-model", "seeds": [0, 1, 2],
            "model": {"backend": "openai_compat", "model": "c", "base_url": srv.base_url},
            "benchmarks": [{"name": "medqa", "path": str(FIX / "medqa_test.jsonl")}]}))
        res = eval_command([str(recipe)], ["bootstrap.resamples=100", "seeds=[0]"],
                           out=tmp_path / "cli_run", console=con)
        assert srv.count == 4  # the override left one seed
    assert res.results["benchmarks"]["medqa"]["accuracy"] == pytest.approx(0.25)
    assert "MedQA" in buf.getvalue() and "25.0" in buf.getvalue()
    cmp = eval_command(["compare", str(a.run_dir), str(tmp_path / "cli_run")],
                       out=tmp_path / "cmp", console=con)
    assert cmp.accuracy_plot.exists() and cmp.length_plot.exists()
    assert "| CLI-model | 25.0 |" in cmp.markdown.read_text()
    with pytest.raises(UserError, match="needs one or more"):
        eval_command(["compare"], console=con)
    with pytest.raises(UserError, match="takes one recipe"):
        eval_command(["a.yaml", "b.yaml"], console=con)
