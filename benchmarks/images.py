"""Smart resize + hashing of large JPEGs: reduced-size DCT decoding against open-then-resize.

    python benchmarks/images.py --n 1000 --size 2048

Generates N JPEGs of SIZE x SIZE (gradients plus noise, so they compress like photographs),
then, in the same process, runs both paths over the same files:

- medrecipe: SHA-256 of the bytes, smart-resize target from the header, JPEG draft decoding
  at the largest 1/2, 1/4, 1/8 scale that stays >= the target, one bicubic resample;
- naive: SHA-256 of the bytes, full decode, one bicubic resample to the same target.

Prints images/s for each, the speed ratio, and the largest per-pixel difference between the
two outputs (and the mean), so the shortcut's effect on pixels is visible.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpeg(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = 128 + 100 * np.sin(6.0 * xx + seed) * np.cos(4.0 * yy)
    g = 128 + 90 * np.cos(5.0 * yy + seed * 0.5)
    b = 128 + 80 * np.sin(3.0 * (xx + yy))
    arr = np.stack([r, g, b], -1) + rng.normal(0, 12, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=88)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--max-pixels", type=int, default=262_144)
    args = ap.parse_args()

    from medrecipe.config import ResizeConfig
    from medrecipe.prepare.resize import RESAMPLE, load_for_size, target_size

    cfg = ResizeConfig(max_pixels=args.max_pixels)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = []
        for i in range(args.n):
            p = Path(tmp) / f"{i}.jpg"
            p.write_bytes(make_jpeg(args.size, i))
            paths.append(p)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"generated {args.n} JPEGs of {args.size}x{args.size} ({mb:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f}s")

        def fast(p: Path) -> np.ndarray:
            data = p.read_bytes()
            hashlib.sha256(data).hexdigest()
            with Image.open(io.BytesIO(data)) as probe:
                size = target_size(*probe.size, cfg)
            return np.asarray(load_for_size(io.BytesIO(data), size).resize(size, RESAMPLE))

        def naive(p: Path) -> np.ndarray:
            data = p.read_bytes()
            hashlib.sha256(data).hexdigest()
            img = Image.open(io.BytesIO(data)).convert("RGB")
            return np.asarray(img.resize(target_size(*img.size, cfg), RESAMPLE))

        results = {}
        outs = {}
        for name, fn in (("naive open-then-resize", naive), ("medrecipe draft decode", fast)):
            t0 = time.perf_counter()
            outs[name] = [fn(p) for p in paths]
            results[name] = args.n / (time.perf_counter() - t0)
            print(f"{name}: {results[name]:,.1f} images/s")
        a, b = outs.values()
        diffs = [np.abs(x.astype(np.int16) - y.astype(np.int16)) for x, y in zip(a, b, strict=True)]
        h, w = a[0].shape[:2]
        print(f"target size {w}x{h}; speed ratio {results['medrecipe draft decode'] / results['naive open-then-resize']:.2f}x")
        print(f"pixel difference vs naive: max {max(int(d.max()) for d in diffs)}, "
              f"mean {float(np.mean([d.mean() for d in diffs])):.2f} (0-255 scale)")


if __name__ == "__main__":
    main()
