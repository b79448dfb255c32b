"""A crafted image set for the visual checks: clean pictures and degraded copies of each kind.

Clean pictures come from five families that imitate what figure panels look like (1/f
texture, a radiograph-like body, a CT-like slice, an H&E-like tissue patch, a fundus-like
disc), 384-704 px, saved as JPEG (quality 80-95) or PNG. Each degradation targets one check.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _pink_noise(rng: np.random.Generator, h: int, w: int, power: float = 2.0) -> np.ndarray:
    """A 1/f^(power/2)-amplitude random field scaled to 0..1 (natural-image-like texture)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (power / 2)
    field = np.fft.irfft2(spec, s=(h, w))
    field -= field.min()
    return field / max(field.max(), 1e-9)


def _texture(rng, h, w) -> Image.Image:
    return Image.fromarray((40 + 180 * _pink_noise(rng, h, w)).astype(np.uint8), "L")


def _radiograph(rng, h, w) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = ((xx - w / 2) / (0.42 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2 < 1
    arr = np.where(body, 150.0, 20.0) + 40 * _pink_noise(rng, h, w, 2.4)
    for k in range(6):  # rib-like arcs
        y0 = h * (0.25 + 0.09 * k)
        arc = np.abs(yy - y0 - 0.0006 * (xx - w / 2) ** 2) < 3
        arr[arc & body] += 45
    arr += rng.normal(0, 4, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def _ct(rng, h, w) -> Image.Image:
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    d.ellipse((0.1 * w, 0.15 * h, 0.9 * w, 0.85 * h), fill=110)
    for _ in range(6):
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        r = rng.uniform(0.04, 0.1) * w
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.uniform(60, 200)))
    d.rectangle((0.46 * w, 0.62 * h, 0.54 * w, 0.72 * h), fill=230)  # vertebra
    arr = np.asarray(img, np.float32) + rng.normal(0, 6, size=(h, w))
    arr += 25 * _pink_noise(rng, h, w)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def _histology(rng, h, w) -> Image.Image:
    base = _pink_noise(rng, h, w, 1.6)
    rgb = np.stack([200 + 40 * base, 120 + 60 * base, 170 + 40 * base], -1)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(h * w / 900)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(2, 6)
        d.ellipse((x - r, y - r, x + r, y + r), fill=(70, 40, 120))
    return img


def _fundus(rng, h, w) -> Image.Image:
    img = Image.new("RGB", (w, h), (5, 5, 5))
    d = ImageDraw.Draw(img)
    d.ellipse((0.05 * w, 0.05 * h, 0.95 * w, 0.95 * h), fill=(190, 90, 40))
    cx, cy = 0.35 * w, 0.5 * h
    for _ in range(10):  # vessels leaving the disc
        a = rng.uniform(0, 2 * np.pi)
        pts = [(cx, cy)]
        for _s in range(8):
            a += rng.normal(0, 0.25)
            pts.append((pts[-1][0] + 0.05 * w * np.cos(a), pts[-1][1] + 0.05 * h * np.sin(a)))
        d.line(pts, fill=(120, 30, 20), width=int(rng.integers(2, 5)))
    d.ellipse((cx - 0.06 * w, cy - 0.06 * h, cx + 0.06 * w, cy + 0.06 * h), fill=(240, 200, 120))
    arr = np.asarray(img, np.float32) + rng.normal(0, 5, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


FAMILIES = (_texture, _radiograph, _ct, _histology, _fundus)


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def clean_set(n: int, seed: int = 0) -> list[tuple[Image.Image, bytes]]:
    """n clean pictures (PIL image, encoded bytes); every other one a PNG."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (int(x) for x in rng.integers(384, 705, size=2))
        if max(h, w) / min(h, w) > 1.6:
            w = h
        img = FAMILIES[i % len(FAMILIES)](rng, h, w)
        fmt = "PNG" if i % 2 else "JPEG"
        out.append((img, encode(img, fmt, int(rng.integers(80, 96)))))
    return out


def degrade(kind: str, img: Image.Image, rng: np.random.Generator) -> bytes:
    """An encoded copy of `img` with one kind of degradation."""
    w, h = img.size
    if kind == "tiny":
        s = rng.uniform(96, 200) / min(w, h)
        return encode(img.resize((max(1, round(w * s)), max(1, round(h * s))),
                                 Image.Resampling.LANCZOS), "JPEG", 90)
    if kind == "wide":
        strip = max(40, round(min(w, h) / rng.uniform(3.5, 6)))
        return encode(img.crop((0, 0, w, strip)), "PNG")
    if kind == "padded":  # a panel in the middle of a white slide
        s = rng.uniform(0.4, 0.65)
        canvas = Image.new(img.mode, (w, h), (255,) * len(img.getbands()) if img.mode != "L" else 255)
        small = img.resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS)
        canvas.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
        return encode(canvas, "JPEG", 90)
    if kind == "blurred":
        return encode(img.filter(ImageFilter.GaussianBlur(rng.uniform(3, 6))), "JPEG", 90)
    if kind == "upsampled":  # made from a 4-8x smaller original
        f = rng.uniform(4, 8)
        small = img.resize((max(8, round(w / f)), max(8, round(h / f))), Image.Resampling.LANCZOS)
        return encode(small.resize((w, h), Image.Resampling.BICUBIC), "PNG")
    if kind == "compressed":
        return encode(img, "JPEG", int(rng.integers(3, 16)))
    if kind == "recompressed_png":  # heavy JPEG, then re-saved losslessly
        jpeg = Image.open(io.BytesIO(encode(img, "JPEG", int(rng.integers(3, 16)))))
        return encode(jpeg.convert(img.mode), "PNG")
    raise ValueError(kind)


# Which check each degradation must trip.
DEGRADATIONS = {
    "tiny": "too_small",
    "wide": "aspect_ratio",
    "padded": "padded_border",
    "blurred": "blurry",
    "upsampled": "upsampled",
    "compressed": "jpeg_quality",
    "recompressed_png": "blocky",
}
