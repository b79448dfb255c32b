"""Answer extraction on real model outputs: how often the extractor reads the letter a reply commits to.

Reads tests/fixtures/extraction_devset.jsonl (real outputs of public models on medical
multiple-choice questions, each labelled by hand with the option it commits to, or none;
see tests/fixtures/EXTRACTION_DEVSET.md) and scores `medrecipe.answers.extract` on it.
For each part of the set (dev, held-out, all) it prints four figures:

- read exactly: the extractor's answer equals the label (a letter, or no answer for a
  reply that commits to none), as a percentage;
- invented: replies labelled "none" that got an answer;
- missed: replies that commit to a letter and got no answer;
- wrong letter: replies that commit to a letter and got another one.

As baselines in the same process it scores the extractor as it was before the
real-output work (commit BASELINE_COMMIT of answers.py) and after the first real-output
pass (PREVIOUS_COMMIT), each loaded from git as a module of its own, so the columns are
comparable row for row. Without git history the baselines are skipped.

    python benchmarks/extraction.py
    python benchmarks/extraction.py --per-source    # the four figures per source repository
    python benchmarks/extraction.py --show missed   # list the dev rows in one category
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from medrecipe.answers import extract, judge_eligible

ROOT = Path(__file__).resolve().parents[1]
DEVSET = ROOT / "tests" / "fixtures" / "extraction_devset.jsonl"
BASELINE_COMMIT = "4baad2f"  # answers.py before the real-output rules (issue 11)
PREVIOUS_COMMIT = "14bfee6"  # answers.py of the first real-output pass (209-output dev set)
CATEGORIES = ("exact", "invented", "missed", "wrong")


def load_rows(path: Path = DEVSET) -> list[dict]:
    """The labelled outputs, one dict per line."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def classify(label: str | None, answer: str | None) -> str:
    """One of CATEGORIES for an extracted answer against the hand label."""
    if answer == label:
        return "exact"
    if label is None:
        return "invented"
    return "missed" if answer is None else "wrong"


def score(rows: list[dict], fn: Callable) -> tuple[Counter, list[tuple[str, str, dict, object]]]:
    """Counts per category and (category, method, row, extraction) for every row."""
    counts: Counter = Counter()
    detail = []
    for row in rows:
        ex = fn(row["output"], row["options"])
        cat = classify(row["label"], ex.answer)
        counts[cat] += 1
        counts["method:" + ex.method] += 1
        detail.append((cat, ex.method, row, ex))
    return counts, detail


def load_baseline(commit: str = BASELINE_COMMIT) -> Callable | None:
    """extract() of answers.py at `commit`, or None without git history."""
    try:
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:src/medrecipe/answers.py"],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    name = f"answers_{commit}"
    tmp = Path(tempfile.mkdtemp()) / f"{name}.py"
    tmp.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, tmp)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.extract


def _line(name: str, c: Counter, n: int) -> str:
    exact = 100.0 * c["exact"] / n if n else 0.0
    return f"{name:<10} {exact:8.1f}% {c['invented']:9d} {c['missed']:7d} {c['wrong']:6d}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devset", type=Path, default=DEVSET)
    ap.add_argument("--show", choices=CATEGORIES[1:], help="print the rows of one category (new extractor)")
    ap.add_argument("--part", choices=("dev", "heldout", "all"), default="dev",
                    help="rows --show lists (held-out rows are only scored, never read while writing rules)")
    ap.add_argument("--per-source", action="store_true", help="also print the four figures per source repository")
    args = ap.parse_args()

    rows = load_rows(args.devset)
    parts = {
        "dev": [r for r in rows if r["split"] == "dev"],
        "held-out": [r for r in rows if r["split"] == "heldout"],
        "all": rows,
    }
    committed = sum(r["label"] is not None for r in rows)
    print(f"{len(rows)} outputs ({committed} commit to a letter, {len(rows) - committed} to none) from "
          f"{len({r['source']['repo'] for r in rows})} repositories, {len({r['model'] for r in rows})} models")
    baseline = load_baseline()
    extractors = [("current", extract)]
    if baseline is not None:
        previous = load_baseline(PREVIOUS_COMMIT)
        if previous is not None:
            extractors.insert(0, (f"previous ({PREVIOUS_COMMIT})", previous))
        extractors.insert(0, (f"baseline ({BASELINE_COMMIT})", baseline))
    else:
        print("baseline skipped: no git history to load answers.py from")

    results = {}
    sources = sorted({r["source"]["repo"] for r in rows}, key=lambda s: -sum(r["source"]["repo"] == s for r in rows))
    for name, fn in extractors:
        print(f"\n{name}")
        print(f"{'part':<10} {'read exactly':>9} {'invented':>9} {'missed':>7} {'wrong':>6}")
        for part, prows in parts.items():
            counts, detail = score(prows, fn)
            results[(name, part)] = counts
            print(_line(part, counts, len(prows)))
        methods = {k[7:]: v for k, v in results[(name, "all")].items() if k.startswith("method:")}
        print("methods (all): " + ", ".join(f"{m} {v}" for m, v in sorted(methods.items())))
        if args.per_source:
            print(f"{'source':<44} {'part':<9} {'n':>4} {'exact':>7} {'inv':>4} {'miss':>5} {'wrong':>6}")
            for src in sources:
                for part, prows in parts.items():
                    srows = [r for r in prows if r["source"]["repo"] == src]
                    if srows:
                        c, _ = score(srows, fn)
                        print(f"{src:<44} {part:<9} {len(srows):4d} {100.0 * c['exact'] / len(srows):6.1f}% "
                              f"{c['invented']:4d} {c['missed']:5d} {c['wrong']:6d}")

    # What the optional model-based reading (grade.choice_judge) would be shown: replies no
    # rule read and none refused. A perfect judge could turn the labelled ones into answers;
    # the ones labelled none are where it could invent one.
    eligible = [r for r in rows if judge_eligible(extract(r["output"], r["options"]))]
    print(f"\nchoice-judge eligible (current rules): {len(eligible)} replies, "
          f"{sum(r['label'] is not None for r in eligible)} labelled with a letter, "
          f"{sum(r['label'] is None for r in eligible)} labelled none")

    if baseline is not None:
        a, b = results[(extractors[0][0], "all")], results[("current", "all")]
        print(f"\nread exactly, all: {100 * b['exact'] / len(rows):.1f}% vs {100 * a['exact'] / len(rows):.1f}% "
              f"baseline; wrong letters {b['wrong']} vs {a['wrong']}; invented {b['invented']} vs {a['invented']}")

    if args.show:
        shown = rows if args.part == "all" else [r for r in rows if r["split"] == args.part]
        _, detail = score(shown, extract)
        for cat, method, row, ex in detail:
            if cat == args.show:
                print(f"\n--- {row['id']} [{row['split']}] label={row['label']} got={ex.answer} ({method})")
                print(row["output"][:600] if len(row["output"]) <= 1200 else row["output"][:500] + " [...] " + row["output"][-600:])


if __name__ == "__main__":
    main()
