"""Regenerate the demo images: copy pydicom's CT/MR/NM test slices and draw the rest.

Run from anywhere:  python src/medrecipe/data/demo/make_images.py

The drawn pictures are schematic (numpy + Pillow, fixed random seeds), made for the demo
questions only. They imitate the look of a chest radiograph, a fundus photograph, an
ultrasound frame, an ECG strip and H&E tissue patches; none of them shows a real patient.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent / "images"

# pydicom test file -> name used by the demo questions (see README.md).
DICOM_FILES = {
    "CT_small.dcm": "ct_thorax.dcm",   # axial CT through the upper thorax
    "MR_small.dcm": "mr_small.dcm",    # small MR crop, anatomy not stated in the file
    "693_J2KI.dcm": "ct_head.dcm",     # axial non-contrast head CT (JPEG 2000)
    "JPEG2000.dcm": "nm_bone_scan.dcm",  # whole-body bone scintigraphy (JPEG 2000)
}


def copy_dicom() -> None:
    """Copy the pydicom test slices used by the demo."""
    from pydicom.data import get_testdata_file

    for src, dst in DICOM_FILES.items():
        path = get_testdata_file(src)
        if path is None:
            raise SystemExit(f"pydicom test file {src} not found")
        shutil.copyfile(path, OUT / dst)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _blur(arr: np.ndarray, radius: float) -> np.ndarray:
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)


def _save_gray(arr: np.ndarray, name: str) -> None:
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").save(OUT / name, optimize=True)


def _save_jpeg(arr: np.ndarray, name: str, quality: int = 85) -> None:
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(OUT / name, quality=quality)


# --------------------------------------------------------------------------- chest radiograph


def chest(effusion: bool, seed: int) -> np.ndarray:
    """A frontal chest radiograph-like picture in PA orientation (patient's left on image right)."""
    rng = np.random.default_rng(seed)
    h = w = 256
    yy, xx = _grid(h, w)
    img = np.zeros((h, w), np.float32) + 15
    trunk = ((xx - 128) / 120) ** 4 + ((yy - 140) / 135) ** 4 < 1  # soft tissue of the thorax
    img[trunk] = 145
    lungs = np.zeros((h, w), bool)
    for cx in (80.0, 176.0):
        a, cy, top = 46.0, 120.0, 32.0
        dome = 188 + 16 * ((xx - cx) / a) ** 2  # diaphragm: highest mid-lung, sharp lateral angle
        upper = (yy < cy) & (((xx - cx) / a) ** 2 + ((yy - cy) / (cy - top)) ** 2 < 1)
        lower = (yy >= cy) & (np.abs(xx - cx) < a) & (yy < dome)
        lungs |= upper | lower
    heart = (((xx - 146) / 44) ** 2 + ((yy - 168) / 38) ** 2) < 1
    lungs &= ~heart
    img[lungs] = 38
    for k in range(9):  # posterior ribs: arcs that fall away laterally from the spine
        y0 = 44 + 18 * k
        rib = np.abs(yy - (y0 + 0.007 * (np.abs(xx - 128) - 14) ** 2)) < 2.4
        img[rib & lungs] += 30
    for sgn in (-1, 1):  # clavicles rising laterally
        d = np.abs(xx - 128)
        cl = (np.abs(yy - (50 - 0.14 * d)) < 3.5) & (d > 16) & (d < 100) & (np.sign(xx - 128) == sgn)
        img[cl] = 205
    mediastinum = (np.abs(xx - 128) < 15) & (yy > 10) & (yy < 175)
    img[mediastinum | heart] = 188
    img[(np.abs(xx - 128) < 7) & (yy > 10)] = 200  # spine seen through the mediastinum
    if effusion:
        # Left pleural effusion: homogeneous density at the left base with a meniscus that
        # climbs the lateral chest wall; the costophrenic angle and hemidiaphragm are lost.
        rel = np.clip((xx - 150) / 72, 0, 1)
        level = 150 - 45 * rel ** 1.6
        left_lung = lungs & (xx > 128)
        fluid = left_lung & (yy > level)
        img[fluid] = 150 + 0.12 * (yy[fluid] - 100)  # denser towards the base
    img = _blur(img, 2.5)
    img += rng.normal(0, 3.0, img.shape)
    return img


# --------------------------------------------------------------------------- fundus


def _vessel(draw: ImageDraw.ImageDraw, start: tuple[float, float], ctrl: tuple[float, float],
            end: tuple[float, float], width: float, colour: tuple[int, int, int]) -> None:
    pts = []
    for t in np.linspace(0, 1, 40):
        x = (1 - t) ** 2 * start[0] + 2 * (1 - t) * t * ctrl[0] + t ** 2 * end[0]
        y = (1 - t) ** 2 * start[1] + 2 * (1 - t) * t * ctrl[1] + t ** 2 * end[1]
        pts.append((x, y))
    for i in range(len(pts) - 1):
        wdt = max(1, int(round(width * (1 - 0.6 * i / len(pts)))))
        draw.line([pts[i], pts[i + 1]], fill=colour, width=wdt)


def fundus(diabetic: bool, seed: int) -> np.ndarray:
    """A colour fundus photograph-like picture: disc on the left, macula in the centre."""
    rng = np.random.default_rng(seed)
    h = w = 256
    yy, xx = _grid(h, w)
    r = np.hypot(xx - 128, yy - 128)
    shade = np.clip(1.0 - (r / 118) ** 2 * 0.55, 0, 1)
    rgb = np.stack([205 * shade + 20, 90 * shade + 10, 40 * shade + 5], -1)
    macula = np.exp(-(((xx - 140) ** 2 + (yy - 130) ** 2) / (2 * 16 ** 2)))
    rgb *= (1 - 0.35 * macula)[..., None]
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    disc = (70, 124)
    vein, artery = (120, 20, 25), (165, 35, 30)
    for sgn in (-1, 1):
        _vessel(d, disc, (110, 124 + 70 * sgn), (215, 124 + 60 * sgn), 5, vein)
        _vessel(d, disc, (100, 124 + 55 * sgn), (205, 124 + 85 * sgn), 4, artery)
        _vessel(d, disc, (45, 124 + 40 * sgn), (30, 124 + 85 * sgn), 4, vein)
        _vessel(d, (150, 124 + 62 * sgn), (160, 124 + 30 * sgn), (175, 124 + 20 * sgn), 2, artery)
    d.ellipse([disc[0] - 17, disc[1] - 19, disc[0] + 17, disc[1] + 19], fill=(240, 200, 130))
    d.ellipse([disc[0] - 7, disc[1] - 8, disc[0] + 5, disc[1] + 7], fill=(252, 232, 185))
    if diabetic:
        for _ in range(22):  # dot and blot haemorrhages
            x, y = rng.uniform(95, 200), rng.uniform(70, 190)
            s = rng.uniform(1.5, 3.5)
            d.ellipse([x - s, y - s, x + s, y + s], fill=(110, 15, 15))
        for _ in range(16):  # hard exudates clustered around the macula
            a, rad = rng.uniform(0, 2 * np.pi), rng.uniform(18, 38)
            x, y = 140 + rad * np.cos(a), 130 + rad * np.sin(a)
            s = rng.uniform(1.5, 2.8)
            d.ellipse([x - s, y - s, x + s, y + s], fill=(250, 225, 90))
    out = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
    out += rng.normal(0, 2.5, out.shape)
    out[r > 120] = 0
    return out


# --------------------------------------------------------------------------- ultrasound


def ultrasound_cyst(seed: int) -> np.ndarray:
    """A sector ultrasound frame with a round anechoic lesion and posterior enhancement."""
    rng = np.random.default_rng(seed)
    h, w = 224, 256
    yy, xx = _grid(h, w)
    ang = np.arctan2(xx - 128, yy + 30)
    rad = np.hypot(xx - 128, yy + 30)
    sector = (np.abs(ang) < 0.62) & (rad > 40) & (rad < 250)
    speckle = rng.rayleigh(1.0, (h, w)).astype(np.float32)
    speckle = _blur(speckle * 60, 1.0)
    gain = 1.5 - 0.55 * (yy / h)  # depth attenuation
    img = speckle * gain
    cyst = np.hypot(xx - 132, (yy - 105) * 1.1) < 30
    wall = (np.hypot(xx - 132, (yy - 105) * 1.1) < 33) & ~cyst
    behind = (np.abs(xx - 132) < 27) & (yy > 135)
    img[behind] *= 1.6  # posterior acoustic enhancement
    img[cyst] = rng.normal(6, 2, cyst.sum())
    img[wall] = 170
    img = _blur(img, 0.8)
    img[~sector] = 0
    return img


# --------------------------------------------------------------------------- ECG


def ecg_strip(rr_large_boxes: int = 4) -> np.ndarray:
    """Lead II-style rhythm strip on 25 mm/s paper: 1 small box = 5 px, 1 large box = 25 px."""
    h, w = 150, 500
    img = np.full((h, w, 3), (255, 244, 244), np.float32)
    for x in range(0, w, 5):
        img[:, x] = (250, 205, 205) if x % 25 else (235, 140, 140)
    for y in range(0, h, 5):
        img[y, :] = np.minimum(img[y, :], (250, 205, 205) if y % 25 else (235, 140, 140))
    t = np.arange(w * 4) / 4.0
    base = 95.0
    sig = np.zeros_like(t)
    period = 25 * rr_large_boxes
    for beat0 in np.arange(20, w, period):
        for centre, amp, width in ((beat0, -7, 4.0), (beat0 + 18, 6, 1.2), (beat0 + 21, -55, 1.6),
                                   (beat0 + 24, 14, 1.3), (beat0 + 48, -14, 7.0)):
            sig += amp * np.exp(-((t - centre) ** 2) / (2 * width ** 2))
    ys = base + sig
    im = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.line(list(zip(t.tolist(), ys.tolist(), strict=True)), fill=(20, 20, 20), width=2)
    return np.asarray(im, dtype=np.float32)


# --------------------------------------------------------------------------- histology


def _nuclei(d: ImageDraw.ImageDraw, rng: np.random.Generator, n: int, size: tuple[float, float],
            colour: tuple[int, int, int], elong: float = 1.0, jitter: int = 20,
            angle: float | None = None) -> None:
    for _ in range(n):
        x, y = rng.uniform(0, 192), rng.uniform(0, 192)
        a = rng.uniform(*size)
        b = a / elong
        th = angle if angle is not None else rng.uniform(0, np.pi)
        pts = []
        for phi in np.linspace(0, 2 * np.pi, 14, endpoint=False):
            wob = 1 + rng.uniform(-0.15, 0.15)
            px, py = a * np.cos(phi) * wob, b * np.sin(phi) * wob
            pts.append((x + px * np.cos(th) - py * np.sin(th), y + px * np.sin(th) + py * np.cos(th)))
        c = tuple(int(np.clip(v + rng.integers(-jitter, jitter + 1), 0, 255)) for v in colour)
        d.polygon(pts, fill=c)


def histology(kind: str, seed: int) -> np.ndarray:
    """An H&E-like 192 px patch of one tissue class: tumor, stroma, inflammatory or necrosis."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(192, 192)
    if kind == "stroma":
        fibres = 0.5 + 0.5 * np.sin(yy / 3.2 + 2.5 * np.sin(xx / 23.0) + rng.uniform(0, 6))
        base = np.stack([225 - 25 * fibres, 130 - 40 * fibres, 175 - 25 * fibres], -1)
    elif kind == "necrosis":
        blot = _blur(rng.uniform(0, 255, (192, 192)), 6) / 255
        base = np.stack([235 - 30 * blot, 185 - 40 * blot, 205 - 25 * blot], -1)
    else:
        base = np.stack([np.full_like(xx, 232), np.full_like(xx, 175), np.full_like(xx, 205)], -1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if kind == "tumor":
        _nuclei(d, rng, 160, (6, 10), (205, 140, 190), 1.1, 10)   # cytoplasm
        _nuclei(d, rng, 95, (5, 9), (70, 35, 120), 1.3, 25)        # large pleomorphic nuclei
        _nuclei(d, rng, 30, (1, 1.8), (35, 10, 60), 1.0, 5)        # nucleoli
    elif kind == "stroma":
        _nuclei(d, rng, 22, (5, 8), (80, 45, 125), 4.0, 15, angle=0.15)
    elif kind == "inflammatory":
        _nuclei(d, rng, 520, (2.2, 3.2), (45, 25, 95), 1.0, 15)
    elif kind == "necrosis":
        _nuclei(d, rng, 140, (0.6, 1.6), (60, 30, 100), 1.0, 25)   # nuclear dust
        _nuclei(d, rng, 12, (6, 9), (215, 165, 195), 1.2, 8)       # ghost cell outlines
    else:
        raise ValueError(kind)
    out = np.asarray(img.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32)
    return out + rng.normal(0, 3, out.shape)


def main() -> None:
    """Write every demo image into images/."""
    OUT.mkdir(parents=True, exist_ok=True)
    copy_dicom()
    _save_gray(chest(False, 1), "chest_normal.png")
    _save_gray(chest(True, 2), "chest_effusion.png")
    _save_jpeg(fundus(False, 3), "fundus_normal.jpg")
    _save_jpeg(fundus(True, 4), "fundus_diabetic.jpg")
    _save_gray(ultrasound_cyst(5), "us_breast_cyst.png")
    Image.fromarray(ecg_strip(4).astype(np.uint8)).save(OUT / "ecg_strip.png", optimize=True)
    for i, kind in enumerate(("tumor", "stroma", "inflammatory", "necrosis")):
        _save_jpeg(histology(kind, 10 + i), f"histo_{kind}.jpg")


if __name__ == "__main__":
    main()
