"""Grading throughput: responses per second through the grade stage.

Generates synthetic teacher responses of realistic length (a few hundred words of
reasoning that mentions option letters and texts) in a mix of answer styles, including
unparseable, invalid and unterminated ones, and grades them with
`medrecipe.answers.grade_generations` (the production path) in batches. Generating the
text is not timed. As a baseline in the same process it times a naive harness-style
extractor (one regex search for "answer is X" per response) over the same batches.

    python benchmarks/grade.py            # 1,000,000 responses
    python benchmarks/grade.py --n 200000
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections import Counter

import pyarrow as pa

from medrecipe.answers import grade_generations
from medrecipe.config import GradeConfig
from medrecipe.schema import GENERATION_SCHEMA, ITEM_SCHEMA, LETTERS

SENTENCES = [
    "The patient presents with progressive dyspnea and a dry cough over several weeks.",
    "Laboratory findings show an elevated white cell count with a left shift.",
    "The histology demonstrates sheets of atypical cells with prominent nucleoli.",
    "Imaging reveals a well-circumscribed lesion without surrounding edema.",
    "We should consider the differential diagnosis carefully before committing.",
    "This pattern is typical of a chronic process rather than an acute one.",
    "The absence of fever makes an infectious cause less likely here.",
    "Given the age of the patient, a neoplastic process must be excluded.",
    "The key finding is the distribution of the abnormality in the image.",
    "Let me re-read the question to make sure I am answering what is asked.",
    "Pharmacologically, this drug acts by inhibiting the enzyme in question.",
    "The staining pattern supports a mesenchymal rather than epithelial origin.",
    "A 45-year-old man with similar findings would usually be managed conservatively.",
    "The most specific sign in this case is the one described in the stem.",
    "Therefore the remaining options need to be weighed against each other.",
]

OPTION_SETS = [
    ["Tumor", "Stroma", "Inflammatory", "Necrosis"],
    ["Glioma", "Meningioma", "Pituitary tumor", "No tumor"],
    ["No DR", "Mild", "Moderate", "Severe", "Proliferative"],
    ["Normal", "Bacterial pneumonia", "Viral pneumonia"],
    [f"Choice number {i}" for i in range(10)],
]
OPEN_ANSWERS = ["yes", "no", "left lung", "pneumothorax", "ct", "liver"]


def _reasoning(rng: random.Random, options: list[str]) -> str:
    parts: list[str] = []
    for _ in range(rng.randint(14, 30)):
        r = rng.random()
        if options and r < 0.2:
            i = rng.randrange(len(options))
            parts.append(f"Option {LETTERS[i]} ({options[i]}) is {rng.choice(['unlikely', 'possible', 'less consistent'])} given the findings.")
        else:
            parts.append(rng.choice(SENTENCES))
    return " ".join(parts)


def _response(rng: random.Random, options: list[str], answer: str) -> str:
    """One synthetic response; the answer style is drawn from a fixed mix."""
    reasoning = _reasoning(rng, options)
    if options:
        i = LETTERS.index(answer) if rng.random() < 0.7 else rng.randrange(len(options))
        L, text = LETTERS[i], options[i]
        style = rng.random()
        if style < 0.30:
            return f"<think>\n{reasoning}\n</think>\n\nThe answer is $\\boxed{{{L}: {text}}}$."
        if style < 0.45:
            return f"{reasoning}\n\n**Answer:** {L}"
        if style < 0.55:
            return f"{reasoning}\nTherefore, the correct answer is ({L}) {text}."
        if style < 0.63:
            return f"<think>{reasoning}</think><answer>{L}</answer>"
        if style < 0.70:
            return f"<think>{reasoning}</think>\nThe findings are most consistent with {text.lower()}."
        if style < 0.80:
            return reasoning  # no final answer at all
        if style < 0.90:
            return f"<think>\n{reasoning}"  # cut off inside the thinking block
        if style < 0.95:
            return f"{reasoning}\n\\boxed{{{LETTERS[len(options)]}}}"  # letter out of range
        return f"{reasoning} Final answer: {L}"
    style = rng.random()
    said = answer if rng.random() < 0.7 else rng.choice(OPEN_ANSWERS)
    if style < 0.4:
        return f"<think>{reasoning}</think>\n\\boxed{{{said.capitalize()}}}"
    if style < 0.7:
        return f"{reasoning}\nFinal answer: {said.capitalize()}."
    if style < 0.85:
        return reasoning
    return f"<think>{reasoning}"


def make_batch(rng: random.Random, n: int, n_items: int) -> tuple[pa.Table, pa.Table]:
    """(generations, items) tables of n responses over n_items questions."""
    item_rows = []
    for k in range(n_items):
        if k % 5 == 4:
            opts: list[str] = []
            ans = rng.choice(OPEN_ANSWERS)
        else:
            opts = OPTION_SETS[k % len(OPTION_SETS)]
            ans = LETTERS[rng.randrange(len(opts))]
        item_rows.append({
            "id": f"q{k}", "source": "bench", "split": "train",
            "task": "open_vqa" if not opts else "text", "question": "Q?",
            "options": opts, "answer": ans, "images": [], "modality": None,
            "anatomy": None, "meta": "{}",
        })
    gens = {name: [] for name in ("key", "item_id", "source", "teacher", "sample_index", "text")}
    for g in range(n):
        row = item_rows[g % n_items]
        gens["key"].append(f"k{g}")
        gens["item_id"].append(row["id"])
        gens["source"].append("bench")
        gens["teacher"].append("t")
        gens["sample_index"].append(g // n_items)
        gens["text"].append(_response(rng, row["options"], row["answer"]))
    cols = {f.name: gens.get(f.name, [None] * n) for f in GENERATION_SCHEMA}
    return pa.table(cols, schema=GENERATION_SCHEMA), pa.Table.from_pylist(item_rows, schema=ITEM_SCHEMA)


_NAIVE = re.compile(r"answer is \(?([A-J])\)?")


def naive_grade(texts: list[str]) -> int:
    """Baseline: one regex search per response, as simple harnesses do."""
    found = 0
    for t in texts:
        if _NAIVE.search(t):
            found += 1
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of responses to grade")
    ap.add_argument("--batch", type=int, default=50_000, help="responses per Arrow batch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    config = GradeConfig()
    t_grade = t_naive = 0.0
    done = chars = words = 0
    methods: Counter[str] = Counter()
    correct: Counter[object] = Counter()
    unterminated = 0
    while done < args.n:
        n = min(args.batch, args.n - done)
        gens, items = make_batch(rng, n, max(1, n // 16))
        texts = gens.column("text").to_pylist()
        chars += sum(len(t) for t in texts)
        words += sum(t.count(" ") + 1 for t in texts[:1000]) * n / min(n, 1000)

        t0 = time.perf_counter()
        verdicts = grade_generations(gens, items, config)
        t_grade += time.perf_counter() - t0

        t0 = time.perf_counter()
        naive_grade(texts)
        t_naive += time.perf_counter() - t0

        methods.update(verdicts.column("method").to_pylist())
        correct.update(verdicts.column("correct").to_pylist())
        unterminated += verdicts.num_rows - sum(verdicts.column("terminated").to_pylist())
        done += n

    print(f"responses: {done:,}  mean length: {chars / done:,.0f} chars, ~{words / done:,.0f} words")
    print("methods: " + ", ".join(f"{k}={v:,}" for k, v in sorted(methods.items())))
    print(f"correct: {correct[True]:,}  wrong: {correct[False]:,}  ungradable: {correct[None]:,}  "
          f"unterminated: {unterminated:,}")
    print(f"grade_generations: {t_grade:.2f} s  -> {done / t_grade:,.0f} responses/s")
    print(f"baseline (one naive regex search per response): {t_naive:.2f} s  -> "
          f"{done / t_naive:,.0f} responses/s")
    print(f"ratio grade_generations / baseline time: {t_grade / t_naive:.2f}x")


if __name__ == "__main__":
    main()
