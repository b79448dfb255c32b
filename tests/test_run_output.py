"""What `medrecipe demo` / `run` / `eval` print and the report shows, read as a user would:
no stale durations, no empty headings, benchmark names whole at 80 columns and in a pipe,
options lettered once, and the run directory where the recipe comment says it is."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import yaml
from rich.console import Console
from typer.testing import CliRunner

from medrecipe.cli import app, packaged_recipe
from medrecipe.evaluate.commands import print_results, trace_table

DURATION = re.compile(r"\(\d+\.\ds\)")


def test_demo_lands_in_the_current_directory_and_reruns_without_stale_seconds(tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = CliRunner().invoke(app, ["demo", "--no-progress"])
    assert first.exit_code == 0, first.output
    # run_dir: runs/demo is relative to the directory medrecipe runs from, as the recipe's
    # comment and the README say, and the absolute location is printed.
    assert (tmp_path / "runs" / "demo" / "manifest.json").exists()
    assert f"run directory: {tmp_path / 'runs' / 'demo'}" in first.output
    comment = packaged_recipe("demo").read_text().split("\nname:")[0]
    assert "run_dir, like every output folder, is relative to the directory" in \
           " ".join(line.lstrip("# ") for line in comment.splitlines())
    assert "resolve against this file's folder" not in comment
    done = [line for line in first.output.splitlines() if ": done," in line]
    assert done and all(DURATION.search(line) for line in done)  # a stage that ran: its time

    again = CliRunner().invoke(app, ["demo", "--no-progress"])
    assert again.exit_code == 0, again.output
    fresh = [line for line in again.output.splitlines() if "up to date" in line]
    assert len(fresh) >= 8  # ingest x5, prepare, generate, grade, select, export
    assert not [line for line in fresh if DURATION.search(line)], fresh

    ok = CliRunner().invoke(app, ["validate", str(packaged_recipe("demo"))])
    assert f"run directory {tmp_path / 'runs' / 'demo'}" in ok.output

    # The ingest table keeps every header and role whole on an 80-column terminal.
    import medrecipe.cli as cli
    from medrecipe.store import Run

    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buf, width=80, force_terminal=True,
                                                color_system=None))
    cli.print_ingest_table(Run(tmp_path / "runs" / "demo", create=False))
    table = buf.getvalue()
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 80
    for word in ("mm_reas", "mm_cls", "quar.", "benchmark", "demo_classification"):
        assert word in table


def test_a_run_that_selects_nothing_says_so_instead_of_an_empty_exports_heading(tmp_path):
    out = CliRunner().invoke(app, [
        "run", str(packaged_recipe("demo")), "--no-progress", "-o", f"run_dir={tmp_path / 'r'}",
        "-o", "select.pass_rate.min_correct=5", "-o", "select.pass_rate.max_correct=5",
        "-o", "export.formats=[trl]"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "exports" not in [line.strip() for line in lines]
    assert any(line.startswith("nothing exported: 0 traces were selected") for line in lines)


def _result():
    def bench(title, cat):
        return {"title": title, "category": cat, "n_items": 1273, "accuracy": 0.6234,
                "accuracy_std": 0.0123, "ci_low": 0.60, "ci_high": 0.65, "majority_vote": 0.64,
                "parse_failure_rate": 0.01, "unterminated_rate": 0.002, "forced_end_rate": 0.0,
                "mean_thinking_tokens": 1234.0, "mean_answer_tokens": 56.0,
                "trace": {"trace_score": {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6},
                          "axes": {a: {m: {"mean": 0.5} for m in ("presence", "correctness",
                                                                  "score")}
                                   for a in ("perception", "knowledge", "rationale")},
                          "answer_accuracy": {"mean": 0.7}, "n_items": 3, "n_items_total": 4,
                          "unparsed_rate": {"presence": 0.0, "correctness": 0.1}}
                if title == "OpenMedReason-Bench" else None}
    names = [("medqa", "MedQA", "text"), ("mmlu", "MMLU-Pro Health", "text"),
             ("mx", "MedXpertQA MM", "mm_reasoning"), ("mmmu", "MMMU-Pro Health", "mm_reasoning"),
             ("omr", "OpenMedReason-Bench", "mm_reasoning"),
             ("bt", "Brain Tumor", "mm_classification")]
    return SimpleNamespace(results={
        "label": "student", "model": "m", "template": {"name": "eval_boxed"},
        "benchmarks": {k: bench(t, c) for k, t, c in names},
        "categories": {"text": 0.6, "mm_reasoning": 0.5, "mm_classification": 0.4}},
        titles=[t for _, t, _ in names] + ["Text-only avg", "Multimodal reasoning avg",
                                           "Multimodal classification avg"])


def _render(terminal: bool) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=80, force_terminal=terminal, color_system=None,
                  highlight=False)
    res = _result()
    print_results(con, res)
    from medrecipe.console import print_table

    print_table(con, trace_table(res))
    return buf.getvalue()


def test_eval_tables_keep_benchmark_names_whole_at_80_columns_and_in_a_pipe():
    res = _result()
    for terminal in (True, False):
        text = _render(terminal)
        assert "…" not in text, text
        for title in res.titles:
            assert re.search(rf"│ {re.escape(title)} +│", text), (terminal, title, text)
        if terminal:  # every line fits the terminal
            assert max(len(line) for line in text.splitlines()) <= 80
        else:  # a pipe gets one row per benchmark with every column
            assert re.search(r"│ MedQA +│ text +│ +1273 │ +62\.3 ± 1\.2 │", text), text


def test_report_letters_options_once(tmp_path):
    out = CliRunner().invoke(app, ["run", str(packaged_recipe("demo")), "--no-progress",
                                   "-o", f"run_dir={tmp_path / 'r'}"])
    assert out.exit_code == 0, out.output
    html = (tmp_path / "r" / "report" / "report.html").read_text()
    # An ordered list would number the options in front of their letters ("1. A. CT").
    assert '<ol class="options">' not in html
    assert re.search(r'<ul class="options"><li class="[a-z]*"><b>A\.</b> ', html)
    assert ".options{list-style:none" in html
    # The report (and the run's recipe.yaml it reads thresholds from) is the packaged demo's.
    assert yaml.safe_load((tmp_path / "r" / "recipe.yaml").read_text())["name"] == "demo"
