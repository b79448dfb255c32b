"""Pixel-level usability of figure images, measured before any model is paid.

`measure_image(data)` returns every measure of one encoded image as floats (NaN where a
measure does not apply). The names are stable; the visual stage stores all of them per
record, so a user can change thresholds and re-run without decoding anything again.

| measure | meaning |
|---|---|
| `width`, `height` | pixel size of the original image |
| `short_side` | min(width, height) |
| `aspect_ratio` | long side / short side (>= 1) |
| `border_white_fraction` | share of near-white pixels (grey >= 235) in the outer band (4 % of each side) |
| `sharpness` | variance of the 4-neighbour Laplacian of the grey analysis image |
| `top_octave_ratio` | detail lost by a 2x down/up round trip, over that lost by the same trip one octave coarser |
| `effective_resolution` | short side / 2^k, k the number of finest octaves without real detail (ratio < 0.3) (px) |
| `jpeg_quality` | quality (1-100) estimated from the JPEG luminance quantisation table; NaN if not JPEG |
| `blockiness` | mean step across 8x8 block edges over the mean step elsewhere; NaN for JPEG files |
| `analysis_scale` | analysis image width / original width (reduced-size decoding and reduction) |

The analysis image is the grey image reduced by an integer factor until its longest side is
at most `analysis_side` (1024 by default); a large JPEG is decoded at that reduced size by
the DCT decoder (`Image.draft`), so `sharpness`, the border band and the round-trip measures
never pay for a full decode. `effective_resolution` is therefore capped at the analysis
size. Blockiness needs the native block grid and is computed on the full-resolution grey
image of non-JPEG files (images re-saved as PNG after JPEG compression).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from medrecipe.curate.config import VisualConfig
from medrecipe.errors import ImageError
from medrecipe.images import decode_image_bytes, is_dicom, to_rgb

ANALYSIS_SIDE = 1024
BORDER_BAND = 0.04  # band width as a share of each side
NEAR_WHITE = 235  # grey level from which a pixel counts as near-white
OCTAVE_DETAIL = 0.3  # octave energy ratio from which an octave holds real detail
ROUND_TRIPS = 3  # octaves compared for effective_resolution (down to 1/8 of the analysis size)
BLOCK_MAX_SIDE = 2048  # blockiness reads at most this crop of the native image

MEASURE_VERSION = 1  # bump when a measure's definition changes (re-measures every image)
MEASURES: tuple[str, ...] = (
    "width", "height", "short_side", "aspect_ratio", "border_white_fraction", "sharpness",
    "top_octave_ratio", "effective_resolution", "jpeg_quality", "blockiness", "analysis_scale",
)

# IJG / JPEG Annex K luminance table (natural order), the base that quality scaling multiplies.
_STD_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


# --------------------------------------------------------------------------- measures


def estimate_jpeg_quality(table: Iterable[int]) -> float:
    """IJG quality (1-100) that best explains a luminance quantisation table."""
    q = np.asarray(list(table), dtype=np.float64)
    if q.size != 64:
        return float("nan")
    # The IJG encoder scales the base table by S = 5000/Q (Q < 50) or 200 - 2Q (Q >= 50) percent
    # and clips entries to 1..255; a least-squares fit of S over the unclipped entries
    # inverts it.
    free = (q > 1) & (q < 255)
    if not free.any():
        scale = float(np.mean(q / _STD_LUMINANCE) * 100)
    else:
        s = _STD_LUMINANCE[free]
        scale = float(np.dot(q[free], s) / np.dot(s, s) * 100)
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return float(min(100.0, max(1.0, quality)))


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D float array."""
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    c = grey[1:-1, 1:-1]
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * c
    return float(lap.var())


def border_white_fraction(grey: np.ndarray, band: float = BORDER_BAND,
                          level: int = NEAR_WHITE) -> float:
    """Share of near-white pixels in the outer band of a grey image."""
    h, w = grey.shape
    bh, bw = max(1, round(band * h)), max(1, round(band * w))
    if 2 * bh >= h or 2 * bw >= w:
        return float((grey >= level).mean())
    white = grey >= level
    inner = white[bh:h - bh, bw:w - bw]
    band_pixels = h * w - inner.size
    return float((white.sum() - inner.sum()) / band_pixels)


def octave_energies(grey: np.ndarray, octaves: int = ROUND_TRIPS + 1) -> list[float]:
    """Mean squared detail lost by a 2x round trip (box down, bilinear up) per pyramid level.

    Energies are per pixel of their level, so levels compare directly: natural detail and
    noise keep the finer octaves within a small factor of the coarser ones, while an image
    enlarged from a smaller one has almost nothing in the octaves above its true size.
    """
    energies: list[float] = []
    cur = Image.fromarray(grey, "F")
    for _ in range(octaves):
        w, h = cur.size
        w2, h2 = w - w % 2, h - h % 2
        if min(w2, h2) < 16:
            break
        if (w2, h2) != (w, h):
            cur = cur.crop((0, 0, w2, h2))
        down = cur.reduce(2)
        up = down.resize((w2, h2), Image.Resampling.BILINEAR)
        diff = np.asarray(cur, dtype=np.float32) - np.asarray(up, dtype=np.float32)
        energies.append(float(np.mean(diff * diff)))
        cur = down
    return energies


def round_trip_measures(grey: np.ndarray) -> tuple[float, float]:
    """(top_octave_ratio, effective_resolution) of a grey analysis image."""
    short = min(grey.shape)
    e = octave_energies(grey)
    if len(e) < 2:
        return float("nan"), float(short)
    ratios = [e[k] / e[k + 1] if e[k + 1] > 1e-9 else 0.0 for k in range(len(e) - 1)]
    k = next((i for i, r in enumerate(ratios) if r >= OCTAVE_DETAIL), len(ratios))
    return float(ratios[0]), float(short / 2 ** k)


def blockiness(grey: np.ndarray, block: int = 8) -> float:
    """Mean absolute step across block edges over the mean step inside blocks (1 = none)."""
    h, w = grey.shape
    if h < 2 * block or w < 2 * block:
        return float("nan")
    ratios = []
    for d in (np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0)).T):
        # d[:, j] is the step between columns j and j+1; block edges sit at j = 7, 15, ...
        edge = d[:, block - 1::block]
        mask = np.ones(d.shape[1], dtype=bool)
        mask[block - 1::block] = False
        inside = d[:, mask]
        ratios.append((float(edge.mean()) + 0.5) / (float(inside.mean()) + 0.5))
    return float(np.mean(ratios))


def _grey(img: Image.Image) -> Image.Image:
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "RGBA", "LA", "P", "PA"):
        img = to_rgb(img)  # 16-bit scaled to 8 bits, transparency flattened on white
    return img.convert("L")


def measure_image(data: bytes, *, analysis_side: int = ANALYSIS_SIDE) -> dict[str, float]:
    """Every visual usability measure of one encoded image (names in MEASURES)."""
    if not data:
        raise ImageError("empty image file")
    jpeg_q = float("nan")
    if is_dicom(data):
        img = decode_image_bytes(data)
        fmt = "DICOM"
    else:
        try:
            img = Image.open(io.BytesIO(data))
            fmt = img.format or ""
        except Exception:  # noqa: BLE001 - headerless DICOM and the like
            img, fmt = decode_image_bytes(data), ""
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    longest = max(width, height)
    factor = max(1, math.ceil(longest / analysis_side))
    try:
        if fmt == "JPEG":
            tables = getattr(img, "quantization", None) or {}
            if 0 in tables:
                jpeg_q = estimate_jpeg_quality(tables[0])
            if factor > 1:
                # Decode at 1/2, 1/4 or 1/8 scale, never below the analysis size.
                img.draft("L", (math.ceil(width / factor), math.ceil(height / factor)))
        img.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"undecodable image: {e}") from None
    decoded = _grey(img)  # a JPEG may already be at reduced size here
    block = float("nan")
    if fmt not in ("JPEG", "DICOM"):
        crop = decoded.crop((0, 0, min(decoded.width, BLOCK_MAX_SIDE),
                             min(decoded.height, BLOCK_MAX_SIDE)))
        block = blockiness(np.asarray(crop, dtype=np.float32))
    rest = max(1, math.ceil(max(decoded.size) / analysis_side))
    analysis = decoded.reduce(rest) if rest > 1 else decoded
    grey = np.asarray(analysis, dtype=np.float32)
    top, effective = round_trip_measures(grey)
    return {
        "width": float(width),
        "height": float(height),
        "short_side": float(min(width, height)),
        "aspect_ratio": float(longest / min(width, height)),
        "border_white_fraction": border_white_fraction(grey),
        "sharpness": laplacian_variance(grey),
        "top_octave_ratio": top,
        "effective_resolution": effective,
        "jpeg_quality": jpeg_q,
        "blockiness": block,
        "analysis_scale": float(analysis.width / width),
    }


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class VisualCheck:
    """One usability check: the measure it reads, the config threshold and the direction."""

    reason: str  # quarantine reason (prefixed "visual:")
    measure: str
    threshold: str  # VisualConfig field
    minimum: bool  # True: the measure must be >= threshold; False: <= threshold
    geometry: bool = False  # size and layout checks, reported before the pixel checks


CHECKS: tuple[VisualCheck, ...] = (
    VisualCheck("too_small", "short_side", "min_short_side", True, geometry=True),
    VisualCheck("aspect_ratio", "aspect_ratio", "max_aspect_ratio", False, geometry=True),
    VisualCheck("padded_border", "border_white_fraction", "max_border_white_fraction", False,
                geometry=True),
    VisualCheck("blurry", "sharpness", "min_sharpness", True),
    VisualCheck("upsampled", "effective_resolution", "min_effective_resolution", True),
    VisualCheck("jpeg_quality", "jpeg_quality", "min_jpeg_quality", True),
    VisualCheck("blocky", "blockiness", "max_blockiness", False),
)


def failed_checks_batch(columns: Mapping[str, Sequence[float]], config: VisualConfig
                        ) -> list[list[str]]:
    """Per image, the checks it fails, main failure first (NaN or null threshold: passes).

    Geometry comes first (too_small, aspect_ratio, padded_border, in that order); the pixel
    checks after them are ordered by how far the measure lies beyond its threshold (the log
    of their ratio), so an enlarged thumbnail is "upsampled" first although it is also soft,
    and a blurred photograph "blurry" first although it also lacks fine detail.
    """
    n = len(next(iter(columns.values()))) if columns else 0
    found: list[list[tuple[float, int, str]]] = [[] for _ in range(n)]
    for order, c in enumerate(CHECKS):
        limit = getattr(config, c.threshold)
        if limit is None or c.measure not in columns:
            continue
        v = np.asarray(columns[c.measure], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN compares False
            bad = (v < limit) if c.minimum else (v > limit)
            margin = np.log(limit / v) if c.minimum else np.log(v / limit)
        for i in np.flatnonzero(bad):
            m = float(margin[i]) if np.isfinite(margin[i]) else math.inf
            found[i].append((c.geometry, -m if not c.geometry else order, order, c.reason))
    return [[x[-1] for x in sorted(f, key=lambda x: (not x[0], x[1], x[2]))] for f in found]


def failed_checks(measures: Mapping[str, float], config: VisualConfig) -> list[str]:
    """Reasons of the checks one image fails (a NaN measure or a null threshold is skipped)."""
    return failed_checks_batch({k: [v] for k, v in measures.items()}, config)[0]


def describe_failure(reason: str, measures: Mapping[str, float], config: VisualConfig) -> str:
    """`sharpness 12.3 < 20 (min_sharpness)` for one failed check."""
    c = next(c for c in CHECKS if c.reason == reason)
    op = "<" if c.minimum else ">"
    return f"{c.measure} {measures[c.measure]:.4g} {op} {getattr(config, c.threshold):g} ({c.threshold})"


def measure_many(items: Iterable[tuple[str, Callable[[], bytes]]], *,
                 analysis_side: int = ANALYSIS_SIDE, workers: int | None = None,
                 on_done: Callable[[int], None] | None = None
                 ) -> list[tuple[str, dict[str, float] | None, str | None]]:
    """Measure many images in threads: (key, measures or None, error or None) in input order."""

    def work(pair: tuple[str, Callable[[], bytes]]):
        key, read = pair
        try:
            return key, measure_image(read(), analysis_side=analysis_side), None
        except Exception as e:  # noqa: BLE001 - reported per image, the stage goes on
            return key, None, f"{type(e).__name__}: {e}"

    out = []
    n = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n) as pool:  # Pillow decodes without the GIL
        for res in pool.map(work, list(items)):
            out.append(res)
            if on_done is not None:
                on_done(1)
    return out
