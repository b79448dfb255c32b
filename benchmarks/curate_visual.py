"""Visual usability checks on large JPEGs: medrecipe's measure_image against a plain version.

    python benchmarks/curate_visual.py --n 200 --size 2048

Generates N JPEGs of SIZE x SIZE (smooth structure, edges and noise, quality 90), then, in
the same process and over the same bytes, runs:

- medrecipe: `medrecipe.curate.visual.measure_image` (header-only size and JPEG quality,
  DCT-domain reduced-size decoding to the 1024-px analysis image, float32 Pillow pyramid),
  one thread, then `measure_many` with a thread per core;
- plain: a straightforward Pillow + numpy implementation of the same measures: full
  decode, float64 numpy arrays at full resolution, the same Laplacian, border band, 2x
  round-trip octave energies (numpy box reduction, numpy bilinear enlargement) and the
  same quantisation-table quality estimate.

Prints images/s for each, the ratios, and how often the two agree on pass / fail under the
default thresholds.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import time

import numpy as np
from PIL import Image


def make_jpeg(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = 120 + 70 * np.sin(7.0 * xx + seed) * np.cos(5.0 * yy)
    base += 60 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.08)  # an organ-like disc with an edge
    arr = np.stack([base, 0.8 * base + 20, 0.7 * base + 30], -1) + rng.normal(0, 8, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# --------------------------------------------------------------------------- the plain version


def _up2(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear 2x enlargement of a box-reduced image (pixel centres aligned), numpy only."""
    p = np.pad(a, 1, mode="edge")
    rows = np.empty((2 * a.shape[0], p.shape[1]))
    rows[0::2] = 0.75 * p[1:-1] + 0.25 * p[:-2]
    rows[1::2] = 0.75 * p[1:-1] + 0.25 * p[2:]
    out = np.empty((rows.shape[0], 2 * a.shape[1]))
    out[:, 0::2] = 0.75 * rows[:, 1:-1] + 0.25 * rows[:, :-2]
    out[:, 1::2] = 0.75 * rows[:, 1:-1] + 0.25 * rows[:, 2:]
    return out[:shape[0], :shape[1]]


def plain_measures(data: bytes) -> dict[str, float]:
    from medrecipe.curate.visual import NEAR_WHITE, OCTAVE_DETAIL, estimate_jpeg_quality

    img = Image.open(io.BytesIO(data))
    quality = estimate_jpeg_quality(img.quantization[0]) if img.format == "JPEG" else math.nan
    g = np.asarray(img.convert("L"), dtype=np.float64)
    h, w = g.shape
    bh, bw = max(1, round(0.04 * h)), max(1, round(0.04 * w))
    white = g >= NEAR_WHITE
    band = (white.sum() - white[bh:h - bh, bw:w - bw].sum()) / (h * w - (h - 2 * bh) * (w - 2 * bw))
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    energies, cur = [], g
    for _ in range(4):
        hh, ww = cur.shape[0] // 2 * 2, cur.shape[1] // 2 * 2
        if min(hh, ww) < 16:
            break
        cur = cur[:hh, :ww]
        down = cur.reshape(hh // 2, 2, ww // 2, 2).mean(axis=(1, 3))
        energies.append(float(((cur - _up2(down, cur.shape)) ** 2).mean()))
        cur = down
    ratios = [energies[k] / energies[k + 1] for k in range(len(energies) - 1)]
    k = next((i for i, r in enumerate(ratios) if r >= OCTAVE_DETAIL), len(ratios))
    return {"short_side": float(min(h, w)), "aspect_ratio": max(h, w) / min(h, w),
            "border_white_fraction": float(band), "sharpness": float(lap.var()),
            "effective_resolution": min(h, w) / 2 ** k, "jpeg_quality": quality,
            "blockiness": math.nan}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    from medrecipe.curate.config import VisualConfig
    from medrecipe.curate.visual import failed_checks, measure_image, measure_many

    t0 = time.perf_counter()
    blobs = [make_jpeg(args.size, i) for i in range(args.n)]
    print(f"generated {args.n} JPEGs of {args.size}x{args.size} "
          f"({sum(map(len, blobs)) / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s; "
          f"{os.cpu_count()} cores")
    measure_image(blobs[0])
    plain_measures(blobs[0])  # warm both paths

    rates, outs = {}, {}
    for name, fn in (("plain Pillow + numpy, full decode", plain_measures),
                     ("medrecipe measure_image", measure_image)):
        t0 = time.perf_counter()
        outs[name] = [fn(b) for b in blobs]
        rates[name] = args.n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    got = measure_many([(str(i), (lambda b=b: b)) for i, b in enumerate(blobs)],
                       workers=args.workers)
    threaded = args.n / (time.perf_counter() - t0)
    assert all(e is None for _, _, e in got)

    cfg = VisualConfig()
    plain, ours = outs["plain Pillow + numpy, full decode"], outs["medrecipe measure_image"]
    agree = sum(bool(failed_checks(a, cfg)) == bool(failed_checks(b, cfg))
                for a, b in zip(plain, ours, strict=True)) / args.n
    base = rates["plain Pillow + numpy, full decode"]
    for name, r in rates.items():
        print(f"{name:40s} {r:8.1f} images/s  ({r / base:.2f}x)")
    print(f"{'medrecipe measure_many, threads':40s} {threaded:8.1f} images/s  "
          f"({threaded / base:.2f}x)")
    print(f"pass/fail agreement under the default thresholds: {agree:.1%}")


if __name__ == "__main__":
    main()
