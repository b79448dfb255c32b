"""Training images that also appear in a benchmark: exact byte matches and near duplicates.

Exact matches come for free from the content-addressed store (an image ref is the SHA-256
of the original bytes; a resized ref "<sha>@<H>x<W>" counts as its original). Near
duplicates (re-encoded, resized or slightly edited copies) are found with a 64-bit
difference hash (dHash: the image in grey shrunk to 9x8, one bit per horizontally adjacent
pair telling whether brightness rises) compared by Hamming distance, and reported apart
from exact matches. A different image differs in about half of the 64 bits.

Near-duplicate search is vectorised with multi-index hashing: the 64 bits are split into
threshold+1 blocks, and two hashes within the threshold agree exactly on at least one block
(pigeonhole), so only pairs sharing a block value are compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from medrecipe.images import ImageStore, parse_ref, to_rgb


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
        for r in refs or ():
            for b in owners.get(base_sha(r), ()):
                if b not in hit:
                    hit.append(b)
        out.append(hit)
    return out


def dhash(img: Image.Image, size: int = 8) -> int:
    """64-bit difference hash: signs of horizontal gradients of a (size+1) x size greyscale."""
    small = np.asarray(to_rgb(img).convert("L").resize((size + 1, size), Image.Resampling.LANCZOS),
                       dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0]) if size == 8 else int(
        "".join("1" if b else "0" for b in bits), 2)


def dhash_file(path) -> int:
    """dHash of a stored image file (a JPEG is decoded at reduced size: the hash needs 9x8)."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (64, 64))  # the largest DCT scale-down that keeps >= 64x64
        im.load()
        return dhash(im)


def hamming(a: np.ndarray, b: int) -> np.ndarray:
    """Hamming distances between an array of 64-bit hashes and one hash."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.uint64(b)))


def hamming_pairs(train: np.ndarray, bench: np.ndarray,
                  threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (train index, bench index, distance) with Hamming distance <= threshold."""
    train = np.asarray(train, dtype=np.uint64)
    bench = np.asarray(bench, dtype=np.uint64)
    none = np.zeros(0, np.int64)
    if len(train) == 0 or len(bench) == 0:
        return none, none, none
    blocks = min(threshold + 1, 64)
    bounds = [64 * k // blocks for k in range(blocks + 1)]
    cand_t, cand_b, total = [], [], 0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        mask = np.uint64((1 << (hi - lo)) - 1)
        bvals = (bench >> np.uint64(lo)) & mask
        order = np.argsort(bvals, kind="stable")
        sorted_vals = bvals[order]
        tvals = (train >> np.uint64(lo)) & mask
        left = np.searchsorted(sorted_vals, tvals, side="left")
        count = np.searchsorted(sorted_vals, tvals, side="right") - left
        total += int(count.sum())
        if total > len(train) * len(bench) // 2:  # blocks too short to select: compare all
            return _all_pairs(train, bench, threshold)
        ti = np.repeat(np.arange(len(train)), count)
        ramp = np.arange(len(ti)) - np.repeat(np.cumsum(count) - count, count)
        cand_t.append(ti)
        cand_b.append(order[np.repeat(left, count) + ramp])
    pair = np.unique(np.concatenate(cand_t) * len(bench) + np.concatenate(cand_b))
    ti, bi = pair // len(bench), pair % len(bench)
    dist = np.bitwise_count(train[ti] ^ bench[bi]).astype(np.int64)
    keep = dist <= threshold
    return ti[keep], bi[keep], dist[keep]


def _all_pairs(train: np.ndarray, bench: np.ndarray,
               threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = max(1, (1 << 22) // len(bench))  # about 4M comparisons per chunk
    out_t, out_b, out_d = [], [], []
    for lo in range(0, len(train), rows):
        d = np.bitwise_count(train[lo: lo + rows, None] ^ bench[None, :]).astype(np.int64)
        t, b = np.nonzero(d <= threshold)
        out_t.append(t + lo)
        out_b.append(b)
        out_d.append(d[t, b])
    return np.concatenate(out_t), np.concatenate(out_b), np.concatenate(out_d)


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


class NearIndex:
    """dHashes of the benchmark images, computed once, to query training images batch by batch."""

    def __init__(self, bench_refs: Mapping[str, Iterable[str]], store: ImageStore, threshold: int):
        self.store, self.threshold = store, threshold
        self.owners: dict[str, list[str]] = {}  # bench sha -> benchmarks
        for bench, refs in bench_refs.items():
            for r in refs:
                lst = self.owners.setdefault(base_sha(r), [])
                if bench not in lst:
                    lst.append(bench)
        self.hashed = self.unreadable = 0
        self._hashes: dict[str, int] = {}  # 8 bytes per distinct image, kept across batches
        self._unreadable: set[str] = set()
        for sha in self.owners:
            self._hash(sha)
        self.b_shas = [s for s in self.owners if s in self._hashes]
        self._b = np.array([self._hashes[s] for s in self.b_shas], dtype=np.uint64)

    def _hash(self, sha: str) -> None:
        try:
            self._hashes[sha] = dhash_file(self.store.path(sha))
            self.hashed += 1
        except Exception:  # noqa: BLE001 - an unreadable image cannot be compared
            self.unreadable += 1
            self._unreadable.add(sha)

    def query(self, train_refs: Sequence[Sequence[str]]) -> NearDuplicates:
        """Near matches of these rows' images (exact byte matches are reported apart)."""
        result = NearDuplicates()
        before = (self.hashed, self.unreadable)
        train_shas = [s for s in dict.fromkeys(base_sha(r) for refs in train_refs for r in refs or ())
                      if s not in self.owners]
        for sha in train_shas:  # an image seen in an earlier batch is not decoded again
            if sha not in self._hashes and sha not in self._unreadable:
                self._hash(sha)
        t_shas = [s for s in train_shas if s in self._hashes]
        ti, bi, dist = hamming_pairs(np.array([self._hashes[s] for s in t_shas], dtype=np.uint64),
                                     self._b, self.threshold)
        near: dict[str, list[tuple[int, str]]] = {}
        for t, b, d in zip(ti.tolist(), bi.tolist(), dist.tolist(), strict=True):
            near.setdefault(t_shas[t], []).append((d, self.b_shas[b]))
        for row, refs in enumerate(train_refs):
            found = [NearMatch(r, b_sha, bench, d)
                     for r in refs or () for d, b_sha in near.get(base_sha(r), ())
                     for bench in self.owners[b_sha]]
            if found:
                result.rows[row] = sorted(found, key=lambda m: (m.distance, m.benchmark, m.bench_ref))
        result.hashed = self.hashed - before[0]
        result.unreadable = self.unreadable - before[1]
        return result


def near_matches(train_refs: Sequence[Sequence[str]], bench_refs: Mapping[str, Iterable[str]],
                 store: ImageStore, threshold: int) -> NearDuplicates:
    """Training rows with an image whose dHash is within `threshold` bits of a benchmark image.

    Each distinct image is hashed once; an image that cannot be read is counted as
    unreadable and compared with nothing. Matches per row are sorted by distance.
    """
    index = NearIndex(bench_refs, store, threshold)
    result = index.query(train_refs)
    result.hashed, result.unreadable = index.hashed, index.unreadable
    return result
