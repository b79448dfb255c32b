"""Training images that also appear in a benchmark: exact byte matches and near duplicates.

Exact matches come for free from the content-addressed store (an image ref is the SHA-256
of the original bytes). Near duplicates (re-encoded, resized or slightly edited copies) are
found with a 64-bit difference hash compared by Hamming distance, and reported apart from
exact matches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from medrecipe.images import ImageStore, parse_ref


def base_sha(ref: str) -> str:
    """The original image's hash of a ref (drops a resized-copy suffix)."""
    return parse_ref(ref)[0]


def exact_matches(train_refs: Sequence[Sequence[str]],
                  bench_refs: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Per training row, the benchmarks holding one of its images byte for byte."""
    owners: dict[str, list[str]] = {}
    for bench, refs in bench_refs.items():
        for r in refs:
            lst = owners.setdefault(base_sha(r), [])
            if bench not in lst:
                lst.append(bench)
    out = []
    for refs in train_refs:
        hit: list[str] = []
        for r in refs:
            for b in owners.get(base_sha(r), ()):
                if b not in hit:
                    hit.append(b)
        out.append(hit)
    return out


def dhash(img: Image.Image, size: int = 8) -> int:
    """64-bit difference hash: signs of horizontal gradients of a (size+1) x size greyscale."""
    small = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS),
                       dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0]) if size == 8 else int(
        "".join("1" if b else "0" for b in bits), 2)


def hamming(a: np.ndarray, b: int) -> np.ndarray:
    """Hamming distances between an array of 64-bit hashes and one hash."""
    x = np.bitwise_xor(a, np.uint64(b))
    return np.bitwise_count(x) if hasattr(np, "bitwise_count") else np.array(
        [bin(int(v)).count("1") for v in x])


@dataclass
class NearMatch:
    """A training image within the Hamming threshold of a benchmark image."""

    train_ref: str
    bench_ref: str
    benchmark: str
    distance: int


@dataclass
class NearDuplicates:
    """Near-duplicate matches per training row (exact byte matches excluded)."""

    rows: dict[int, list[NearMatch]] = field(default_factory=dict)
    hashed: int = 0
    unreadable: int = 0


def near_matches(train_refs: Sequence[Sequence[str]], bench_refs: Mapping[str, Iterable[str]],
                 store: ImageStore, threshold: int) -> NearDuplicates:
    """Training rows with an image whose dHash is within `threshold` bits of a benchmark image."""
    result = NearDuplicates()
    cache: dict[str, int | None] = {}

    def hash_of(ref: str) -> int | None:
        sha = base_sha(ref)
        if sha not in cache:
            try:
                cache[sha] = dhash(store.open(sha))
                result.hashed += 1
            except Exception:  # noqa: BLE001 - an unreadable image cannot be compared
                cache[sha] = None
                result.unreadable += 1
        return cache[sha]

    bench_list: list[tuple[str, str, int]] = []
    seen: set[tuple[str, str]] = set()
    for bench, refs in bench_refs.items():
        for r in refs:
            key = (bench, base_sha(r))
            if key in seen:
                continue
            seen.add(key)
            h = hash_of(r)
            if h is not None:
                bench_list.append((bench, base_sha(r), h))
    if not bench_list:
        return result
    bench_hashes = np.array([h for _, _, h in bench_list], dtype=np.uint64)
    bench_shas = {sha for _, sha, _ in bench_list}
    for row, refs in enumerate(train_refs):
        for r in refs:
            if base_sha(r) in bench_shas:
                continue  # an exact match, reported as such
            h = hash_of(r)
            if h is None:
                continue
            d = hamming(bench_hashes, h)
            for j in np.flatnonzero(d <= threshold):
                bench, sha, _ = bench_list[j]
                result.rows.setdefault(row, []).append(NearMatch(r, sha, bench, int(d[j])))
    return result
