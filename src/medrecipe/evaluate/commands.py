"""What `medrecipe eval RECIPE` and `medrecipe eval compare RUN...` do, for the CLI to call."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medrecipe.errors import UserError
from medrecipe.evaluate.compare import CompareResult, compare
from medrecipe.evaluate.config import load_eval_config
from medrecipe.evaluate.pairwise import PairwiseResult
from medrecipe.evaluate.registry import CATEGORY_TITLES
from medrecipe.evaluate.runner import EvalResult, run_eval


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def results_table(result: EvalResult) -> Table:
    """A rich table of one run's per-benchmark metrics and category averages."""
    r = result.results
    t = Table(title=f"{r['label']} ({r['model']}, template {r['template']['name']})")
    for col, just in (("benchmark", "left"), ("category", "left"), ("items", "right"),
                      ("acc % (± std)", "right"), ("95% CI", "right"), ("vote %", "right"),
                      ("parse fail %", "right"), ("unterminated %", "right"),
                      ("forced end %", "right"), ("think tok", "right"), ("answer tok", "right")):
        t.add_column(col, justify=just)
    for name, b in r["benchmarks"].items():
        acc = _pct(b["accuracy"])
        if b.get("accuracy_std"):
            acc += f" ± {100 * b['accuracy_std']:.1f}"
        ci = "–" if b["ci_low"] is None else f"{_pct(b['ci_low'])}–{_pct(b['ci_high'])}"
        t.add_row(b.get("title") or name, b["category"], str(b["n_items"]), acc, ci,
                  _pct(b["majority_vote"]), _pct(b["parse_failure_rate"]),
                  _pct(b["unterminated_rate"]), _pct(b["forced_end_rate"]),
                  "–" if b["mean_thinking_tokens"] is None else f"{b['mean_thinking_tokens']:.0f}",
                  "–" if b["mean_answer_tokens"] is None else f"{b['mean_answer_tokens']:.0f}")
    for cat, acc in r["categories"].items():
        t.add_row(f"[bold]{CATEGORY_TITLES.get(cat, cat)} avg[/bold]", cat, "", _pct(acc),
                  "", "", "", "", "", "", "")
    return t


def trace_table(result: EvalResult) -> Table | None:
    """A rich Table-4 style table of the run's trace-scored benchmarks (None when there are none)."""
    from medrecipe.evaluate.trace import AXES, AXIS_TITLES, METRICS
    from medrecipe.evaluate.trace_report import METRIC_TITLES

    benches = {n: b["trace"] for n, b in result.results["benchmarks"].items() if b.get("trace")}
    if not benches:
        return None
    t = Table(title="reasoning traces (%; mean over items)")
    t.add_column("benchmark")
    for a in AXES:
        for m in METRICS:
            t.add_column(f"{AXIS_TITLES[a][:4]}. {METRIC_TITLES[m]}", justify="right")
    for col in ("trace", "95% CI", "answer acc.", "items", "unparsed %"):
        t.add_column(col, justify="right")
    for name, tr in benches.items():
        ts = tr["trace_score"]
        up = tr["unparsed_rate"]
        t.add_row(result.results["benchmarks"][name].get("title") or name,
                  *[_pct(tr["axes"][a][m]["mean"]) for a in AXES for m in METRICS],
                  _pct(ts["mean"]),
                  "–" if ts["ci_low"] is None else f"{_pct(ts['ci_low'])}–{_pct(ts['ci_high'])}",
                  _pct(tr["answer_accuracy"]["mean"]), f"{tr['n_items']}/{tr['n_items_total']}",
                  f"{_pct(up.get('presence'))} / {_pct(up.get('correctness'))}")
    return t


def _pairwise(runs: list[str], overrides: Sequence[str] | None, out: Path | None,
              judge: Path | None, progress: bool | None, con: Console) -> PairwiseResult:
    from medrecipe.config import TeacherConfig, read_yaml, validate_model
    from medrecipe.evaluate.pairwise import run_pairwise

    if len(runs) != 2:
        raise UserError("`medrecipe eval pairwise` compares exactly two evaluation runs: "
                        "medrecipe eval pairwise RUN_A RUN_B [--judge judge.yaml]")
    if overrides:
        raise UserError("-o/--override applies to `medrecipe eval RECIPE`, not to pairwise")
    judge_cfg = None
    if judge is not None:
        data, _ = read_yaml(judge, [])
        judge_cfg = validate_model(TeacherConfig, data, str(judge), what="judge model")
    res = run_pairwise(runs[0], runs[1], judge_cfg, out, progress=progress)
    con.print(res.markdown.read_text())
    con.print(f"pairs: {res.out_dir / 'pairs.jsonl'}\nsummary: {res.json}")
    return res


def eval_command(targets: Sequence[str], overrides: Sequence[str] | None = None,
                 out: Path | None = None, progress: bool | None = None,
                 console: Console | None = None, judge: Path | None = None,
                 ) -> EvalResult | CompareResult | PairwiseResult:
    """`eval RECIPE [-o k=v]` runs an evaluation; `eval compare RUN...` compares runs;
    `eval pairwise A B [--judge YAML]` judges their traces against each other."""
    con = console or Console(highlight=False)
    targets = list(targets)
    if not targets:
        raise UserError("give an evaluation recipe (medrecipe eval RECIPE) or "
                        "`compare RUN...` (medrecipe eval compare RUN1 RUN2)")
    if targets[0] == "pairwise" and not Path("pairwise").is_file():
        return _pairwise(targets[1:], overrides, out, judge, progress, con)
    if targets[0] == "compare" and not Path("compare").is_file():
        runs = targets[1:]
        if not runs:
            raise UserError("`medrecipe eval compare` needs one or more evaluation run folders")
        if overrides:
            raise UserError("-o/--override applies to `medrecipe eval RECIPE`, not to compare")
        dest = out or Path(runs[0]).parent / "compare"
        res = compare(runs, dest)
        con.print(res.markdown.read_text())
        plots = [p for p in (res.accuracy_plot, res.length_plot, res.trace_plot, res.pass_k_plot)
                 if p is not None]
        con.print(f"table: {res.markdown}\nhtml: {res.html}\n"
                  f"plots: {', '.join(str(p) for p in plots)}")
        return res
    if len(targets) != 1:
        raise UserError(f"`medrecipe eval` takes one recipe, got {len(targets)} arguments; "
                        "to compare runs use `medrecipe eval compare RUN...`")
    recipe = Path(targets[0])
    cfg = load_eval_config(recipe, list(overrides or []))
    res = run_eval(cfg, out if out is not None else cfg.resolved_run_dir(),
                   progress=progress, log=lambda m: con.print(f"[dim]{m}[/dim]"))
    con.print(results_table(res))
    traces = trace_table(res)
    if traces is not None:
        con.print(traces)
    con.print(f"results: {res.results_path}\nsamples: {res.samples_path}")
    if not res.complete:
        con.print("[yellow]some samples failed or were not sent (budget); re-run the same "
                  "command to fill them in from where it stopped[/yellow]")
    return res


__all__ = ["eval_command", "results_table", "trace_table"]
