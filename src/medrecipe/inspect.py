"""Summaries of a run directory for `medrecipe inspect` and the ingest table."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rich.table import Table

from medrecipe.console import console
from medrecipe.errors import UserError
from medrecipe.report.scan import batches, count_columns, dataset_files, head_rows
from medrecipe.schema import TASKS
from medrecipe.store import Run


def open_run(run_dir: str | Path) -> Run:
    """An existing run directory; UserError when it is not one."""
    p = Path(run_dir)
    if not (p / "manifest.json").exists():
        raise UserError(f"{p} is not a medrecipe run directory (no manifest.json); "
                        "pass the run_dir of a recipe that has been run")
    return Run(p, create=False)


def ingest_counts(run: Run) -> tuple[dict[str, dict], list[str]]:
    """{source: {role, tasks: {task: n}, total, quarantined}} and the tasks present."""
    out: dict[str, dict] = {}
    seen_tasks: set[str] = set()
    for name, info in run.manifest.get("sources", {}).items():
        rec = run.stage(f"ingest.{name}")
        tasks: Counter = Counter()
        if run.has(f"ingest/{name}"):
            tasks = count_columns(dataset_files(run.path(f"ingest/{name}")), ["task"])["task"]
        seen_tasks.update(tasks)
        out[name] = {"role": info.get("role", "train"), "tasks": dict(tasks),
                     "total": sum(tasks.values()),
                     "quarantined": rec.rows.get("quarantined", 0) if rec else 0}
    return out, [t for t in TASKS if t in seen_tasks]


def _counter_table(title: str, counter: Counter, key: str) -> Table:
    t = Table(title=title)
    t.add_column(key)
    t.add_column("n", justify="right")
    for k, v in counter.most_common():
        t.add_row(str(k), str(v))
    return t


def curate_funnel(run: Run) -> dict | None:
    """The curation funnel of a run (None when the run is not a curation run)."""
    if run.manifest.get("kind") != "curate":
        return None
    from medrecipe.curate.stage import funnel

    return funnel(run, list(run.manifest.get("sources", {})))


def print_funnel(run: Run) -> None:
    """The curation funnel: per stage what came in, what was removed and why, what went on."""
    f = curate_funnel(run)
    if f is None:
        return
    t = Table(title=f"curation funnel: {f['records_in']} records in, {f['items_out']} items out")
    for col in ("stage", "unit", "in", "removed (reason: n)", "waiting", "out"):
        t.add_column(col, overflow="fold")
    for st in f["stages"]:
        removed = ", ".join(f"{k}: {v}" for k, v in st["removed"].items()) or "-"
        t.add_row(st["stage"], st["unit"], str(st["in"]), removed, str(st.get("pending", 0)),
                  str(st["out"]))
    console.print(t)
    for key in ("by_family", "by_category"):
        if f[key]:
            console.print(_counter_table(f"items {key.replace('_', ' ')}", Counter(f[key]),
                                         key.removeprefix("by_")))
    print_trace_funnel(run)


def print_trace_funnel(run: Run) -> None:
    """Curation part 2: draft / refine / verify, splits by article, the mix, the GRPO set."""
    from medrecipe.curate.compose import compose_funnel
    from medrecipe.curate.trace_stage import trace_funnel

    f = trace_funnel(run)
    if f is None:
        return
    t = Table(title=f"trace funnel: {f['items_in']} items in, {f['traces_out']} traces kept")
    for col in ("stage", "in", "removed (reason: n)", "waiting", "out"):
        t.add_column(col, overflow="fold")
    for st in f["stages"]:
        removed = ", ".join(f"{k}: {v}" for k, v in st["removed"].items()) or "-"
        t.add_row(st["stage"], str(st["in"]), removed, str(st.get("pending", 0)), str(st["out"]))
    console.print(t)
    if f["failed_by_criterion"]:
        console.print("verify, traces failing each criterion: " + ", ".join(
            f"{k} {v}" for k, v in f["failed_by_criterion"].items()))
    c = compose_funnel(run)
    if c is None:
        return
    s = Table(title="splits by article")
    for col in ("split", "articles", "items", "target"):
        s.add_column(col)
    for name, v in c["splits"].items():
        s.add_row(name, str(v.get("articles", 0)), str(v.get("items", 0)),
                  str(c["targets"].get(name, "rest")))
    console.print(s)
    if c["mix"]:
        m = Table(title=f"SFT mix: {c['mix']['questions_out']} questions "
                        f"({c['mix']['curated_questions']} curated)")
        for col in ("source", "questions", "train rows", "val rows"):
            m.add_column(col)
        for src, v in (c["mix"]["by_source"] or {}).items():
            m.add_row(src, str(v.get("questions", 0)), str(v.get("train", 0)), str(v.get("val", 0)))
        console.print(m)
    if c["grpo"]:
        console.print(f"GRPO set: {c['grpo']['questions']} questions (" + ", ".join(
            f"{k} {v['taken']} of {v['available']}" for k, v in c["grpo"]["by_source"].items())
            + ")")


def print_generation_checks(run: Run) -> None:
    """Length-cut responses and identical samples per teacher, and the warnings they give."""
    from rich.markup import escape

    from medrecipe.report.stats import generation_checks

    c = generation_checks(run.root, run.manifest)
    if c is None:
        return

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    t = Table(title="response checks (generate)")
    for col in ("teacher", "responses", "cut at max_tokens", "questions checked",
                "all samples identical"):
        t.add_column(col, justify="left" if col == "teacher" else "right", overflow="fold")
    for name, v in c["by_teacher"].items():
        t.add_row(name, str(v["responses"]), f"{v['length_cut']} ({pct(v['length_cut_rate'])})",
                  str(v["sampled_items"]),
                  f"{v['identical_items']} ({pct(v['identical_rate'])})")
    console.print(t)
    for line in c["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}")


def inspect_run(run_dir: str | Path, samples: int = 3) -> None:
    """Print counts, stage status, quarantine reasons and sample rows of a run."""
    run = open_run(run_dir)
    m = run.manifest
    console.print(f"[bold]{run.root}[/bold]  recipe {m.get('recipe_name')!r} "
                  f"(hash {m.get('recipe_hash')}), medrecipe {m.get('medrecipe_version')}")
    st = Table(title="stages")
    for col in ("stage", "status", "rows", "seconds"):
        st.add_column(col)
    for name, rec in m.get("stages", {}).items():
        rows = ", ".join(f"{k}={v}" for k, v in rec.get("rows", {}).items())
        st.add_row(name, "done" if rec.get("complete", True) else "[yellow]partial[/yellow]",
                   rows, f"{rec.get('seconds', 0):.2f}")
    console.print(st)
    print_generation_checks(run)
    print_funnel(run)

    tables = [f"ingest/{n}" for n in m.get("sources", {}) if run.has(f"ingest/{n}")]
    main = "items" if run.has("items") else None
    by: dict[str, Counter] = {k: Counter() for k in ("source", "split", "task", "modality", "anatomy")}
    for name in ([main] if main else tables):
        if not run.has(name):
            continue
        for k, counts in count_columns(dataset_files(run.path(name)), list(by)).items():
            by[k].update({"(none)" if v is None else v: n for v, n in counts.items()})
    label = "prepared items" if main else "ingested items"
    for k, counter in by.items():
        if counter:
            console.print(_counter_table(f"{label} by {k}", counter, k))

    qdir = run.root / "quarantine"
    pairs: Counter = Counter()
    for t in batches(sorted(qdir.glob("*.parquet")) if qdir.exists() else [],
                     ["source", "stage", "reason"]):
        pairs.update(zip(*(t.column(c).to_pylist() for c in ("source", "stage", "reason")),
                         strict=True))
    if pairs:
        qt = Table(title=f"quarantine ({sum(pairs.values())} rows)")
        for col in ("source", "stage", "reason", "n"):
            qt.add_column(col)
        for (src, stage, reason), n in pairs.most_common():
            qt.add_row(src, stage, reason, str(n))
        console.print(qt)
    prep = run.stage("prepare")
    if prep and prep.extra.get("removed"):
        console.print("[bold]prepare: removed per reason per source[/bold]")
        console.print_json(json.dumps(prep.extra["removed"]))

    for name in ([main] if main else tables)[:1]:
        if name and run.has(name) and samples > 0:
            for row in head_rows(dataset_files(run.path(name)), samples,
                                 ["id", "task", "question", "options", "answer", "images"]):
                opts = " | ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(row["options"]))
                console.print(f"[cyan]{row['id']}[/cyan] [{row['task']}] {row['question'][:200]}"
                              + (f"\n    {opts[:200]}" if opts else "")
                              + f"\n    answer: {row['answer']}  images: {len(row['images'])}")
    if run.has("items"):
        # `by` was counted over the prepared items above (main is "items" whenever it exists).
        console.print(f"{run.num_rows('items')} prepared items; {by['task'].get('text', 0)} "
                      "text-only")
