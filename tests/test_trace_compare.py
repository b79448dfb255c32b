"""Two models on the trace benchmark with a keyword judge that reads the traces: Table 4 in
`eval compare` (markdown, HTML, figures), pass@k curves, and pairwise preference with the
position-swap rule."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from PIL import Image

from medrecipe.evaluate import compare, eval_config_from_data, run_eval
from medrecipe.evaluate.pairwise import combine, run_pairwise, summarize
from medrecipe.testing.chat_server import ChatServer
from medrecipe.testing.trace_judge import keyword_judge, user_text

FIX = Path(__file__).parent / "fixtures" / "trace"
ITEMS = [json.loads(line) for line in (FIX / "bench.jsonl").read_text().splitlines()]


def _item_for(text: str) -> dict:
    return next(it for it in ITEMS if it["question"] in text)


def good_student(body, i):
    """Writes the reference explanation and the right answer."""
    it = _item_for(user_text(body))
    ref = it["meta"].get("reference_trace") or {}
    return f"<think>{' '.join(ref.values())}</think>\\boxed{{{it['answer']}}}"


def poor_student(body, i):
    """Names only the first perception sentence, then guesses: right on the first seed only."""
    it = _item_for(user_text(body))
    first = ((it["meta"].get("reference_trace") or {}).get("perception") or "").split(". ")[0]
    guess = it["answer"] if body.get("seed") == 0 else ("B" if it["answer"] == "A" else "A")
    return f"<think>{first}.</think>\\boxed{{{guess}}}"


def _serve(student, judge):
    def responder(body, i):
        return (judge if body["model"] == "judge" else student)(body, i)
    return ChatServer(responder=responder)


def _run(student, name, label, root: Path, judge=None):
    with _serve(student, judge or keyword_judge()) as srv:
        cfg = eval_config_from_data({
            "name": name, "label": label, "seeds": [0, 1], "bootstrap": {"resamples": 300},
            "model": {"backend": "openai_compat", "model": name, "base_url": srv.base_url},
            "trace": {"judge": {"backend": "openai_compat", "model": "judge",
                                "base_url": srv.base_url},
                      "checklist_dir": str(root / "checklists")},
            "benchmarks": [{"name": "openmedreason_bench", "path": str(FIX / "bench.jsonl"),
                            "image_root": str(FIX)}]})
        return run_eval(cfg, root / name)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tcmp")
    return root, _run(good_student, "good", "Good-7B", root), _run(poor_student, "poor", "Poor-7B", root)


def test_keyword_judge_scores_the_reference_trace_full_and_a_fragment_low(two_runs):
    _, good, poor = two_runs
    g = good.results["benchmarks"]["openmedreason_bench"]["trace"]
    p = poor.results["benchmarks"]["openmedreason_bench"]["trace"]
    # the reference trace itself meets every unit of its own checklist
    assert g["trace_score"]["mean"] == 1.0 and g["n_items"] == 3
    # the poor trace has one perception sentence per item: omr-1 1/2, omr-2 1/2, omr-3 1/1
    assert p["axes"]["perception"]["presence"]["mean"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert p["axes"]["rationale"]["presence"]["mean"] == 0.0
    assert p["answer_accuracy"]["mean"] == pytest.approx(0.5)
    assert p["checklists"]["hash"] == g["checklists"]["hash"]  # same checklists for both


def test_compare_writes_table_4_and_the_figures(two_runs, tmp_path):
    root, good, poor = two_runs
    res = compare([good.run_dir, poor.run_dir], tmp_path / "cmp")
    md = res.markdown.read_text()
    assert "OpenMedReason-Bench: reasoning traces (%)" in md
    assert "| Model | Perception Pres. | Perception Corr. | Perception Score |" in md
    good_row = next(line for line in md.splitlines() if line.startswith("| Good-7B") and "**" in line)
    assert "**100.0**" in good_row
    poor_row = next(line for line in md.splitlines() if line.startswith("| Poor-7B |")
                    and line.count("|") > 12)
    p = poor.results["benchmarks"]["openmedreason_bench"]["trace"]
    assert f"{100 * p['trace_score']['mean']:.1f}" in poor_row
    assert "different checklists" not in md
    page = res.html.read_text()
    assert "reasoning traces (%)" in page and "trace_axes.png" in page and "pass_at_k.png" in page
    for png in (res.trace_plot, res.pass_k_plot):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 400
    data = json.loads(res.json.read_text())
    # pass@k from the existing metric: poor is right on seed 0 only -> pass@1 0.5, pass@2 1.0
    assert data["pass_at_k"]["openmedreason_bench"]["curves"]["Poor-7B"] == {"1": 0.5, "2": 1.0}


def test_compare_flags_runs_scored_on_different_checklists(two_runs, tmp_path):
    root, good, _ = two_runs
    other = tmp_path / "other"
    import shutil

    shutil.copytree(good.run_dir, other)
    res_path = other / "results.json"
    data = json.loads(res_path.read_text())
    data["label"] = "Copy"
    data["benchmarks"]["openmedreason_bench"]["trace"]["checklists"]["hash"] = "0" * 16
    res_path.write_text(json.dumps(data))
    md = compare([good.run_dir, other], tmp_path / "cmp").markdown.read_text()
    assert "scored on different checklists" in md


def test_swap_rule_every_verdict_combination():
    expect = {("1", "2"): "win", ("2", "1"): "loss"}  # both orders prefer the same trace
    for a_first, b_first in itertools.product(["1", "2", "tie", None], repeat=2):
        assert combine(a_first, b_first) == expect.get((a_first, b_first), "tie"), (a_first, b_first)


def test_summary_rates_position_bias_and_consistency():
    pairs = [  # item x: one win, one position-decided pair; item y: a loss
        {"item_id": "x", "a_first": "1", "b_first": "2"},
        {"item_id": "x", "a_first": "1", "b_first": "1"},
        {"item_id": "y", "a_first": "2", "b_first": "1"},
        {"item_id": "z", "a_first": None, "b_first": "tie"},
    ]
    s = summarize(pairs, resamples=200)
    assert s["win"]["rate"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert s["tie"]["rate"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert s["loss"]["rate"] == pytest.approx(1 / 3)
    # decisive verdicts: 1,2,1,1,2,1 -> four of six went to the first position
    assert s["position_bias"] == {"first_wins": pytest.approx(4 / 6), "decisive_verdicts": 6}
    assert s["consistency"] == pytest.approx(2 / 4)
    assert s["verdicts"] == {"1": 4, "2": 2, "tie": 1, "unparsed": 1}


def test_pairwise_better_trace_wins_in_both_orders(two_runs, tmp_path):
    root, good, poor = two_runs
    with _serve(good_student, keyword_judge()) as srv:
        judge = {"backend": "openai_compat", "model": "judge", "base_url": srv.base_url}
        from medrecipe.config import TeacherConfig

        res = run_pairwise(good.run_dir, poor.run_dir, TeacherConfig(**judge), tmp_path / "pw",
                           resamples=200)
        bodies = [user_text(b) for b in srv.bodies()]
    s = res.summary["benchmarks"]["openmedreason_bench"]
    # 4 items x 2 seeds (the item without a reference trace still has traces to compare)
    assert s["n_pairs"] == 8 and len(bodies) == 16
    # omr-4 has no reference trace, so neither student writes anything for it: a tie
    assert s["win"]["rate"] == pytest.approx(3 / 4) and s["loss"]["rate"] == 0.0
    assert s["position_bias"]["first_wins"] == pytest.approx(0.5)
    assert s["consistency"] == 1.0
    # each pair was asked in both orders: the good trace once as trace 1, once as trace 2
    first = [b.split("<trace_1>")[1].split("</trace_1>")[0] for b in bodies]
    assert sum("costophrenic angle. The right base" in t for t in first) == 2
    assert "Good-7B vs Poor-7B" in res.markdown.read_text()


def test_pairwise_position_bias_never_becomes_a_win(two_runs, tmp_path):
    root, good, _ = two_runs
    # identical traces on both sides and a judge that always picks the first one
    with _serve(good_student, keyword_judge(position_bias=True)) as srv:
        from medrecipe.config import TeacherConfig

        res = run_pairwise(good.run_dir, good.run_dir,
                           TeacherConfig(backend="openai_compat", model="judge", base_url=srv.base_url),
                           tmp_path / "pw", resamples=200)
    s = res.summary["benchmarks"]["openmedreason_bench"]
    assert s["win"]["rate"] == 0.0 and s["tie"]["rate"] == 1.0
    assert s["position_bias"]["first_wins"] == 1.0 and s["consistency"] == 0.0


def test_pairwise_cli_uses_run_a_judge(two_runs, tmp_path):
    from typer.testing import CliRunner

    from medrecipe.cli import app

    root, good, poor = two_runs
    with _serve(good_student, keyword_judge(garble=lambda t: "jaundice" in t)) as srv:
        # the recorded judge points at the module's server, which is gone: give one on the CLI
        judge_yaml = tmp_path / "judge.yaml"
        judge_yaml.write_text(f"backend: openai_compat\nmodel: judge\nbase_url: {srv.base_url}\n")
        out = CliRunner().invoke(app, ["eval", "pairwise", str(good.run_dir), str(poor.run_dir),
                                       "--judge", str(judge_yaml), "--out", str(tmp_path / "pw")])
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "pw" / "pairwise.json").read_text())
    s = summary["benchmarks"]["openmedreason_bench"]
    assert s["verdicts"]["unparsed"] == 4  # the jaundice item: 2 seeds x 2 orders
    assert s["win"]["rate"] == pytest.approx(2 / 4)  # its pairs are ties (and omr-4's), never wins


def test_eval_cli_prints_the_trace_table(tmp_path):
    from typer.testing import CliRunner

    from medrecipe.cli import app

    with _serve(good_student, keyword_judge()) as srv:
        recipe = tmp_path / "eval.yaml"
        recipe.write_text(f"""
name: cli-good
seeds: [0]
bootstrap: {{resamples: 100}}
model: {{backend: openai_compat, model: good, base_url: "{srv.base_url}"}}
trace:
  judge: {{backend: openai_compat, model: judge, base_url: "{srv.base_url}"}}
  checklist_dir: {tmp_path / "checklists"}
benchmarks:
  - {{name: openmedreason_bench, path: "{FIX / 'bench.jsonl'}", image_root: "{FIX}"}}
""")
        out = CliRunner().invoke(app, ["eval", str(recipe), "--out", str(tmp_path / "run")],
                                 env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "reasoning traces" in out.output and "3/4" in out.output  # items scored / total
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["benchmarks"]["openmedreason_bench"]["trace"]["trace_score"]["mean"] == 1.0
    assert res["trace_judge"]["requests_sent"] > 0
