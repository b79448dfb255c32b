"""Word n-gram overlap between training questions and benchmark questions (exact, vectorised).

Definition (the reference implementation in the tests follows it word for word):

* **Words.** A text is normalised with Unicode NFKC, lower-cased with ``str.lower``, and
  its words are the maximal runs of word characters, i.e. ``re.findall(r"\\w+", text)``
  with Python's Unicode ``\\w`` (``str.isalnum()`` characters and the underscore).
  Everything else -- whitespace, punctuation, symbols, combining marks -- only separates
  words, so ``"Fever, 38.5 °C!"`` has the words ``fever 38 5 c``.
* **n-grams.** The n-grams of a text are its runs of ``n`` consecutive words. A text with
  fewer than ``n`` words has no n-grams and never overlaps anything: a short stem such as
  "What is shown in this image?" is not evidence of contamination (images are compared
  by the image dedup step instead).
* **Overlap.** A training row overlaps a benchmark when one of its n-grams is an n-gram of
  one of that benchmark's texts. A row or a benchmark entry may carry several texts
  ("views", e.g. the stem and the stem with its options); any view counts.

How the production path is fast and still exact: a batch of texts becomes one byte
buffer (ASCII texts as they are, other texts NFKC-normalised and lower-cased in Python
first) that ``bytes.translate`` lower-cases with every non-word byte set to 0; multi-byte
characters that are not word characters are zeroed through a code-point table. Each word
is hashed from its first 16 bytes and its length (unaligned 8-byte reads), each n-gram from
its word hashes with a polynomial hash (numpy, arithmetic modulo 2**64, built by doubling
windows). The benchmark index is one sorted uint64 array of (32 hash bits, first word of
the n-gram), built once. A training batch is screened with a bit set over the hashes' top
bits (about 1-3% false positives), the survivors are looked up with ``np.searchsorted``,
and every hash hit is compared word by word, byte for byte, with the benchmark n-gram, so
a hash collision can neither add nor lose a flag.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_WORD_RE = re.compile(r"\w+")
_U64 = np.uint64
_PAD = 24  # zero bytes after a buffer, so the 8-byte reads of _word_hashes stay inside

Texts = Sequence[str | None] | pa.Array | pa.ChunkedArray


def words(text: str | None) -> list[str]:
    """The words of a text under the decontamination definition (NFKC, lower, \\w+ runs)."""
    if not text:
        return []
    return _WORD_RE.findall(unicodedata.normalize("NFKC", text).lower())


def normalize_text(text: str | None) -> str:
    """A text's words joined by single spaces (the canonical form that n-grams are taken from)."""
    return " ".join(words(text))


# Compatibility characters common in medical and scraped text (micro sign, no-break and
# thin spaces, superscripts, fractions, ellipsis, ligatures, degree Celsius), each with its
# full compatibility decomposition. NFKC only ever looks at the full decomposition, so
# replacing them first gives the same result while unicodedata can take its fast path.
_COMMON_COMPAT = tuple((c, unicodedata.normalize("NFKD", c)) for c in
                       "\u00b5\u00a0\u00b2\u00b3\u00b9\u00bc\u00bd\u00be\u2009\u202f"
                       "\u2002\u2003\u2026\u2122\ufb01\ufb02\u2103")


def _nfkc(text: str) -> str:
    """unicodedata.normalize("NFKC", text), faster for the common compatibility characters."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    for c, d in _COMMON_COMPAT:
        if c in text:
            text = text.replace(c, d)
    return unicodedata.normalize("NFKC", text)


@functools.cache
def _word_codepoints() -> np.ndarray:
    """Bool per Unicode code point: is it a regex word character (isalnum, or "_")."""
    table = np.frombuffer(bytes(chr(c).isalnum() for c in range(0x110000)), dtype=bool).copy()
    table[ord("_")] = True
    return table


# --------------------------------------------------------------------------- tokenised batches


@dataclass
class _Batch:
    """Texts laid out in one byte buffer, with the position of every word.

    ``buf`` holds the lower-cased bytes with every non-word byte set to 0; text i starts at
    ``text_start[i]`` (texts are separated by at least one 0 byte). Word k occupies
    ``buf[ws[k]:we[k]]``; ``first_word[i]`` is the index of text i's first word
    (``first_word[-1]`` is the number of words).
    """

    buf: np.ndarray
    text_start: np.ndarray
    ws: np.ndarray
    we: np.ndarray
    first_word: np.ndarray

    def text_of_word(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.first_word) - 1), np.diff(self.first_word))

    def words_of(self, k: int, n: int) -> str:
        """Words k .. k+n-1 joined by spaces."""
        return " ".join(self.buf[self.ws[j]:self.we[j]].tobytes().decode("utf-8")
                        for j in range(k, k + n))


def _to_list(texts: Texts) -> list:
    if isinstance(texts, pa.ChunkedArray | pa.Array):
        return texts.to_pylist()
    return texts if isinstance(texts, list) else list(texts)


# bytes.translate table: ASCII letters to lower case, other ASCII word characters kept,
# every other ASCII byte to 0 (a separator). Bytes >= 128 are kept; multi-byte characters
# that are not word characters are zeroed afterwards (_clear_non_word_chars).
_TRANSLATE = bytes(
    (c + 32 if 65 <= c <= 90 else c if (97 <= c <= 122 or 48 <= c <= 57 or c == 95 or c >= 128) else 0)
    for c in range(256))


def tokenize_batch(texts: Texts) -> _Batch:
    """Lay a batch of texts out in one buffer and find their words (vectorised)."""
    items = _to_list(texts)
    if None in items:
        items = ["" if t is None else t for t in items]
    ascii_flags = list(map(str.isascii, items))  # str.isascii is O(1) in CPython
    # The buffer is "\n" + text 0 + "\n" + text 1 ... + "\n" + zero padding.
    parts = ["", *items, "\0" * _PAD]
    if all(ascii_flags):
        joined = "\n".join(parts).encode("ascii").translate(_TRANSLATE)
    else:
        # Non-ASCII texts are normalised and lower-cased in Python; an ASCII placeholder of
        # the same byte length keeps the fast single encode for everything else.
        fixed = {}
        for i in itertools.compress(range(len(items)), map(operator.not_, ascii_flags)):
            data = _nfkc(items[i]).lower().encode()
            fixed[i] = data
            parts[i + 1] = "\0" * len(data)
        out = bytearray("\n".join(parts).encode("ascii"))
        starts = np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)) + 1)
        for i, data in fixed.items():
            out[starts[i]: starts[i] + len(data)] = data
        joined = out.translate(_TRANSLATE)
    buf = np.frombuffer(joined, dtype=np.uint8)
    if not all(ascii_flags):
        _clear_non_word_chars(buf)
    lengths = np.fromiter(map(len, parts[:-1]), np.int64, len(parts) - 1)  # placeholders: byte length
    text_start = np.cumsum(lengths + 1)  # text i starts after the separator that follows i-1
    word = buf != 0
    edges = np.flatnonzero(word[1:] != word[:-1])  # word starts and ends alternate
    ws, we = edges[0::2] + 1, edges[1::2] + 1
    first_word = np.searchsorted(ws, text_start)
    return _Batch(buf, text_start, ws, we, first_word)


def _clear_non_word_chars(buf: np.ndarray) -> None:
    """Zero the bytes of multi-byte UTF-8 characters that are not word characters."""
    lead = np.flatnonzero(buf >= 0xC0)
    if len(lead) == 0:
        return
    b0 = buf[lead].astype(np.int64)
    size = np.where(b0 < 0xE0, 2, np.where(b0 < 0xF0, 3, 4))
    cp = b0 & np.where(size == 2, 0x1F, np.where(size == 3, 0x0F, 0x07))
    for k in range(1, 4):
        cont = buf[np.minimum(lead + k, len(buf) - 1)].astype(np.int64) & 0x3F
        cp = np.where(size > k, (cp << 6) | cont, cp)
    bad = ~_word_codepoints()[np.minimum(cp, 0x10FFFF)]
    for k in range(4):
        buf[lead[bad & (size > k)] + k] = 0


class _Growable:
    """An array filled from the front that doubles its capacity when full."""

    def __init__(self, dtype, capacity: int):
        self.data = np.empty(max(capacity, 16), dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self.data):
            grown = np.empty(max(end, 2 * len(self.data)), self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size: end] = values
        self.size = end

    def view(self) -> np.ndarray:
        return self.data[: self.size]


_K1 = _U64(0x9E3779B97F4A7C15)


_HEAD = np.array([(1 << (8 * min(k, 8))) - 1 for k in range(17)], dtype=_U64)
_TAIL = np.array([(1 << (8 * max(k - 8, 0))) - 1 for k in range(17)], dtype=_U64)


def _word_hashes(b: _Batch) -> np.ndarray:
    """64-bit hash of every word from its first 16 bytes and its length.

    Words of up to 16 bytes are fully covered; longer words that differ only after their
    16th byte share a hash, which the byte-wise verification of every hit makes harmless.
    """
    # Unaligned little-endian uint64 views at every byte offset: u0[i] = buf[i:i+8] and
    # u8[i] = buf[i+8:i+16] (the zero padding after the buffer keeps both inside it).
    size = len(b.buf) // 8 * 8
    base = b.buf[:size].view("<u8")
    u0 = np.lib.stride_tricks.as_strided(base, (size - 15,), (1,))
    u8 = np.lib.stride_tricks.as_strided(base[1:], (size - 15,), (1,))
    length = b.we - b.ws
    short = np.minimum(length, 16)
    head = u0[b.ws] & _HEAD[short]
    tail = u8[b.ws] & _TAIL[short]
    return head * _K1 + (tail ^ length.astype(_U64, copy=False))


def _window_poly(x: np.ndarray, n: int, base: int) -> np.ndarray:
    """y[i] = sum_k x[i+k] * base**(n-1-k) mod 2**64 for every window of n values.

    Built by doubling (windows of 1, 2, 4, ... values), so it costs O(log n) passes.
    """
    blocks = {1: x}
    size, cur = 1, x
    while size * 2 <= n:
        cur = cur[:-size] * _U64(pow(base, size, 1 << 64)) + cur[size:]
        size *= 2
        blocks[size] = cur
    out, have = None, 0
    for size in sorted(blocks, reverse=True):
        if have + size <= n:
            part = blocks[size]
            if out is None:
                out = part
            else:  # append a block of `size` values after the `have` values in out
                out = out[: len(part) - have] * _U64(pow(base, size, 1 << 64)) + part[have:]
            have += size
    return out


def _gram_hashes(b: _Batch, n: int, base: int) -> np.ndarray:
    """Hash of the n-gram starting at every word (those running past a text's end included)."""
    if len(b.ws) < n:
        return np.zeros(0, _U64)
    # sum_k wh[i+k] * base**(n-1-k): a polynomial over the word hashes; its top bits, which
    # the index sorts and screens on, depend on every input bit.
    return _window_poly(_word_hashes(b), n, base)


def _inside(b: _Batch, first: np.ndarray, n: int) -> np.ndarray:
    """Whether the n-gram starting at word `first` ends inside the same text."""
    text = np.searchsorted(b.first_word, first, side="right") - 1
    return first + n <= b.first_word[text + 1]


def _same_words(a: _Batch, ka: np.ndarray, b: _Batch, kb: np.ndarray, n: int) -> np.ndarray:
    """Whether n-gram ka[i] of batch a equals n-gram kb[i] of batch b, compared byte by byte."""
    if len(ka) == 0:
        return np.zeros(0, dtype=bool)
    wa = (ka[:, None] + np.arange(n)).ravel()
    wb = (kb[:, None] + np.arange(n)).ravel()
    eq = _equal_spans(a.buf, a.ws[wa], a.we[wa], b.buf, b.ws[wb], b.we[wb])
    return eq.reshape(len(ka), n).all(axis=1)


def _equal_spans(buf_a: np.ndarray, sa: np.ndarray, ea: np.ndarray,
                 buf_b: np.ndarray, sb: np.ndarray, eb: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Whether buf_a[sa:ea] == buf_b[sb:eb], element-wise (all spans non-empty)."""
    out = (ea - sa) == (eb - sb)
    idx = np.flatnonzero(out)
    for lo in range(0, len(idx), chunk):  # chunks keep the gathered byte indices small
        sel = idx[lo: lo + chunk]
        ln = ea[sel] - sa[sel]
        first = np.concatenate([[0], np.cumsum(ln)[:-1]])
        ramp = np.arange(int(ln.sum())) - np.repeat(first, ln)
        same = buf_a[np.repeat(sa[sel], ln) + ramp] == buf_b[np.repeat(sb[sel], ln) + ramp]
        out[sel] = np.logical_and.reduceat(same, first)
    return out


def normalize_texts(texts: Texts, batch_size: int = 8192) -> pa.LargeStringArray:
    """Each text's words joined by single spaces (vectorised :func:`normalize_text`)."""
    if len(texts) > batch_size:
        return pa.concat_arrays([_normalize_batch(texts[i: i + batch_size])
                                 for i in range(0, len(texts), batch_size)])
    return _normalize_batch(texts)


def _normalize_batch(texts: Texts) -> pa.LargeStringArray:
    b = tokenize_batch(texts)
    nt = len(b.text_start) - 1
    if len(b.ws) == 0:
        return pa.array([""] * nt, type=pa.large_string())
    tw = b.text_of_word()
    keep = b.buf != 0
    between = np.flatnonzero(tw[1:] == tw[:-1])  # word k is followed by a word of its text
    out = b.buf.copy()
    out[b.we[between]] = 32  # the first separator byte after such a word becomes a space
    keep[b.we[between]] = True
    # Every kept byte of text i lies inside its slot, so offsets are kept-byte counts.
    csum = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    offsets = csum[b.text_start]
    data = out[keep]
    return pa.LargeStringArray.from_buffers(nt, pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))


# --------------------------------------------------------------------------- results


@dataclass
class Overlaps:
    """Per training row: which benchmarks it shares an n-gram with, and one shared n-gram.

    ``matches[i, j]`` is True when training row i overlaps benchmark ``benchmarks[j]``;
    ``flags`` is the row-wise any; ``evidence[i]`` is the first shared n-gram of row i (its
    words joined by spaces), or None for a clean row.
    """

    benchmarks: list[str]
    matches: np.ndarray
    evidence: list[str | None] = field(default_factory=list)

    @property
    def flags(self) -> np.ndarray:
        """Bool per training row: overlaps at least one benchmark."""
        return self.matches.any(axis=1)

    def column(self, benchmark: str) -> np.ndarray:
        """Bool per training row: overlaps this benchmark."""
        return self.matches[:, self.benchmarks.index(benchmark)]

    def benchmarks_of(self, row: int) -> list[str]:
        """Names of the benchmarks training row `row` overlaps, in benchmark order."""
        return [self.benchmarks[j] for j in np.flatnonzero(self.matches[row])]

    def __len__(self) -> int:
        return len(self.matches)


def _flatten_views(texts) -> tuple[Texts, np.ndarray, int]:
    """(texts of every view, the row index of each view, number of rows).

    Arrow input stays Arrow (batches are converted to Python one at a time)."""
    if isinstance(texts, pa.ChunkedArray | pa.Array):
        if pa.types.is_list(texts.type) or pa.types.is_large_list(texts.type):
            parents = pc.list_parent_indices(texts).to_numpy(zero_copy_only=False)
            return pc.list_flatten(texts), parents.astype(np.int64), len(texts)
        return texts, np.arange(len(texts)), len(texts)
    rows_in = _to_list(texts)
    if set(map(type, rows_in)) <= {str, type(None)}:
        return rows_in, np.arange(len(rows_in)), len(rows_in)
    flat: list[str | None] = []
    rows: list[int] = []
    for i, t in enumerate(rows_in):
        views = [t] if t is None or isinstance(t, str) else list(t)
        flat.extend(views)
        rows.extend([i] * len(views))
    return flat, np.asarray(rows, dtype=np.int64), len(rows_in)


_BIT = np.array([1, 2, 4, 8, 16, 32, 64, 128], dtype=np.uint8)


class NgramIndex:
    """The n-grams of one or more benchmarks, built once and queried with training batches.

    `hash_bits` below 64 deliberately weakens the hash (the tests use it to force
    collisions; results stay exact because every hit is verified byte by byte).
    """

    def __init__(self, bench_texts: Mapping[str, Sequence] | Sequence, n: int = 16,
                 hash_bits: int = 64, seed: int = 0x5EED, batch_size: int = 2048):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n = n
        # Weakening keeps the top bits, which are the ones the index sorts and screens on.
        self.mask = _U64(((1 << 64) - 1) ^ ((1 << (64 - min(hash_bits, 64))) - 1))
        rng = np.random.default_rng(seed)
        self._base = int(rng.integers(1 << 40, 1 << 62)) * 2 + 1
        named = ({str(k): v for k, v in bench_texts.items()} if isinstance(bench_texts, Mapping)
                 else {"benchmark": bench_texts})
        self.benchmarks = list(named)
        flat: list[str | None] = []
        text_bench: list[int] = []
        for j, texts in enumerate(named.values()):
            views, _rows, _count = _flatten_views(texts)
            flat.extend(_to_list(views))
            text_bench.extend([j] * len(views))
        # Tokenise and hash in batches (cache-sized arrays are several times faster), keeping
        # each batch compact (int32 positions) for the byte-wise verification of hits.
        # Sort (hash, first word) packed in one uint64: the low 32 bits carry the n-gram's
        # first word, so a plain np.sort replaces a much slower argsort plus gathers; the 32
        # hash bits left make candidates a little more frequent, and every candidate is
        # verified anyway.
        self._slot_bits = 32
        low = _U64((1 << self._slot_bits) - 1)
        self._hi_mask = ~low
        # Output arrays are allocated once with room to spare and filled batch by batch:
        # pages never written cost nothing, while touching fresh memory is slow on some hosts.
        est = sum(len(t) for t in flat if t) + len(flat) + 64
        pos = np.int32 if est < 2**30 else np.int64
        buf, ws, we = _Growable(np.uint8, est + est // 4), _Growable(pos, est // 2 + 16), \
            _Growable(pos, est // 2 + 16)
        keys_out = _Growable(_U64, est // 2 + 16)
        text_start: list[np.ndarray] = []
        first_word: list[np.ndarray] = []
        for i in range(0, max(len(flat), 1), batch_size):
            x = tokenize_batch(flat[i: i + batch_size])
            h = _gram_hashes(x, n, self._base)
            f = np.arange(len(h))
            f = f[_inside(x, f, n)]
            h = h[f] & (self.mask & self._hi_mask)
            h |= (f + ws.size).astype(_U64)
            keys_out.extend(h)
            text_start.append(x.text_start[:-1] + buf.size)
            first_word.append(x.first_word[:-1] + ws.size)
            ws.extend(x.ws + buf.size)
            we.extend(x.we + buf.size)
            buf.extend(x.buf)
        if ws.size >= 1 << self._slot_bits:
            raise ValueError("the benchmark texts have more than 2**32 words")
        b = _Batch(buf.view(), np.concatenate(text_start + [[buf.size]]), ws.view(), we.view(),
                   np.concatenate(first_word + [[ws.size]]))
        self._batch = b
        keys = keys_out.view()
        m = len(keys)
        self.num_grams = m
        keys.sort()
        self._keys = keys  # the whole index: sorted (hash << 32 | first word of the n-gram)
        self._low = low
        # Benchmarks own contiguous runs of texts, hence of words.
        texts_per_bench = np.bincount(np.asarray(text_bench, np.int64), minlength=len(self.benchmarks))
        self._bench_first_word = b.first_word[np.concatenate([[0], np.cumsum(texts_per_bench)[:-1]])]
        # The hash halves as a strided uint32 view (no copy).
        hi32 = keys.view(np.uint32)[1::2] if sys.byteorder == "little" else keys.view(np.uint32)[0::2]
        # A key repeating the previous key's hash is the same n-gram again (in another text,
        # maybe of another benchmark) or a true hash collision, which goes to a small exact
        # side table. Either way the group's first key is what queries compare against.
        later = np.flatnonzero(hi32[1:] == hi32[:-1]) + 1
        head = np.searchsorted(keys, keys[later] & self._hi_mask)
        later_word, head_word = self._slot(keys[later]), self._slot(keys[head])
        same = _same_words(b, later_word, b, head_word, n)
        later_bench, head_bench = self._bench_of(later_word), self._bench_of(head_word)
        self._extra: dict[int, set[int]] = {}  # group head -> further benchmarks with its n-gram
        extra = same & (later_bench != head_bench)
        for g, j in zip(head[extra].tolist(), later_bench[extra].tolist(), strict=True):
            self._extra.setdefault(g, set()).add(j)
        self._extra_heads = np.array(sorted(self._extra), dtype=np.int64)
        self._collided: dict[int, list[tuple[str, set[int]]]] = {}
        for i in np.flatnonzero(~same):
            gram = b.words_of(int(later_word[i]), n)
            entries = self._collided.setdefault(int(keys[later[i]] & self._hi_mask), [])
            for g, benches in entries:
                if g == gram:
                    benches.add(int(later_bench[i]))
                    break
            else:
                entries.append((gram, {int(later_bench[i])}))
        self._collided_keys = np.array(sorted(self._collided), dtype=_U64)
        # A bit set over the top hash bits (1-3% full) rejects most misses with one read.
        groups = m - len(later)
        size_bits = int(np.clip(max(groups, 1).bit_length() + 6, 16, 31))
        self._shift = _U64(64 - size_bits)
        self._bits = np.zeros(1 << (size_bits - 3), dtype=np.uint8)
        for lo in range(0, m, 1 << 20):  # chunks bound the temporaries
            top = (hi32[lo: lo + (1 << 20)] >> np.uint32(32 - size_bits)).astype(np.int64)  # sorted
            byte = top >> 3
            first = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])
            self._bits[byte[first]] |= np.bitwise_or.reduceat(_BIT[top & 7], first)

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        return (keys & self._low).astype(np.int64)

    def _bench_of(self, word: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._bench_first_word, word, side="right") - 1

    def query(self, train_texts: Texts | Sequence[Sequence[str]], batch_size: int = 2048) -> Overlaps:
        """Overlaps of training rows (each a text or a sequence of texts) with the benchmarks."""
        flat, row_of, n_rows = _flatten_views(train_texts)
        matches = np.zeros((n_rows, len(self.benchmarks)), dtype=bool)
        evidence: list[str | None] = [None] * n_rows
        for lo in range(0, len(flat), batch_size):
            self._query_batch(flat[lo: lo + batch_size], row_of[lo: lo + batch_size], matches, evidence)
        return Overlaps(list(self.benchmarks), matches, evidence)

    def _query_batch(self, texts: list, rows: np.ndarray, matches: np.ndarray,
                     evidence: list[str | None]) -> None:
        if len(self._keys) == 0:
            return
        b = tokenize_batch(texts)
        h = _gram_hashes(b, self.n, self._base)
        if self.mask != _U64((1 << 64) - 1):  # weakened hashes (tests): screen what was indexed
            h &= self.mask
        # The screen reads only the top bits; masking and the text-boundary check are left
        # to the few survivors.
        byte = (h >> (self._shift + _U64(3))).view(np.int64)
        bit = ((h >> self._shift) & _U64(7)).view(np.int64)
        keep = np.flatnonzero((self._bits[byte] & _BIT[bit]) != 0)  # bool: the fast nonzero
        keep = keep[_inside(b, keep, self.n)]
        if len(keep) == 0:
            return
        # Sorted needles make the binary searches cache-friendly (several times faster).
        h = h[keep] & self._hi_mask
        order = np.argsort(h)
        first, h = keep[order], h[order]
        pos = np.minimum(np.searchsorted(self._keys, h), len(self._keys) - 1)
        cand = np.flatnonzero((self._keys[pos] & self._hi_mask) == h)
        pos = pos[cand]
        head_word = self._slot(self._keys[pos])
        ok = _same_words(b, first[cand], self._batch, head_word, self.n)
        cand, pos = cand[ok], pos[ok]
        hit_gram = [first[cand]]
        hit_bench = [self._bench_of(head_word[ok])]
        if len(self._extra_heads):
            more_of = np.isin(pos, self._extra_heads)
            for c, head in zip(cand[more_of].tolist(), pos[more_of].tolist(), strict=True):
                more = self._extra[head]
                hit_gram.append(np.full(len(more), first[c], np.int64))
                hit_bench.append(np.fromiter(more, np.int64, len(more)))
        if len(self._collided_keys):
            for c in np.flatnonzero(np.isin(h, self._collided_keys)):
                gram = b.words_of(int(first[c]), self.n)
                for g_words, benches in self._collided[int(h[c])]:
                    if g_words == gram:
                        hit_gram.append(np.full(len(benches), first[c], np.int64))
                        hit_bench.append(np.fromiter(benches, np.int64))
        grams = np.concatenate(hit_gram)
        if len(grams) == 0:
            return
        text = np.searchsorted(b.first_word, grams, side="right") - 1
        matches[rows[text], np.concatenate(hit_bench)] = True
        # Evidence: the earliest shared n-gram of each row (views in order, then position).
        order = np.lexsort((grams, text))
        grams, text = grams[order], text[order]
        for i in np.flatnonzero(np.r_[True, rows[text[1:]] != rows[text[:-1]]]):
            row = int(rows[text[i]])
            if evidence[row] is None:
                evidence[row] = b.words_of(int(grams[i]), self.n)


def find_exact_short(train_texts: Texts, bench_texts: Mapping[str, Texts], n: int = 16) -> Overlaps:
    """Per training row: which benchmarks hold the very same text, for texts under n words.

    The n-gram check cannot see a text shorter than n words, so a verbatim copy of a short
    question would pass it; this check compares such texts whole, after the same
    normalisation (``normalize_text``). None and empty texts never match.
    """
    names = [str(b) for b in bench_texts]
    index: dict[str, list[int]] = {}
    for j, texts in enumerate(bench_texts.values()):
        for t in normalize_texts(texts).to_pylist():
            if t and t.count(" ") + 1 < n:
                hits = index.setdefault(t, [])
                if not hits or hits[-1] != j:
                    hits.append(j)
    train = normalize_texts(train_texts).to_pylist()
    matches = np.zeros((len(train), len(names)), dtype=bool)
    evidence: list[str | None] = [None] * len(train)
    for i, t in enumerate(train):
        hits = index.get(t) if t else None
        if hits:
            matches[i, hits] = True
            evidence[i] = t
    return Overlaps(names, matches, evidence)


def find_overlaps(train_texts: Texts | Sequence[Sequence[str]],
                  bench_texts: Mapping[str, Sequence] | Sequence, n: int = 16,
                  batch_size: int = 2048) -> Overlaps:
    """Per training row, whether it shares a word n-gram with each benchmark (see module doc).

    `train_texts`: one text per row, or one sequence of texts (views) per row, or an Arrow
    string array. `bench_texts`: {benchmark name: texts} or a plain list (one benchmark
    named "benchmark"); its entries may be texts or sequences of views too. Returns an
    :class:`Overlaps`.
    """
    return NgramIndex(bench_texts, n=n).query(train_texts, batch_size=batch_size)
