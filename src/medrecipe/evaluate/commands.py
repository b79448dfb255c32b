"""What `medrecipe eval RECIPE` and `medrecipe eval compare RUN...` do, for the CLI to call."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medrecipe.console import print_table
from medrecipe.errors import UserError
from medrecipe.evaluate.compare import CompareResult, compare
from medrecipe.evaluate.config import load_eval_config
from medrecipe.evaluate.pairwise import PairwiseResult
from medrecipe.evaluate.registry import CATEGORIES, CATEGORY_TITLES
from medrecipe.evaluate.runner import EvalResult, run_eval


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _name_column(t: Table, names: Sequence[str]) -> None:
    """The benchmark column: never wrapped or cut (the other columns fold to make room)."""
    t.add_column("benchmark", no_wrap=True, min_width=max([len("benchmark"), *map(len, names)]))


RESULT_COLUMNS = ("category", "items", "acc % (± std)", "95% CI", "vote %", "parse fail %",
                  "unterminated %", "forced end %", "think tok", "answer tok")
# At a terminal too narrow for every column, two tables of these (rows stay grouped by
# category, each group closed by its average row, so the category column can go).
ACCURACY_COLUMNS = ("items", "acc % (± std)", "95% CI", "vote %")
RESPONSE_COLUMNS = ("parse fail %", "unterminated %", "forced end %", "think tok", "answer tok")


def _tok(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def _cells(b: dict) -> dict[str, str]:
    acc = _pct(b["accuracy"])
    if b.get("accuracy_std"):
        acc += f" ± {100 * b['accuracy_std']:.1f}"
    ci = "–" if b["ci_low"] is None else f"{_pct(b['ci_low'])}–{_pct(b['ci_high'])}"
    return {"category": b["category"], "items": str(b["n_items"]), "acc % (± std)": acc,
            "95% CI": ci, "vote %": _pct(b["majority_vote"]),
            "parse fail %": _pct(b["parse_failure_rate"]),
            "unterminated %": _pct(b["unterminated_rate"]),
            "forced end %": _pct(b["forced_end_rate"]),
            "think tok": _tok(b["mean_thinking_tokens"]),
            "answer tok": _tok(b["mean_answer_tokens"])}


def results_table(result: EvalResult, columns: Sequence[str] = RESULT_COLUMNS) -> Table:
    """A rich table of one run's per-benchmark metrics and category averages (`columns`: a
    subset of RESULT_COLUMNS; the benchmark column is always first and never cut)."""
    r = result.results
    t = Table(title=f"{r['label']} ({r['model']}, template {r['template']['name']})")
    order = {c: i for i, c in enumerate(CATEGORIES)}
    benches = sorted(r["benchmarks"].items(),
                     key=lambda kv: order.get(kv[1]["category"], len(order)))  # stable
    groups: dict[str, list[tuple[str, dict]]] = {}
    for name, b in benches:
        groups.setdefault(b["category"], []).append((name, b))
    for cat in r["categories"]:
        groups.setdefault(cat, [])
    names = [b.get("title") or n for n, b in benches]
    names += [f"{CATEGORY_TITLES.get(c, c)} avg" for c in r["categories"]]
    _name_column(t, names)
    for col in columns:
        t.add_column(col, justify="left" if col == "category" else "right", overflow="fold")
    for i, (cat, rows) in enumerate(groups.items()):
        if i:
            t.add_section()
        for name, b in rows:
            cells = _cells(b)
            t.add_row(b.get("title") or name, *[cells[c] for c in columns])
        if cat in r["categories"] and "acc % (± std)" in columns:
            avg = {"category": cat, "acc % (± std)": _pct(r["categories"][cat])}
            t.add_row(f"[bold]{CATEGORY_TITLES.get(cat, cat)} avg[/bold]",
                      *[avg.get(c, "") for c in columns])
    return t


def print_results(con: Console, result: EvalResult) -> None:
    """The results table; split in two at a terminal too narrow for all of it."""
    from rich.measure import Measurement

    full = results_table(result)
    need = Measurement.get(con, con.options.update_width(100_000), full).maximum
    if not con.is_terminal or need <= con.width:
        print_table(con, full)
        return
    print_table(con, results_table(result, ACCURACY_COLUMNS))
    print_table(con, results_table(result, RESPONSE_COLUMNS))


def trace_table(result: EvalResult) -> Table | None:
    """A rich Table-4 style table of the run's trace-scored benchmarks (None when there are none)."""
    from medrecipe.evaluate.trace import AXES, AXIS_TITLES, METRICS
    from medrecipe.evaluate.trace_report import METRIC_TITLES

    benches = {n: b["trace"] for n, b in result.results["benchmarks"].items() if b.get("trace")}
    if not benches:
        return None
    t = Table(title="reasoning traces (%; mean over items)")
    _name_column(t, [result.results["benchmarks"][n].get("title") or n for n in benches])
    for a in AXES:
        for m in METRICS:
            t.add_column(f"{AXIS_TITLES[a][:4]}. {METRIC_TITLES[m]}", justify="right",
                         overflow="fold")
    for col in ("trace", "95% CI", "answer acc.", "items", "unparsed %"):
        t.add_column(col, justify="right", overflow="fold")
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
    print_results(con, res)
    traces = trace_table(res)
    if traces is not None:
        print_table(con, traces)
    con.print(f"results: {res.results_path}\nsamples: {res.samples_path}")
    if not res.complete:
        con.print("[yellow]some samples failed or were not sent (budget); re-run the same "
                  "command to fill them in from where it stopped[/yellow]")
    return res


__all__ = ["eval_command", "print_results", "results_table", "trace_table"]
