"""Decontamination throughput: word 16-gram overlap, vectorised path vs a plain Python reference.

    python benchmarks/decontaminate.py                      # 200,000 train x 30,000 benchmark
    python benchmarks/decontaminate.py --repeat 2           # fastest of two runs of each
    python benchmarks/decontaminate.py --train 20000 --bench 3000

Generates medical-sounding multiple-choice questions in code (about 100 words of stem plus
five options, so ~120 words; ~15% of rows carry non-ASCII symbols such as "°" or "µ"),
plants real overlaps (a benchmark passage of 16-40 words copied into a training stem with
changed case, punctuation and spacing, and some verbatim benchmark questions), and times
`medrecipe.prepare.decontaminate.find_overlaps` (index build + query) against the
reference implementation from the tests (Python sets of n-gram strings) on the same data
in the same process. Both get the same texts: the question followed by its options (the
stem's n-grams are a subset of these). Prints rows/s, the speed ratio and whether the
flags are identical.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ROOTS = ("cardi nephr hepat gastr pulmon neur derm oste arthr my hemat onc immun endocrin thyr "
         "adren pancreat cholecyst col enter esophag laryng pharyng rhin ot ophthalm retin "
         "cerebr mening encephal vascul angi phleb lymph splen cyst ur prostat ovari uter "
         "mamm pneum bronch trache pleur pericardi myocardi valv aort arteri ven").split()
SUFFIXES = ("itis osis oma ectomy opathy algia emia plasty scopy ogram al ic ia ous ular "
            "ocyte ogenesis otomy ostomy uria").split()
COMMON = ("the a of and in with to is was for on at by from which most likely patient "
          "year old man woman presents history examination shows reveals following "
          "diagnosis treatment next best step management laboratory studies blood "
          "pressure heart rate temperature pain acute chronic left right lower upper "
          "mild severe bilateral normal elevated decreased increased over past weeks days "
          "months ago physical findings therapy initial appropriate mechanism drug dose "
          "serum level test result biopsy imaging ct mri x ray ultrasound smoking "
          "alcohol family no not has had been are this that these his her he she").split()
UNITS = ("mg/dL", "mmol/L", "mm Hg", "/min", "°C", "µg/L", "g/dL", "U/L", "%")


SYLLABLES = ("ab ad al an ar as at ba be bi bo ca ce ci co cu da de di do du el em en er es "
             "fa fe fi fo ga ge gi go ha he hi ho id il im in ir is la le li lo lu ma me mi "
             "mo mu na ne ni no nu ob oc ol om on op or os pa pe pi po pu ra re ri ro ru sa "
             "se si so su ta te ti to tu ul um un ur va ve vi vo").split()


def vocabulary(rnd: random.Random, size: int = 8000) -> list[str]:
    """Medical terms (root + suffix) and pseudo-words of 2-4 syllables, in random order."""
    words = {r + s for r in ROOTS for s in SUFFIXES}
    while len(words) < size:
        words.add("".join(rnd.choice(SYLLABLES) for _ in range(rnd.choice((2, 3, 3, 4)))))
    out = sorted(words)
    rnd.shuffle(out)
    return out


class Generator:
    def __init__(self, seed: int):
        self.rnd = random.Random(seed)
        self.vocab = vocabulary(self.rnd)
        ranks = np.arange(1, len(self.vocab) + 1)
        self.cum_weights = np.cumsum(1 / ranks ** 1.05).tolist()  # Zipf-like term frequencies

    def words(self, k: int) -> list[str]:
        out = []
        terms = self.rnd.choices(self.vocab, cum_weights=self.cum_weights, k=k)
        for t in terms:
            r = self.rnd.random()
            if r < 0.55:
                out.append(self.rnd.choice(COMMON))
            elif r < 0.6:
                value = f"{self.rnd.uniform(0.1, 300):.1f}"
                unit = self.rnd.choice(UNITS)
                if not unit.isascii() and self.rnd.random() < 0.88:
                    unit = "mg/L"
                out.append(f"{value} {unit}")
            else:
                out.append(t)
        return out

    def sentence_text(self, words: list[str]) -> str:
        parts = []
        for i, w in enumerate(words):
            if i and self.rnd.random() < 0.08:
                parts[-1] += self.rnd.choice([",", ";", "."])
            parts.append(w)
        text = " ".join(parts)
        return text[0].upper() + text[1:] + "?"

    def question(self) -> tuple[str, list[str]]:
        stem = self.sentence_text(self.words(self.rnd.randint(80, 110)))
        options = [self.sentence_text(self.words(self.rnd.randint(2, 6)))[:-1] for _ in range(5)]
        return stem, options


def mutate(rnd: random.Random, text: str) -> str:
    """Same words, different surface: case, punctuation and spacing."""
    out = []
    for w in text.split():
        r = rnd.random()
        if r < 0.2:
            w = w.upper()
        elif r < 0.3:
            w = w.capitalize()
        out.append(w + rnd.choice(["", "", ",", " ;", "\n", "  ", " - "]))
    return " ".join(out)


def build(n_train: int, n_bench: int, seed: int = 0):
    gen = Generator(seed)
    rnd = random.Random(seed + 1)
    bench = [gen.question() for _ in range(n_bench)]
    train = [gen.question() for _ in range(n_train)]
    planted = 0
    for i in rnd.sample(range(n_train), max(1, n_train // 100)):  # 1% of rows: a copied passage
        stem, options = bench[rnd.randrange(n_bench)]
        ws = stem.split()
        k = rnd.randint(16, 40)
        s = rnd.randrange(0, max(1, len(ws) - k))
        tws = train[i][0].split()
        at = rnd.randrange(len(tws))
        train[i] = (" ".join(tws[:at] + [mutate(rnd, " ".join(ws[s:s + k]))] + tws[at:]), train[i][1])
        planted += 1
    for i in rnd.sample(range(n_train), max(1, n_train // 1000)):  # 0.1%: a verbatim question
        train[i] = bench[rnd.randrange(n_bench)]
        planted += 1
    halves = n_bench // 2
    bench_by_name = {
        "medqa_test": [s + " " + " ".join(o) for s, o in bench[:halves]],
        "pubmedqa_test": [s + " " + " ".join(o) for s, o in bench[halves:]],
    }
    train_texts = [s + " " + " ".join(o) for s, o in train]
    return train_texts, bench_by_name, planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=200_000)
    ap.add_argument("--bench", type=int, default=30_000)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each implementation this many times and report its fastest run")
    ap.add_argument("--reference-rows", type=int, default=None,
                    help="time the reference on only this many training rows and extrapolate")
    args = ap.parse_args()

    from medrecipe.prepare.decontaminate import NgramIndex
    from test_prepare_decontaminate import reference_index, reference_query

    t0 = time.perf_counter()
    train, bench, planted = build(args.train, args.bench)
    words = sum(len(t.split()) for t in train[:2000]) / min(2000, len(train))
    non_ascii = sum(not t.isascii() for t in train) / len(train)
    print(f"generated {len(train):,} training and {sum(map(len, bench.values())):,} benchmark "
          f"questions (~{words:.0f} words each, {non_ascii:.0%} non-ASCII, {planted:,} planted "
          f"overlaps) in {time.perf_counter() - t0:.1f}s; n={args.n}")

    # Each implementation runs --repeat times (index + query every time) and its fastest run
    # is reported, so both get the same treatment on a machine shared with other work.
    fast_runs = []
    for _ in range(args.repeat):
        gc.collect()
        t0 = time.perf_counter()
        index = NgramIndex(bench, n=args.n)  # what find_overlaps does, timed in two parts
        t_index = time.perf_counter() - t0
        fast = index.query(train)
        fast_runs.append((time.perf_counter() - t0, t_index))
        del index
    t_fast, t_index = min(fast_runs)
    print(f"fast path : {t_fast:8.2f}s  {len(train) / t_fast:>10,.0f} rows/s  "
          f"(index {t_index:.2f}s + query {t_fast - t_index:.2f}s; {int(fast.flags.sum()):,} rows "
          f"flagged; runs: {', '.join(f'{t:.2f}s' for t, _ in fast_runs)})")

    ref_rows = min(args.reference_rows or len(train), len(train))
    ref_runs = []
    for _ in range(args.repeat):
        gc.collect()
        t0 = time.perf_counter()
        ref_index = reference_index(bench, n=args.n)
        t_ref_index = time.perf_counter() - t0
        ref = reference_query(ref_index, train[:ref_rows], n=args.n)
        t_ref_query = time.perf_counter() - t0 - t_ref_index
        del ref_index
        # With --reference-rows only the query part is extrapolated; the index is built in full.
        ref_runs.append((t_ref_index + t_ref_query * len(train) / ref_rows, t_ref_index))
    t_ref, t_ref_index = min(ref_runs)
    ref_rate = len(train) / t_ref
    note = "" if ref_rows == len(train) else (
        f"; query timed on {ref_rows:,} rows and extrapolated to {len(train):,}")
    print(f"reference : {t_ref:8.2f}s  {ref_rate:>10,.0f} rows/s  "
          f"(index {t_ref_index:.2f}s + query {t_ref - t_ref_index:.2f}s{note}; "
          f"runs: {', '.join(f'{t:.2f}s' for t, _ in ref_runs)})")
    print(f"speed ratio (fast / reference): {(len(train) / t_fast) / ref_rate:.1f}x")
    same = bool(np.array_equal(fast.matches[:ref_rows], ref))
    print(f"flags identical to the reference on {ref_rows:,} rows x {len(bench)} benchmarks: {same}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
