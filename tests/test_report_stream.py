"""The report streams its tables (issue 15): the same numbers, plots and example cards as the
whole-table report it replaced, on single-file and sharded runs, without reading whole tables
or any response text but the few it shows."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import report_reference as ref
from medrecipe import pipeline
from medrecipe.cli import _load, packaged_recipe
from medrecipe.config import ReportConfig
from medrecipe.console import console
from medrecipe.inspect import inspect_run
from medrecipe.report import scan_run, summary_stats, write_report
from medrecipe.report.html import accepted_examples, default_resolver, rejected_examples
from medrecipe.report.plots import MAX_FLIERS, _thin, make_plots
from medrecipe.report.sample import TopK, order_key, round_robin
from medrecipe.shards import ShardWriter, shard_of
from medrecipe.store import Run
from test_report import build_run

TABLES = {"items": "id", "generations": "item_id", "verdicts": "item_id",
          "selected_train": "item_id", "selected_val": "item_id"}


def reshard(src, dst, n, only=None):
    """A copy of a run directory with its tables as n hash-partitioned shards."""
    shutil.copytree(src, dst)
    for name, key in TABLES.items():
        if only is not None and name not in only:
            continue
        path = dst / f"{name}.parquet"
        if not path.exists():
            continue
        table = pq.read_table(path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        w = ShardWriter(path, n, table.schema, key=key, rows_per_group=2)
        w.write(table)
        w.commit()
    return Run(dst, create=False)


def older_files(src, dst):
    """A copy of a single-file run whose tables lack later columns (one stored as null type)."""
    shutil.copytree(src, dst)

    def rewrite(name, fn):
        pq.write_table(fn(pq.read_table(dst / f"{name}.parquet")), dst / f"{name}.parquet")

    rewrite("items", lambda t: t.drop_columns(["modality", "anatomy"]))
    rewrite("verdicts", lambda t: t.drop_columns(["invalid", "teacher"]))
    rewrite("generations", lambda t: t.set_column(
        t.schema.get_field_index("finish_reason"), "finish_reason", pa.nulls(t.num_rows)))
    return Run(dst, create=False)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The packaged demo recipe run in 3 shards (report off: each test writes its own)."""
    root = tmp_path_factory.mktemp("demo") / "run"
    r, raw = _load(packaged_recipe("demo"), [f"run_dir={root}", "shards=3",
                                              "report.enabled=false"], preflight=True)
    ctx = pipeline.open_context(r, raw, progress=False, echo=False)
    try:
        assert pipeline.run_recipe(ctx).complete
    finally:
        ctx.close()
    return Run(root, create=False)


def _runs(tmp_path, demo_run):
    single = build_run(tmp_path / "single")
    yield "single files", single
    yield "sharded", reshard(single.root, tmp_path / "sharded", 2)
    yield "mixed layouts", reshard(single.root, tmp_path / "mixed", 3, only={"items", "verdicts"})
    yield "older files", older_files(single.root, tmp_path / "older")
    yield "no selection", build_run(tmp_path / "nosel", with_selection=False)
    yield "demo, 3 shards", demo_run
    yield "demo resharded to 5", reshard(demo_run.root, tmp_path / "demo5", 5)


def test_streamed_stats_plots_and_examples_equal_the_whole_table_report(tmp_path, demo_run):
    for label, run in _runs(tmp_path, demo_run):
        tables = ref.load_run_tables(run)
        old = ref.compute_stats(tables)
        scan = scan_run(run, examples=4)
        assert scan.stats == old, label
        assert list(scan.stats["items"]["by_source"]) == list(old["items"]["by_source"]), label
        # every plot, byte for byte
        a, b = tmp_path / label / "new", tmp_path / label / "old"
        new_plots, old_plots = make_plots(scan, a), ref.make_plots(tables, old, b)
        assert set(new_plots) == set(old_plots) and new_plots, label
        for name in new_plots:
            assert new_plots[name].read_bytes() == old_plots[name].read_bytes(), (label, name)
        # example cards: the same traces, texts and images, in the same order
        resolve = default_resolver(run)
        for n in (4, 1):
            cfg = ReportConfig(examples=n)
            scan_n = scan if n == 4 else scan_run(run, examples=n)
            assert (accepted_examples(scan_n, resolve, cfg)
                    == ref.accepted_examples(tables, resolve, cfg)), (label, n)
            assert (rejected_examples(scan_n, resolve, cfg)
                    == ref.rejected_examples(tables, resolve, cfg)), (label, n)
    # the runs above cover what the comparison is about
    s = summary_stats(tmp_path / "sharded")
    assert s["verdicts"]["failed"] and s["verdicts"]["unterminated"] and s["verdicts"]["unparsed"]
    assert s["selected"]["traces_per_question"] == {"1": 2, "2": 1}
    assert summary_stats(demo_run.root)["generations"]["total"] > 50


def test_report_reads_no_whole_table_and_only_the_shown_texts(demo_run, tmp_path, monkeypatch):
    run = reshard(demo_run.root, tmp_path / "run", 4)
    reads: list[tuple[str, tuple[str, ...] | None]] = []
    real_iter = pq.ParquetFile.iter_batches

    def iter_batches(self, *args, columns=None, **kw):
        reads.append((self._medrecipe_path, tuple(columns) if columns else None))
        return real_iter(self, *args, columns=columns, **kw)

    real_init = pq.ParquetFile.__init__

    def init(self, source, *args, **kw):
        real_init(self, source, *args, **kw)
        self._medrecipe_path = str(source)

    def no_whole_tables(*args, **kw):
        raise AssertionError(f"read_table{args[:1]}")

    monkeypatch.setattr(pq.ParquetFile, "__init__", init)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    monkeypatch.setattr(pq, "read_table", no_whole_tables)
    cfg = ReportConfig(examples=3)
    html = write_report(run, config=cfg).read_text()
    assert "Accepted traces" in html and html.count('class="example bad"') == 3

    scan = scan_run(run, examples=3)
    shown = round_robin(scan.rejected, 3)
    text_reads = {p for p, cols in reads if "generations.parquet" in p and cols and "text" in cols}
    wanted = {f"shard-{shard_of(r['item_id'], 4):05d}-of-00004.parquet" for r in shown}
    assert {p.rsplit("/", 1)[-1] for p in text_reads} == wanted  # only the shown shards
    assert all(cols is not None for p, cols in reads if "generations.parquet" in p)
    assert all(cols is not None for p, cols in reads if "verdicts.parquet" in p)


def test_sample_is_the_hash_ordered_head_whatever_the_batches():
    rng = random.Random(7)
    rows = [(rng.choice("abcd"), f"key{i}") for i in range(500)]
    expect = {}
    for g, k in sorted(rows, key=lambda r: order_key(r[1])):
        expect.setdefault(g, [])
        if len(expect[g]) < 5:
            expect[g].append(k)
    for _ in range(5):
        sample, i = TopK(5), 0
        while i < len(rows):
            j = i + rng.randint(1, 60)
            part = rows[i:j]
            sample.offer([g for g, _ in part], [k for _, k in part],
                         lambda x, part=part: part[x][1])
            i = j
        assert sample.groups() == expect
    assert TopK(0).groups() == {}


def test_box_plot_outliers_are_thinned_keeping_the_extremes():
    values = np.arange(10 * MAX_FLIERS, dtype=np.int32)[::-1].copy()
    thin = _thin(values)
    assert len(thin) == MAX_FLIERS and thin[0] == 0 and thin[-1] == values.max()
    assert np.all(np.diff(thin) > 0) and set(thin.tolist()) <= set(values.tolist())
    small = np.array([5, 1, 3])
    assert _thin(small) is small


def test_inspect_counts_sharded_runs_without_whole_tables(demo_run, monkeypatch):
    expect = pq.read_table(demo_run.path("items"), columns=["source", "task"])
    q = pq.read_table(demo_run.root / "quarantine")

    def no_whole_tables(*args, **kw):
        raise AssertionError("read_table")

    monkeypatch.setattr(pq, "read_table", no_whole_tables)
    monkeypatch.setattr(Run, "read_table", no_whole_tables)
    with console.capture() as cap:
        inspect_run(demo_run.root, samples=2)
    out = cap.get()
    from collections import Counter

    for src, n in Counter(expect.column("source").to_pylist()).items():
        assert any(src in line and line.rstrip(" │").endswith(f" {n}") for line in out.splitlines())
    text = expect.column("task").to_pylist().count("text")
    assert f"{expect.num_rows} prepared items; {text} text-only" in out
    assert f"quarantine ({q.num_rows} rows)" in out


def _nan_safe(x):
    """NaN != NaN: compare measures with NaN spelled out."""
    if isinstance(x, float) and x != x:
        return "nan"
    if isinstance(x, (list, tuple)):
        return [_nan_safe(v) for v in x]
    return x


def test_curation_section_cards_and_measures_equal_the_whole_table_report(tmp_path, monkeypatch):
    import subprocess
    import sys

    from medrecipe.report import curate as cur
    from medrecipe.report import scan

    env = {"MEDRECIPE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "medrecipe.cli", "curate", "curate_demo.yaml",
                        "-o", "report.enabled=false"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run = Run(tmp_path / "runs" / "curate_demo", create=False)
    resolve = default_resolver(run)
    # small batches and a small plotting cap, so the every-k-th-row pick crosses batches
    monkeypatch.setattr(cur, "batches", lambda files, cols, *_: scan.batches(files, cols, 5))
    for cap in (cur.MAX_PLOTTED, 7):
        monkeypatch.setattr(cur, "MAX_PLOTTED", cap)
        monkeypatch.setattr(ref, "MAX_PLOTTED", cap)
        panels, old = cur._visual_panels(run), ref._visual_panels(run)
        assert _nan_safe(panels) == _nan_safe(old) and panels[0], cap
    for n in (1, 6):
        cfg = ReportConfig(examples=n)
        kept = cur._kept_cards(run, resolve, cfg)
        assert kept == ref._kept_cards(run, resolve, cfg) and len(kept) == n
        dropped = cur._dropped_cards(run, resolve, cfg)
        assert dropped == ref._dropped_cards(run, resolve, cfg) and len(dropped) == 2 * n
        traces = cur._trace_cards(run, resolve, cfg)
        assert traces == ref._trace_cards(run, resolve, cfg) and len(traces) == 2 * n
