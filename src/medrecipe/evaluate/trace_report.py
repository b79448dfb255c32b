"""Trace-benchmark tables and figures for `eval compare`: Table 4 and pass@k curves.

Table 4 (OpenMedReason-Bench): one row per model, Pres. / Corr. / Score for each axis,
the trace score and answer accuracy, in percent. A benchmark whose runs were scored on
different checklists (checklist hashes differ) is flagged: their numbers are not
comparable. The pass@k figure plots, per benchmark, mean pass@k against k for each model,
for the benchmarks the OpenMedReason paper plots (OpenMedReason-Bench, MedXpertQA MM,
JAMA) when present, else for every benchmark with more than one sample per item.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medrecipe.evaluate.registry import BENCHMARKS
from medrecipe.evaluate.trace import AXES, AXIS_TITLES, METRICS

METRIC_TITLES = {"presence": "Pres.", "correctness": "Corr.", "score": "Score"}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def trace_data(runs: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Per trace benchmark: each model's Table-4 values, and whether the checklists match."""
    names: list[str] = []
    for r in runs:
        for n, b in r["benchmarks"].items():
            if b.get("trace") and n not in names:
                names.append(n)
    out: dict[str, Any] = {}
    for n in names:
        rows, hashes = [], set()
        for label, r in zip(labels, runs, strict=True):
            t = (r["benchmarks"].get(n) or {}).get("trace")
            if not t:
                continue
            hashes.add(t["checklists"]["hash"])
            rows.append({
                "label": label,
                "axes": {a: {m: t["axes"][a][m] for m in METRICS} for a in AXES},
                "trace_score": t["trace_score"], "answer_accuracy": t["answer_accuracy"],
                "n_items": t["n_items"], "unparsed_rate": t.get("unparsed_rate") or {},
                "checklist_hash": t["checklists"]["hash"], "judge": t["checklists"]["judge"]})
        title = (runs[0]["benchmarks"].get(n) or {}).get("title") or n
        out[n] = {"title": title, "rows": rows, "same_checklists": len(hashes) <= 1}
    return out


def _curve_benchmarks(runs: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in runs:
        for n in r["benchmarks"]:
            if n not in names:
                names.append(n)
    paper = [n for n in names if BENCHMARKS.get(n) and BENCHMARKS[n].pass_k_curve]
    if paper:
        return paper
    return [n for n in names if any(len((r["benchmarks"].get(n) or {}).get("pass_at_k_curve") or {})
                                    > 1 for r in runs)]


def pass_k_data(runs: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Per benchmark to plot: each model's pass@k curve ({k: value})."""
    out: dict[str, Any] = {}
    for n in _curve_benchmarks(runs):
        curves = {}
        for label, r in zip(labels, runs, strict=True):
            c = (r["benchmarks"].get(n) or {}).get("pass_at_k_curve")
            if c:
                curves[label] = {int(k): v for k, v in c.items()}
        if curves:
            title = next((r["benchmarks"][n].get("title") for r in runs if n in r["benchmarks"]), n)
            out[n] = {"title": title or n, "curves": curves}
    return out


def _header() -> list[str]:
    cols = ["Model"]
    for a in AXES:
        cols += [f"{AXIS_TITLES[a]} {METRIC_TITLES[m]}" for m in METRICS]
    return cols + ["Trace score", "Answer acc.", "Items"]


def _values(row: dict[str, Any]) -> list[float | None]:
    vals = [row["axes"][a][m]["mean"] for a in AXES for m in METRICS]
    return vals + [row["trace_score"]["mean"], row["answer_accuracy"]["mean"]]


def render_trace_markdown(tdata: dict[str, Any]) -> str:
    """Table 4 per trace benchmark as markdown (best value per column in bold)."""
    lines: list[str] = []
    for bench in tdata.values():
        rows = bench["rows"]
        lines += [f"## {bench['title']}: reasoning traces (%)", ""]
        if not bench["same_checklists"]:
            lines += ["**Warning: these runs were scored on different checklists (checklist "
                      "hashes differ); their trace numbers are not comparable.**", ""]
        head = _header()
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        table = [_values(r) for r in rows]
        best = [max((v for v in col if v is not None), default=None)
                for col in zip(*table, strict=True)] if table else []
        for r, vals in zip(rows, table, strict=True):
            cells = [r["label"]]
            for v, b in zip(vals, best, strict=True):
                text = _pct(v)
                cells.append(f"**{text}**" if v is not None and v == b and len(rows) > 1 else text)
            cells.append(str(r["n_items"]))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Trace score = mean over axes of Score = Pres. x Corr.; items averaged over "
                      "their samples first. 95% bootstrap CIs over items:", ""]
        for r in rows:
            ts, acc = r["trace_score"], r["answer_accuracy"]
            up = r["unparsed_rate"]
            lines.append(f"- {r['label']}: trace score {_pct(ts['mean'])} "
                         f"[{_pct(ts['ci_low'])}, {_pct(ts['ci_high'])}], answer accuracy "
                         f"{_pct(acc['mean'])} [{_pct(acc['ci_low'])}, {_pct(acc['ci_high'])}]; "
                         f"unparsed probes: presence {_pct(up.get('presence'))}%, correctness "
                         f"{_pct(up.get('correctness'))}%; judge {r['judge']}, checklists "
                         f"{r['checklist_hash']}")
        lines.append("")
    return "\n".join(lines)


def render_trace_html(tdata: dict[str, Any]) -> str:
    """Table 4 per trace benchmark as HTML tables (CIs on hover)."""
    parts: list[str] = []
    for bench in tdata.values():
        parts.append(f"<h2>{html.escape(bench['title'])}: reasoning traces (%)</h2>")
        if not bench["same_checklists"]:
            parts.append("<p><b>Warning: these runs were scored on different checklists; their "
                         "trace numbers are not comparable.</b></p>")
        head1 = ['<th rowspan="2">Model</th>'] + [
            f'<th colspan="3">{AXIS_TITLES[a]}</th>' for a in AXES] + [
            '<th rowspan="2">Trace score</th><th rowspan="2">Answer acc.</th>'
            '<th rowspan="2">Items</th>']
        head2 = [f"<th>{METRIC_TITLES[m]}</th>" for _ in AXES for m in METRICS]
        body = []
        for r in bench["rows"]:
            cells = [f"<td>{html.escape(r['label'])}</td>"]
            stats = [r["axes"][a][m] for a in AXES for m in METRICS]
            stats += [r["trace_score"], r["answer_accuracy"]]
            for s in stats:
                tip = (f' title="95% CI {_pct(s["ci_low"])}–{_pct(s["ci_high"])}, '
                       f'{s["n_items"]} items"') if s.get("ci_low") is not None else ""
                cells.append(f"<td{tip}>{_pct(s['mean'])}</td>")
            cells.append(f"<td>{r['n_items']}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<table><thead><tr>{''.join(head1)}</tr><tr>{''.join(head2)}</tr></thead>"
                     f"<tbody>{''.join(body)}</tbody></table>")
    return "".join(parts)


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _ci_span(stat: dict[str, Any]) -> tuple[float, float]:
    """Error-bar lengths (below, above) in percent; zero where no CI exists."""
    m, lo, hi = stat.get("mean"), stat.get("ci_low"), stat.get("ci_high")
    if m is None or lo is None or hi is None:
        return 0.0, 0.0
    return 100 * max(0.0, m - lo), 100 * max(0.0, hi - m)


def plot_trace_axes(tdata: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars per axis (presence, correctness, score panels) for each model, with CIs."""
    import numpy as np

    benches = [b for b in tdata.values() if b["rows"]]
    if not benches:
        return None
    fig = _figure(12, 3.4 * len(benches))
    for bi, bench in enumerate(benches):
        for mi, metric in enumerate(METRICS):
            ax = fig.add_subplot(len(benches), 3, bi * 3 + mi + 1)
            groups = [AXIS_TITLES[a] for a in AXES] + (["Trace"] if metric == "score" else [])
            rows = bench["rows"]
            width = 0.8 / max(1, len(rows))
            x = np.arange(len(groups))
            for ri, r in enumerate(rows):
                stats = [r["axes"][a][metric] for a in AXES]
                if metric == "score":
                    stats.append(r["trace_score"])
                vals = [100 * (s["mean"] or 0.0) for s in stats]
                spans = [_ci_span(s) for s in stats]
                err = [[lo for lo, _ in spans], [hi for _, hi in spans]]
                ax.bar(x - 0.4 + width * (ri + 0.5), vals, width, yerr=err, capsize=2,
                       label=r["label"])
            ax.set_xticks(x)
            ax.set_xticklabels(groups)
            ax.set_ylim(0, 105)
            ax.set_title(f"{bench['title']}: {METRIC_TITLES[metric].rstrip('.')}", fontsize=9)
            if mi == 0:
                ax.set_ylabel("%")
            if bi == 0 and mi == 2:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_pass_at_k(pdata: dict[str, Any], path: Path) -> Path | None:
    """Mean pass@k against k, one panel per benchmark, one line per model."""
    if not pdata:
        return None
    n = len(pdata)
    fig = _figure(4.2 * n, 3.4)
    for i, bench in enumerate(pdata.values()):
        ax = fig.add_subplot(1, n, i + 1)
        for label, curve in bench["curves"].items():
            ks = sorted(curve)
            ax.plot(ks, [100 * curve[k] for k in ks], marker="o", label=label)
        ax.set_xlabel("k (samples)")
        ax.set_ylabel("pass@k (%)")
        ax.set_ylim(0, 105)
        ax.set_title(bench["title"], fontsize=9)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


__all__ = ["trace_data", "pass_k_data", "render_trace_markdown", "render_trace_html",
           "plot_trace_axes", "plot_pass_at_k"]
