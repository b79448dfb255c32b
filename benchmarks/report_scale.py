"""The run report at scale: peak RSS and time of `write_report` on synthetic runs (issue 15).

    python benchmarks/report_scale.py                          # 100k and 1M generations
    python benchmarks/report_scale.py --sizes 100000 1000000 3000000
    python benchmarks/report_scale.py --no-baseline            # skip the whole-table report

Each size gets a synthetic run built by `benchmarks/scale.py` (questions with 16 samples of
~1,500 characters, in shards of about 50,000 generations), graded and selected by the real
stage functions (each in its own process). Then a fresh process writes the report (every
statistic, every plot, 6 accepted and 6 rejected example cards) and prints its peak RSS
(`ru_maxrss`) and wall time. The baseline is the whole-table report it replaced
(tests/report_reference.py, a frozen copy), run the same way on the same run directory;
both must give the same statistics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale  # noqa: E402  (benchmarks/scale.py: the synthetic run writer)


def _report(root: Path) -> dict:
    """The streamed report (what `medrecipe report` runs)."""
    from medrecipe.config import ReportConfig
    from medrecipe.report import summary_stats, write_report

    t0 = time.perf_counter()
    write_report(root, out_dir=root / "report-new", config=ReportConfig(examples=6))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "stats": summary_stats(root)}


def _baseline(root: Path) -> dict:
    """The whole-table report (statistics, plots and example cards) it replaced."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import report_reference as ref
    from medrecipe.config import ReportConfig
    from medrecipe.report.html import default_resolver
    from medrecipe.store import Run

    cfg = ReportConfig(examples=6)
    t0 = time.perf_counter()
    run = Run(root, create=False)
    tables = ref.load_run_tables(run)
    stats = ref.compute_stats(tables)
    ref.make_plots(tables, stats, root / "report-old")
    resolve = default_resolver(run)
    ref.accepted_examples(tables, resolve, cfg)
    ref.rejected_examples(tables, resolve, cfg)
    return {"wall_s": time.perf_counter() - t0, "stats": stats}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--_run", nargs=2, metavar=("WHICH", "ROOT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._run:
        which, root = a._run
        res = (_report if which == "new" else _baseline)(Path(root))
        res["maxrss_kib"] = scale._rss_kib()
        print(json.dumps(res, default=str))
        return

    work = Path(a.workdir or tempfile.mkdtemp(prefix="medrecipe-report-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in a.sizes:
        root = work / f"run-{n}"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        info, _ = scale._child(["--_build", str(root), str(n)])
        staged, _ = scale._child(["--_stages", str(root), str(info["shards"]), "local", "1",
                                  "--_no_export"])
        print(f"{n:>11,} generations ({info['shards']} shards, {staged['selected']:,} selected) "
              f"built and graded in {time.perf_counter() - t0:.0f} s", flush=True)
        new = _child(["--_run", "new", str(root)])
        line = (f"    streamed report:    {new['wall_s']:6.1f} s, peak RSS "
                f"{new['maxrss_kib'] / 1024:6.0f} MB")
        old = None
        if not a.no_baseline:
            old = _child(["--_run", "old", str(root)])
            same = "same statistics" if old["stats"] == new["stats"] else "STATISTICS DIFFER"
            line += (f"\n    whole-table report: {old['wall_s']:6.1f} s, peak RSS "
                     f"{old['maxrss_kib'] / 1024:6.0f} MB ({same}; streamed uses "
                     f"{new['maxrss_kib'] / old['maxrss_kib']:.2f}x the memory, "
                     f"{new['wall_s'] / old['wall_s']:.2f}x the time)")
        print(line, flush=True)
        rows.append((n, new, old))
        shutil.rmtree(root, ignore_errors=True)
    if len(rows) > 1:
        (n0, first, old0), (n1, last, old1) = rows[0], rows[-1]
        print(f"streamed report, {n1:,} vs {n0:,} generations: peak RSS "
              f"{last['maxrss_kib'] / first['maxrss_kib']:.2f}x, time per generation "
              f"{last['wall_s'] / n1 * 1e6:.1f} us vs {first['wall_s'] / n0 * 1e6:.1f} us")
        if old0 and old1:
            print(f"whole-table report, {n1:,} vs {n0:,} generations: peak RSS "
                  f"{old1['maxrss_kib'] / old0['maxrss_kib']:.2f}x")


if __name__ == "__main__":
    main()
