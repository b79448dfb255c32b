"""PNG plots of a run (matplotlib's Agg canvas; pyplot's global state is never touched)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import cbook
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medrecipe.report.stats import RunScan

_MPL = tuple(int(x) for x in re.findall(r"\d+", matplotlib.__version__)[:2])
COLORS = ["#3b6ea5", "#d1495b", "#66a182", "#edae49", "#8d6cab", "#00798c", "#a0a0a0"]
MAX_BARS = 30  # categories beyond this are folded into "(other)"
MAX_FLIERS = 2_000  # outlier points drawn per box (evenly over their sorted values beyond)


def _figure(width: float = 7.0, height: float = 3.6) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _fold(counts: dict[str, float]) -> dict[str, float]:
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    if len(items) <= MAX_BARS:
        return dict(items)
    head = dict(items[: MAX_BARS - 1])
    head["(other)"] = sum(v for _, v in items[MAX_BARS - 1:])
    return head


def bar(counts: dict[str, float], path: Path, title: str, xlabel: str = "",
        percent: bool = False) -> Path | None:
    """Horizontal bar chart of a {label: value} mapping."""
    counts = {k: v for k, v in counts.items() if v is not None}
    if not counts:
        return None
    counts = _fold(counts)
    labels = list(counts)[::-1]
    values = [counts[k] * (100 if percent else 1) for k in labels]
    fig = _figure(7.0, max(2.0, 0.32 * len(labels) + 1.2))
    ax = fig.add_subplot()
    ax.barh(labels, values, color=COLORS[0])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.1f}%" if percent else f" {v:g}", va="center", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel or ("%" if percent else "count"))
    if percent:
        ax.set_xlim(0, max(100.0, max(values) * 1.1))
    else:
        ax.set_xlim(0, max(values) * 1.15 or 1)
    return _save(fig, path)


def grouped_rates(groups: dict[str, dict[str, float | None]], series: list[str], path: Path,
                  title: str) -> Path | None:
    """Grouped bars of rates (0..1) per group, one bar per series."""
    if not groups:
        return None
    labels = list(groups)
    fig = _figure(7.0, max(2.4, 0.45 * len(labels) * len(series) / 2 + 1.4))
    ax = fig.add_subplot()
    height = 0.8 / len(series)
    for j, name in enumerate(series):
        ys = [i + j * height for i in range(len(labels))]
        vals = [100 * (groups[g].get(name) or 0.0) for g in labels]
        ax.barh(ys, vals, height=height, color=COLORS[j % len(COLORS)],
                label=name.removesuffix("_rate"))
    ax.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("% of responses")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _thin(values: np.ndarray, n: int = MAX_FLIERS) -> np.ndarray:
    """At most n of the values, evenly spaced over their sorted order (extremes kept)."""
    if len(values) <= n:
        return values
    ordered = np.sort(values)
    return ordered[np.linspace(0, len(ordered) - 1, n).round().astype(np.int64)]


def distributions(values: dict[str, Sequence[float] | np.ndarray], path: Path, title: str,
                  xlabel: str) -> Path | None:
    """Box plots of one numeric distribution per group.

    Boxes and whiskers come from every value; a box with more than MAX_FLIERS outliers
    draws an even subset of them, so the picture costs the same at any run size.
    """
    values = {k: v for k, v in values.items() if len(v)}
    if not values:
        return None
    labels = sorted(values)[:MAX_BARS]
    fig = _figure(7.0, max(2.2, 0.4 * len(labels) + 1.2))
    ax = fig.add_subplot()
    # matplotlib >= 3.10 names the direction `orientation`; older versions take `vert`.
    direction = ({"orientation": "horizontal"} if _MPL >= (3, 10) else {"vert": False})
    boxes = cbook.boxplot_stats([np.asarray(values[k]) for k in labels])
    for box in boxes:
        box["fliers"] = _thin(box["fliers"])
    ax.bxp(boxes, showfliers=True, flierprops={"markersize": 2}, **direction)
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path)


def histogram(counts: dict[int, int], path: Path, title: str, xlabel: str) -> Path | None:
    """Bars of an integer histogram {value: count}."""
    if not counts:
        return None
    xs = sorted(counts)
    fig = _figure(7.0, 3.0)
    ax = fig.add_subplot()
    ax.bar([str(x) for x in xs], [counts[x] for x in xs], color=COLORS[2])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("questions")
    ax.set_title(title)
    return _save(fig, path)


def make_plots(scan: RunScan, out_dir: Path) -> dict[str, Path]:
    """Write every plot the available tables allow; returns {name: png path}."""
    stats = scan.stats
    out: dict[str, Path | None] = {}
    items = stats.get("items")
    if items:
        for key, label in (("source", "source"), ("task", "task"), ("modality", "modality"),
                           ("anatomy", "anatomy")):
            out[f"items_by_{key}"] = bar(items[f"by_{key}"], out_dir / f"items_by_{key}.png",
                                         f"Items per {label}", "items")
    sel = stats.get("selected")
    if sel:
        out["acceptance_by_source"] = bar(sel["acceptance_by_source"],
                                          out_dir / "acceptance_by_source.png",
                                          "Acceptance rate per source (accepted / generated)",
                                          percent=True)
        out["acceptance_by_teacher"] = bar(sel["acceptance_by_teacher"],
                                           out_dir / "acceptance_by_teacher.png",
                                           "Acceptance rate per teacher (accepted / generated)",
                                           percent=True)
        out["traces_per_question"] = histogram(
            {int(k): v for k, v in sel["traces_per_question"].items()},
            out_dir / "traces_per_question.png", "Accepted traces per question",
            "accepted traces")
        out["trace_length"] = distributions(scan.target_chars, out_dir / "trace_length.png",
                                            "Accepted trace length per source", "characters")
    if stats.get("generations") is not None:
        out["response_tokens"] = distributions(scan.token_lengths,
                                               out_dir / "response_tokens.png",
                                               "Response tokens per source", "completion tokens")
    ver = stats.get("verdicts")
    if ver:
        series = ["unparsed_rate", "unterminated_rate"]
        out["unparsed_by_source"] = grouped_rates(
            {k: {s: v.get(s) for s in series} for k, v in ver["by_source"].items()}, series,
            out_dir / "unparsed_by_source.png", "Unparsed and unterminated responses per source")
        out["unparsed_by_teacher"] = grouped_rates(
            {k: {s: v.get(s) for s in series} for k, v in ver["by_teacher"].items()}, series,
            out_dir / "unparsed_by_teacher.png", "Unparsed and unterminated responses per teacher")
    q = stats.get("quarantine")
    if q and q["total"]:
        out["quarantine_reasons"] = bar(Counter(q["by_reason"]), out_dir / "quarantine_reasons.png",
                                        "Quarantined rows per stage and reason", "rows")
    return {k: v for k, v in out.items() if v is not None}


def threshold_histograms(panels: list[tuple[str, list[float], float | None, bool]], path: Path,
                         title: str) -> Path | None:
    """One histogram per measure, its threshold drawn as a vertical line.

    `panels` holds (measure, values, threshold or None, minimum) where `minimum` says that
    values below the line fail (else values above it fail). NaN values are left out.
    """
    import math

    panels = [(n, [v for v in vals if v is not None and not math.isnan(v)], t, m)
              for n, vals, t, m in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig = _figure(8.0, 2.3 * rows + 0.6)
    for k, (name, vals, thr, minimum) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        lo, hi = min(vals), max(vals)
        log = lo > 0 and hi / lo > 100  # wide positive ranges (sharpness) read better in log
        if log:
            import numpy as np

            bins = np.logspace(math.log10(lo), math.log10(hi) + 1e-9, 30)
            ax.set_xscale("log")
        else:
            bins = 30
        ax.hist(vals, bins=bins, color=COLORS[0])
        if thr is not None:
            ax.axvline(thr, color=COLORS[1], linewidth=1.5)
            ax.text(thr, ax.get_ylim()[1] * 0.92, (" keep >= " if minimum else " keep <= ")
                    + f"{thr:g}", color=COLORS[1], fontsize=7, va="top")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    # A fixed grid spacing: tight_layout over many small axes costs more than the drawing.
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.05, top=1 - 0.55 / fig.get_figheight(),
                        hspace=0.55, wspace=0.22)
    return _save(fig, path, tight=False)


def funnel_chart(stages: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """What each stage kept (bars) and removed (labels), in stage order."""
    if not stages:
        return None
    labels = [f"{s['stage']} ({s['unit']}s)" for s in stages][::-1]
    kept = [s["out"] for s in stages][::-1]
    removed = [sum(s["removed"].values()) for s in stages][::-1]
    fig = _figure(7.0, max(2.2, 0.36 * len(labels) + 1.2))
    ax = fig.add_subplot()
    ax.barh(labels, kept, color=COLORS[2], label="kept")
    ax.barh(labels, removed, left=kept, color=COLORS[1], label="removed")
    for y, (k, r) in enumerate(zip(kept, removed, strict=True)):
        ax.text(k + r, y, f" {k} kept, {r} removed", va="center", fontsize=8)
    ax.set_xlim(0, max(k + r for k, r in zip(kept, removed, strict=True)) * 1.45 or 1)
    ax.set_xlabel("rows")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
