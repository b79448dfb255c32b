"""Side-by-side comparison of evaluation runs: a Table-2 style table and two figures.

Rows are models (one per run), columns are benchmarks grouped by category, each group
followed by its category average; cells are accuracy in percent as mean ± standard
deviation over seeds, the best value of each column in bold. A category average of a
model that lacks some benchmark of that category is marked with a dagger, because it is
not comparable with the others. A second table lists the numbers that say how far the
first can be trusted: parse failures, unterminated thinking, forced ends and response
lengths.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrecipe.errors import UserError
from medrecipe.evaluate.registry import BENCHMARKS, CATEGORIES, CATEGORY_TITLES
from medrecipe.evaluate.runner import load_results
from medrecipe.evaluate.trace_report import (
    pass_k_data,
    plot_pass_at_k,
    plot_trace_axes,
    render_trace_html,
    render_trace_markdown,
    trace_data,
)
from medrecipe.store import atomic_write_text


@dataclass
class CompareResult:
    """Files written by `compare`."""

    markdown: Path
    html: Path
    json: Path
    accuracy_plot: Path
    length_plot: Path
    trace_plot: Path | None = None  # Table-4 axes per model (trace benchmarks only)
    pass_k_plot: Path | None = None  # pass@k curves


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _columns(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(category, benchmark names) in category order; registry order, then first appearance."""
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    found: dict[str, dict[str, int]] = {}
    pos = len(order)
    for r in runs:
        for name, b in r["benchmarks"].items():
            cat = b.get("category", "text")
            if name not in found.setdefault(cat, {}):
                found[cat][name] = order.get(name, pos)
                pos += 1
    cats = [c for c in CATEGORIES if c in found] + sorted(c for c in found if c not in CATEGORIES)
    return [(c, sorted(found[c], key=lambda n: found[c][n])) for c in cats]


def _titles(runs: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in runs:
        for name, b in r["benchmarks"].items():
            out.setdefault(name, b.get("title") or name)
    return out


def _labels(runs: list[dict[str, Any]], run_dirs: list[Path]) -> list[str]:
    labels = [str(r.get("label") or r.get("name") or d.name) for r, d in zip(runs, run_dirs, strict=True)]
    # Two runs with one label would be unreadable: suffix the folder name.
    return [f"{lab} ({d.name})" if labels.count(lab) > 1 else lab
            for lab, d in zip(labels, run_dirs, strict=True)]


def comparison_data(run_dirs: list[str | Path]) -> dict[str, Any]:
    """The numbers behind the comparison (what the table and plots show)."""
    if not run_dirs:
        raise UserError("give at least one evaluation run folder to compare")
    dirs = [Path(d) for d in run_dirs]
    runs = [load_results(d) for d in dirs]
    labels = _labels(runs, dirs)
    columns = _columns(runs)
    models = []
    for label, r, d in zip(labels, runs, dirs, strict=True):
        cells: dict[str, Any] = {}
        cat_avg: dict[str, Any] = {}
        for cat, names in columns:
            have = [n for n in names if n in r["benchmarks"]]
            accs = [r["benchmarks"][n]["accuracy"] for n in have
                    if r["benchmarks"][n]["accuracy"] is not None]
            for n in have:
                b = r["benchmarks"][n]
                cells[n] = {k: b.get(k) for k in (
                    "accuracy", "accuracy_std", "ci_low", "ci_high", "majority_vote", "n_items",
                    "parse_failure_rate", "unterminated_rate", "forced_end_rate",
                    "mean_thinking_tokens", "mean_answer_tokens", "mean_completion_tokens",
                    "macro_f1", "balanced_accuracy")}
                cells[n]["n_seeds"] = len(b.get("accuracy_by_seed") or {}) or None
            cat_avg[cat] = {"accuracy": sum(accs) / len(accs) if accs else None,
                            "partial": len(accs) < len(names)}
        models.append({"label": label, "run_dir": str(d), "model": r.get("model"),
                       "template": (r.get("template") or {}).get("name"),
                       "seeds": len((r.get("config") or {}).get("seeds") or []),
                       "benchmarks": cells, "categories": cat_avg})
    return {"columns": [{"category": c, "benchmarks": n} for c, n in columns],
            "titles": _titles(runs), "models": models,
            "trace": trace_data(runs, labels), "pass_at_k": pass_k_data(runs, labels)}


def _best(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _cell(b: dict[str, Any] | None) -> str:
    if not b or b.get("accuracy") is None:
        return "–"
    std = b.get("accuracy_std")
    # A std of exactly 0 over several seeds (identical results) is printed as 0.0; one seed
    # has no spread to show.
    several = b.get("n_seeds") != 1
    return _pct(b["accuracy"]) + (f" ± {100 * std:.1f}" if std is not None and several else "")


def _complete_accuracy(c: dict[str, Any]) -> float | None:
    """A category average that may be bolded: partial (†) averages never compete."""
    return None if c.get("partial") else c.get("accuracy")


def render_markdown(data: dict[str, Any]) -> str:
    """Markdown tables (accuracy by benchmark and category; trust and length figures)."""
    titles = data["titles"]
    header = ["Model"]
    keys: list[tuple[str, str]] = []  # ("bench" | "cat", name)
    for col in data["columns"]:
        for n in col["benchmarks"]:
            header.append(titles.get(n, n))
            keys.append(("bench", n))
        header.append(f"{CATEGORY_TITLES.get(col['category'], col['category'])} avg")
        keys.append(("cat", col["category"]))
    best = {}
    for kind, name in keys:
        if kind == "bench":
            best[(kind, name)] = _best([(m["benchmarks"].get(name) or {}).get("accuracy")
                                        for m in data["models"]])
        else:
            best[(kind, name)] = _best([_complete_accuracy(m["categories"][name]) for m in data["models"]])
    lines = ["## Accuracy (%) — mean ± std over seeds", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    partial = False
    for m in data["models"]:
        row = [m["label"]]
        for kind, name in keys:
            if kind == "bench":
                b = m["benchmarks"].get(name)
                text = _cell(b)
                acc = b.get("accuracy") if b else None
            else:
                c = m["categories"][name]
                text = _pct(c["accuracy"]) + (" †" if c["partial"] and c["accuracy"] is not None else "")
                acc = _complete_accuracy(c)
                partial |= bool(c["partial"])
            if acc is not None and acc == best[(kind, name)] and len(data["models"]) > 1:
                text = f"**{text}**"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    if partial:
        lines += ["", "† average over fewer benchmarks than the column has (some were not run "
                      "or had no items); not comparable with the other rows."]
    lines += ["", "## Parse failures, unterminated thinking, forced ends and response length", "",
              "| Model | Benchmark | Items | Majority vote (%) | Parse failures (%) | "
              "Unterminated (%) | Forced end (%) | Thinking tokens | Answer tokens |",
              "|---|---|---|---|---|---|---|---|---|"]
    for m in data["models"]:
        for col in data["columns"]:
            for n in col["benchmarks"]:
                b = m["benchmarks"].get(n)
                if not b:
                    continue
                lines.append("| " + " | ".join([
                    m["label"], titles.get(n, n), str(b.get("n_items") or 0),
                    _pct(b.get("majority_vote")), _pct(b.get("parse_failure_rate")),
                    _pct(b.get("unterminated_rate")), _pct(b.get("forced_end_rate")),
                    _num(b.get("mean_thinking_tokens")), _num(b.get("mean_answer_tokens"))]) + " |")
    return "\n".join(lines) + "\n"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def render_html(data: dict[str, Any], plots: tuple[str, str],
                extra_plots: dict[str, str] | None = None) -> str:
    """A standalone HTML page with the accuracy table and both figures."""
    titles = data["titles"]
    head1 = ['<th rowspan="2">Model</th>']
    head2 = []
    for col in data["columns"]:
        cat = col["category"]
        head1.append(f'<th colspan="{len(col["benchmarks"]) + 1}">'
                     f'{html.escape(CATEGORY_TITLES.get(cat, cat))}</th>')
        head2 += [f"<th>{html.escape(titles.get(n, n))}</th>" for n in col["benchmarks"]]
        head2.append('<th class="avg">Avg</th>')
    body = []
    for m in data["models"]:
        cells = [f"<td>{html.escape(m['label'])}</td>"]
        for col in data["columns"]:
            for n in col["benchmarks"]:
                b = m["benchmarks"].get(n)
                acc = b.get("accuracy") if b else None
                best = _best([(o["benchmarks"].get(n) or {}).get("accuracy") for o in data["models"]])
                text = html.escape(_cell(b))
                title = ""
                if b and b.get("ci_low") is not None:
                    title = f' title="95% CI {_pct(b["ci_low"])}–{_pct(b["ci_high"])}"'
                strong = acc is not None and acc == best and len(data["models"]) > 1
                cells.append(f"<td{title}>{'<b>' + text + '</b>' if strong else text}</td>")
            c = m["categories"][col["category"]]
            best = _best([_complete_accuracy(o["categories"][col["category"]]) for o in data["models"]])
            text = _pct(c["accuracy"]) + (" †" if c["partial"] and c["accuracy"] is not None else "")
            acc = _complete_accuracy(c)
            strong = acc is not None and acc == best and len(data["models"]) > 1
            cells.append(f'<td class="avg">{"<b>" + text + "</b>" if strong else text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "th,td{border:1px solid #bbb;padding:4px 8px;text-align:center}"
             "td:first-child{text-align:left}.avg{background:#f3f3f3}img{max-width:100%}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>medrecipe eval comparison</title>"
        f"<style>{style}</style></head><body><h1>Evaluation comparison</h1>"
        "<p>Accuracy in percent, mean ± standard deviation over seeds; hover a cell for its "
        "bootstrap 95% confidence interval. † average over fewer benchmarks than the column has.</p>"
        f"<table><thead><tr>{''.join(head1)}</tr><tr>{''.join(head2)}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        f"<h2>Accuracy by category</h2><img src='{html.escape(plots[0])}' alt='accuracy by category'>"
        f"<h2>Mean response length per benchmark</h2><img src='{html.escape(plots[1])}' "
        "alt='mean response length per benchmark'>"
        + render_trace_html(data.get("trace") or {})
        + "".join(f"<h2>{html.escape(title)}</h2><img src='{html.escape(src)}' "
                  f"alt='{html.escape(title)}'>" for title, src in (extra_plots or {}).items())
        + "</body></html>\n"
    )


def _bars(ax: Any, groups: list[str], series: list[tuple[str, list[float]]],
          stacked_under: list[list[float]] | None = None) -> None:
    import numpy as np

    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series):
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, values, width, label=label)
        if stacked_under is not None:
            # thinking share drawn hatched inside the same bar
            ax.bar(pos, stacked_under[i], width, color=bars.patches[0].get_facecolor()
                   if bars.patches else None, hatch="//", edgecolor="white", linewidth=0)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.legend(fontsize=8)


def plot_accuracy_by_category(data: dict[str, Any], path: Path) -> Path:
    """Grouped bar chart: category average accuracy per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [c["category"] for c in data["columns"]]
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(cats) + 2), 4))
    series = [(m["label"], [100 * (m["categories"][c]["accuracy"] or 0.0) for c in cats])
              for m in data["models"]]
    _bars(ax, [CATEGORY_TITLES.get(c, c) for c in cats], series)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy by category")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_response_length(data: dict[str, Any], path: Path) -> Path:
    """Grouped bar chart: mean response tokens per benchmark per model (thinking part hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for c in data["columns"] for n in c["benchmarks"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) * max(1, len(data["models"])) / 2 + 3), 4))
    series, thinking = [], []
    for m in data["models"]:
        tot, th = [], []
        for n in names:
            b = m["benchmarks"].get(n) or {}
            t = b.get("mean_thinking_tokens") or 0.0
            a = b.get("mean_answer_tokens") or 0.0
            tot.append(t + a)
            th.append(t)
        series.append((m["label"], tot))
        thinking.append(th)
    _bars(ax, [data["titles"].get(n, n) for n in names], series, thinking)
    ax.set_ylabel("mean response tokens (hatched: thinking)")
    ax.set_title("Response length per benchmark")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(run_dirs: list[str | Path], out_dir: str | Path) -> CompareResult:
    """Compare evaluation runs: writes comparison.md/.html/.json and two PNG figures to out_dir."""
    data = comparison_data(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc_png = plot_accuracy_by_category(data, out / "accuracy_by_category.png")
    len_png = plot_response_length(data, out / "response_length.png")
    trace_png = plot_trace_axes(data["trace"], out / "trace_axes.png")
    pass_png = plot_pass_at_k(data["pass_at_k"], out / "pass_at_k.png")
    extra = {title: p.name for title, p in (("Reasoning traces by axis", trace_png),
                                            ("pass@k curves", pass_png)) if p is not None}
    md = out / "comparison.md"
    trace_md = render_trace_markdown(data["trace"])
    atomic_write_text(md, "# Evaluation comparison\n\n" + render_markdown(data)
                      + (f"\n{trace_md}" if trace_md else "")
                      + f"\n![accuracy by category]({acc_png.name})\n"
                        f"\n![mean response length per benchmark]({len_png.name})\n"
                      + "".join(f"\n![{t}]({n})\n" for t, n in extra.items()))
    page = out / "comparison.html"
    atomic_write_text(page, render_html(data, (acc_png.name, len_png.name), extra))
    js = out / "comparison.json"
    atomic_write_text(js, json.dumps(data, indent=2))
    return CompareResult(markdown=md, html=page, json=js, accuracy_plot=acc_png, length_plot=len_png,
                         trace_plot=trace_png, pass_k_plot=pass_png)


__all__ = ["CompareResult", "compare", "comparison_data", "render_markdown", "render_html",
           "plot_accuracy_by_category", "plot_response_length"]
