"""Decontamination: the vectorised n-gram matcher equals a plain reference on generated data."""

from __future__ import annotations

import random
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pytest

from medrecipe.prepare.decontaminate import (
    NgramIndex,
    find_overlaps,
    normalize_text,
    normalize_texts,
    words,
)

# --------------------------------------------------------------------------- reference
# The plain implementation the issue asks for: Python sets of n-gram strings. It restates the
# definition from the module docstring independently of the code under test (the benchmark
# script imports it from here).


def ref_words(text: str | None) -> list[str]:
    """NFKC, lower-case, then runs of Unicode word characters."""
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text or "").lower())


def ref_ngrams(text: str | None, n: int) -> set[str]:
    w = ref_words(text)
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def _views(row) -> list:
    return [row] if row is None or isinstance(row, str) else list(row)


def reference_index(bench: dict, n: int = 16) -> dict[str, set[str]]:
    """{benchmark: set of its n-gram strings}."""
    index = {}
    for name, rows in bench.items():
        grams: set[str] = set()
        for row in rows:
            for view in _views(row):
                grams |= ref_ngrams(view, n)
        index[name] = grams
    return index


def reference_query(index: dict[str, set[str]], train_rows, n: int = 16) -> np.ndarray:
    """Bool matrix (train rows x benchmarks)."""
    out = np.zeros((len(train_rows), len(index)), dtype=bool)
    for i, row in enumerate(train_rows):
        grams: set[str] = set()
        for view in _views(row):
            grams |= ref_ngrams(view, n)
        for j, grams_j in enumerate(index.values()):
            out[i, j] = not grams.isdisjoint(grams_j)
    return out


def reference_overlaps(train_rows, bench: dict, n: int = 16) -> np.ndarray:
    return reference_query(reference_index(bench, n), train_rows, n)


# --------------------------------------------------------------------------- generated data

VOCAB = ("patient fever cough dyspnea biopsy lesion renal hepatic cardiac acute chronic "
         "the of and with which most likely diagnosis treatment year old man woman").split()
UNICODE_WORDS = [
    "café", "cafe\u0301", "naïve", "ﬁbrosis", "µg", "μg", "x²", "Ａｌｂｕｍｉｎ", "ΟΔΟΣ", "İzmir",
    "straße", "STRASSE", "ẞ", "ǅemal", "肺炎", "がん", "٣٤", "under_score", "e\u0301", "q\u0301x",
    "Ⅻ", "½", "\u2103", "😷", "a\u200db", "x\U0001d7d8", "Ǆ", "ﬀ",
]
SEPARATORS = [" ", "  ", "\t", "\n", ", ", ". ", "; ", " - ", "–", "—", "’", "'", "(", ")", "/",
              "\u00a0", "\u2009", "\u3000", " ° ", "!", "?", "\u200b", ":"]


def random_text(rnd: random.Random, k: int, unicode_rate: float = 0.1) -> str:
    parts = []
    for _ in range(k):
        w = rnd.choice(UNICODE_WORDS) if rnd.random() < unicode_rate else rnd.choice(VOCAB)
        r = rnd.random()
        if r < 0.15:
            w = w.upper()
        elif r < 0.25:
            w = w.capitalize()
        parts.append(w + rnd.choice(SEPARATORS))
    return "".join(parts)


def resurface(rnd: random.Random, text: str) -> str:
    """The same words with other case, punctuation and spacing."""
    out = []
    for w in ref_words(text):
        out.append(rnd.choice([w, w.upper(), w.capitalize()]) + rnd.choice(SEPARATORS))
    return rnd.choice(["", " ", "(", "\n"]) + "".join(out)


def generated_pairs(seed: int, n_train: int, n_bench: int, n: int):
    """Benchmarks plus training rows: random, resurfaced copies, copied passages, short rows."""
    rnd = random.Random(seed)
    bench = {
        "alpha": [random_text(rnd, rnd.randint(0, 3 * n)) for _ in range(n_bench)],
        "beta": [random_text(rnd, rnd.randint(0, 3 * n)) for _ in range(n_bench)],
    }
    bench["beta"][:20] = bench["alpha"][:20]  # the same question in two benchmarks
    all_bench = bench["alpha"] + bench["beta"]
    train: list[str] = []
    for _ in range(n_train):
        kind = rnd.random()
        src = rnd.choice(all_bench)
        ws = ref_words(src)
        if kind < 0.35:
            train.append(random_text(rnd, rnd.randint(0, 3 * n)))
        elif kind < 0.55:
            train.append(resurface(rnd, src))
        elif kind < 0.75:  # a passage of about n words inside other text
            k = rnd.randint(max(1, n - 2), n + 2)
            s = rnd.randrange(0, max(1, len(ws) - k + 1))
            train.append(random_text(rnd, rnd.randint(0, n)) + " " + " ".join(ws[s:s + k]).upper()
                         + ". " + random_text(rnd, rnd.randint(0, n)))
        elif kind < 0.85:  # shorter than n words, copied verbatim
            train.append(" ".join(ws[: max(0, n - 1 - rnd.randint(0, 3))]))
        elif kind < 0.95:  # one word changed in the middle of a copy
            if ws:
                ws[len(ws) // 2] = "zzz" + ws[len(ws) // 2]
            train.append(" ".join(ws))
        else:
            train.append(rnd.choice(["", "   ", "!!!", "\u200b"]))
    return train, bench


# --------------------------------------------------------------------------- tests


def test_words_follow_the_documented_definition():
    assert words("Fever, 38.5 °C!") == ["fever", "38", "5", "c"]
    assert words("  The  PATIENT\tpresents\n") == ["the", "patient", "presents"]
    assert words("ﬁbrosis 5 µg") == ["fibrosis", "5", "μg"]  # NFKC: ligature, micro sign
    assert words("well-known don't a_b") == ["well", "known", "don", "t", "a_b"]
    assert words("cafe\u0301") == ["café"]  # composed by NFKC, then one word
    assert words("") == [] and words(None) == []
    assert normalize_text("Hello,   World!") == "hello world"


@pytest.mark.parametrize("n", [16, 3])
def test_flags_equal_the_reference_on_generated_pairs(n):
    train, bench = generated_pairs(seed=n, n_train=12_000, n_bench=600, n=n)
    got = find_overlaps(train, bench, n=n)
    want = reference_overlaps(train, bench, n=n)
    assert got.matches.shape == want.shape == (12_000, 2)
    assert np.array_equal(got.matches, want)
    assert np.array_equal(got.flags, want.any(axis=1))
    # Not a vacuous comparison: both outcomes occur often, for both benchmarks.
    assert 1_000 < want.any(axis=1).sum() < 11_000
    assert want[:, 0].sum() > 500 and want[:, 1].sum() > 500


def test_flags_stay_exact_when_hashes_collide():
    # 10-bit hashes make most unrelated n-grams collide; the byte-wise verification must
    # still give exactly the reference flags (also with the index built in many batches).
    train, bench = generated_pairs(seed=7, n_train=1_500, n_bench=150, n=4)
    want = reference_overlaps(train, bench, n=4)
    for bits in (10, 20):
        got = NgramIndex(bench, n=4, hash_bits=bits, batch_size=37).query(train, batch_size=101)
        assert np.array_equal(got.matches, want)
    assert want.any(axis=1).sum() > 300


def test_evidence_is_a_shared_ngram():
    train, bench = generated_pairs(seed=3, n_train=2_000, n_bench=200, n=5)
    got = find_overlaps(train, bench, n=5)
    index = reference_index(bench, n=5)
    everything = set().union(*index.values())
    for row, evidence in zip(train, got.evidence, strict=True):
        if evidence is None:
            assert not (ref_ngrams(row, 5) & everything)
        else:
            assert evidence in ref_ngrams(row, 5) and evidence in everything


def test_views_short_texts_and_benchmark_names():
    n = 16
    stem = ("A 45-year-old man presents with fever, productive cough and pleuritic chest pain "
            "for three days after a long flight; what is the most likely diagnosis")
    options = ["Pulmonary embolism", "Community-acquired pneumonia", "Pneumothorax"]
    full = stem + " " + " ".join(options)
    bench = {"medqa": [full], "other": ["nothing in common here at all"]}
    rows = [
        (stem.upper().replace(",", " ;"), stem + " " + " ".join(reversed(options))),  # stem overlaps
        ("What is shown in this image?", "What is shown in this image? A B C"),  # short
        ("Unrelated question about renal physiology and acid base balance in the kidney",),
    ]
    got = find_overlaps(rows, bench, n=n)
    assert got.flags.tolist() == [True, False, False]
    assert got.benchmarks_of(0) == ["medqa"]
    assert got.column("other").tolist() == [False, False, False]
    # A text shorter than n words never matches, not even itself.
    short = "What is shown in this image?"
    assert not find_overlaps([short], [short], n=n).flags[0]
    assert find_overlaps([short], [short], n=6).flags[0]


def test_arrow_input_equals_list_input():
    train, bench = generated_pairs(seed=11, n_train=3_000, n_bench=300, n=4)
    as_list = find_overlaps(train, bench, n=4)
    as_arrow = find_overlaps(pa.chunked_array([pa.array(train[:1000]), pa.array(train[1000:])]),
                             {k: pa.array(v) for k, v in bench.items()}, n=4)
    assert np.array_equal(as_list.matches, as_arrow.matches)
    assert as_list.evidence == as_arrow.evidence


def test_vectorised_normalisation_equals_python():
    rnd = random.Random(5)
    texts = [random_text(rnd, rnd.randint(0, 30), unicode_rate=0.4) for _ in range(3_000)]
    texts += [None, "", "\u00b5\u00a0\u00b2\u2026\ufb01\u2103 MIXED Case", "ΣΊΣΥΦΟΣ ΟΔΟΣ."]
    assert normalize_texts(texts).to_pylist() == [" ".join(ref_words(t)) for t in texts]


def test_word_character_table_matches_python_regex():
    from medrecipe.prepare.decontaminate import _word_codepoints

    table = _word_codepoints()
    word = re.compile(r"\w")
    mismatches = [c for c in range(0x110000)
                  if bool(table[c]) != (word.match(chr(c)) is not None)]
    assert mismatches == []


def test_arrow_list_views_and_batched_normalisation():
    train, bench = generated_pairs(seed=13, n_train=2_000, n_bench=200, n=4)
    views = [[t, t[: len(t) // 2]] for t in train]  # a second, shorter view per row
    want = find_overlaps(views, bench, n=4)
    got = find_overlaps(pa.array(views, pa.list_(pa.string())), bench, n=4, batch_size=300)
    assert np.array_equal(want.matches, got.matches) and want.evidence == got.evidence
    assert normalize_texts(pa.array(train), batch_size=77).to_pylist() == \
        [" ".join(ref_words(t)) for t in train]
