"""Resize every image to the Qwen-VL smart-resize size, stored once per (content hash, size).

A JPEG much larger than its target is decoded at reduced size by the DCT decoder
(`Image.draft`, scale 1/2, 1/4 or 1/8, never below the target) before the final resample,
so the cost is bounded by decoding a small image rather than decompressing the full one.
Pillow releases the GIL while decoding and resampling, so a thread pool scales with cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from medrecipe.config import ResizeConfig
from medrecipe.images import ImageStore, decode_image_bytes, parse_ref, smart_resize, to_rgb

RESAMPLE = Image.Resampling.BICUBIC


def target_size(width: int, height: int, config: ResizeConfig) -> tuple[int, int]:
    """(width, height) after smart resize."""
    h, w = smart_resize(height, width, factor=config.factor, min_pixels=config.min_pixels,
                        max_pixels=config.max_pixels)
    return w, h


def load_for_size(path, size: tuple[int, int]) -> Image.Image:
    """Decode an image file, using reduced-size JPEG decoding when `size` allows it."""
    img = Image.open(path)
    if img.format == "JPEG" and (img.width >= 2 * size[0] and img.height >= 2 * size[1]):
        img.draft("RGB", size)  # picks the largest DCT scale whose output is still >= size
    img.load()
    return to_rgb(img)


def resize_ref(store: ImageStore, ref: str, config: ResizeConfig) -> str:
    """Ref of the smart-resized copy of image `ref` (the original ref when already that size)."""
    sha, _ = parse_ref(ref)
    path = store.path(sha)
    with Image.open(path) as probe:
        width, height = probe.size
    size = target_size(width, height, config)
    if size == (width, height):
        return sha
    existing = f"{sha}@{size[1]}x{size[0]}"
    if store.has(existing):
        return existing
    try:
        img = load_for_size(path, size)
    except OSError:
        img = to_rgb(decode_image_bytes(path.read_bytes()))
    return store.put_resized(sha, img.resize(size, RESAMPLE))


@dataclass
class ResizeReport:
    """What the resize step did: per original ref its new ref, plus failures."""

    mapping: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    resized: int = 0


def resize_all(refs: Iterable[str], store: ImageStore, config: ResizeConfig) -> ResizeReport:
    """Resize each distinct image once (threads); failures are reported per ref, not raised."""
    unique = sorted({parse_ref(r)[0] for r in refs})
    report = ResizeReport()

    def work(sha: str) -> tuple[str, str | None, str | None]:
        try:
            return sha, resize_ref(store, sha, config), None
        except Exception as e:  # noqa: BLE001 - reported per image, the stage goes on
            return sha, None, f"{type(e).__name__}: {e}"

    workers = config.workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for sha, new, err in pool.map(work, unique):
            if err is not None:
                report.errors[sha] = err
            else:
                report.mapping[sha] = new
                report.resized += new != sha
    return report
