"""Regenerate the curation demo: drawn figure images, figure records and replayed model replies.

Run from anywhere:  python src/medrecipe/data/demo/curate/make_demo.py

Everything here was written for medrecipe's curation demo (`recipes/curate_demo.yaml`): the
pictures are drawn with numpy and Pillow from fixed seeds (schematic look-alikes of
radiographs, CT and MRI slices, fundus, histology, ultrasound, dermoscopy and endoscopy
frames; none shows a patient), and the captions, in-text references and model replies are
invented. Some records are bad on purpose so that every stage has something to remove (see
README.md). This is demo data, not clinical material.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
SOURCE = "demo_figures"  # the recipe's source name: record ids are demo_figures/<id>
JUDGE, PROBER = "demo-curator", "demo-prober"
DRAFTER, REFINER, VERIFIER = "demo-drafter", "demo-refiner", "demo-verifier"

# --------------------------------------------------------------------------- drawing


def _noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    return rng.normal(0, sigma, (h, w)).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random texture in 0..1 (sum of a few blurred noise fields)."""
    out = np.zeros((h, w), np.float32)
    for radius, weight in ((24, 0.6), (6, 0.3), (1.5, 0.1)):
        f = Image.fromarray((rng.random((h, w)) * 255).astype(np.uint8))
        out += weight * np.asarray(f.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def _grey(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def _rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def chest(seed: int, *, pneumothorax: bool = False, nodules: int = 0, size=(320, 320),
          marker: str | None = None) -> Image.Image:
    """A frontal chest radiograph look-alike (patient's right on image left)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), 18.0, np.float32)
    trunk = ((xx - w / 2) / (0.47 * w)) ** 4 + ((yy - 0.55 * h) / (0.52 * h)) ** 4 < 1
    img[trunk] = 140
    lungs = np.zeros((h, w), bool)
    for cx in (0.31 * w, 0.69 * w):
        lungs |= ((xx - cx) / (0.17 * w)) ** 2 + ((yy - 0.46 * h) / (0.33 * h)) ** 2 < 1
    heart = ((xx - 0.56 * w) / (0.17 * w)) ** 2 + ((yy - 0.64 * h) / (0.14 * h)) ** 2 < 1
    lungs &= ~heart
    img[lungs] = 45 + 25 * _texture(rng, h, w)[lungs]
    for k in range(8):  # ribs
        y0 = 0.18 * h + 0.075 * h * k
        rib = np.abs(yy - (y0 + 0.0016 * h * ((xx - w / 2) / (0.1 * w)) ** 2)) < 0.008 * h + 1
        img[rib & lungs] += 32
    img[(np.abs(xx - w / 2) < 0.05 * w) | heart] = 185
    if pneumothorax:  # a rim of air without lung markings lateral to the visceral pleural line
        rim = lungs & (xx < 0.31 * w) & (((xx - 0.31 * w) / (0.17 * w)) ** 2
                                          + ((yy - 0.46 * h) / (0.33 * h)) ** 2 > 0.55)
        img[rim] = 22
        edge = lungs & (xx < 0.31 * w) & (np.abs(((xx - 0.31 * w) / (0.17 * w)) ** 2
                                                  + ((yy - 0.46 * h) / (0.33 * h)) ** 2 - 0.55) < 0.03)
        img[edge] = 120
    for k in range(nodules):
        cx, cy = 0.66 * w + 0.05 * w * (k - 1), 0.32 * h + 0.16 * h * k
        r = 0.02 * w + 0.01 * w * k
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 150
    img = np.asarray(_grey(img).filter(ImageFilter.GaussianBlur(1.2)), np.float32)
    out = _grey(img + _noise(rng, h, w, 4))
    d = ImageDraw.Draw(out)
    if marker == "arrow":
        d.line([(0.05 * w, 0.15 * h), (0.15 * w, 0.3 * h)], fill=255, width=3)
        d.polygon([(0.15 * w, 0.3 * h), (0.12 * w, 0.26 * h), (0.17 * w, 0.26 * h)], fill=255)
    if marker == "circles":
        for k in range(nodules):
            cx, cy = 0.66 * w + 0.05 * w * (k - 1), 0.32 * h + 0.16 * h * k
            r = 0.05 * w
            d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=2)
    return out


def axial(seed: int, kind: str, size=(320, 288)) -> Image.Image:
    """An axial CT / MRI slice look-alike: body outline, organs, one lesion by `kind`."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), 8.0, np.float32)
    if kind in ("head_epidural", "brain_ring"):
        skull = ((xx - w / 2) / (0.4 * w)) ** 2 + ((yy - h / 2) / (0.46 * h)) ** 2
        img[skull < 1] = 235
        brain = skull < 0.86
        img[brain] = 95 + 20 * _texture(rng, h, w)[brain]
        vent = (np.abs(xx - w / 2) < 0.03 * w + 0.02 * w * np.abs(yy - h / 2) / h) \
            & (np.abs(yy - 0.47 * h) < 0.12 * h)
        img[vent & brain] = 40
        if kind == "head_epidural":  # biconvex bright collection on the left (image right)
            lens = ((xx - 0.83 * w) / (0.06 * w)) ** 2 + ((yy - 0.48 * h) / (0.2 * h)) ** 2 < 1
            img[lens & brain] = 200
        else:  # ring-enhancing lesion with oedema on the right (image left)
            r = np.hypot(xx - 0.38 * w, yy - 0.55 * h)
            img[(r < 0.16 * w) & brain] -= 30
            img[(np.abs(r - 0.06 * w) < 0.012 * w) & brain] = 230
            img[(r < 0.048 * w) & brain] = 70
    else:
        body = ((xx - w / 2) / (0.45 * w)) ** 2 + ((yy - h / 2) / (0.4 * h)) ** 2 < 1
        img[body] = 105 + 25 * _texture(rng, h, w)[body]
        img[((xx - w / 2) / (0.08 * w)) ** 2 + ((yy - 0.75 * h) / (0.07 * h)) ** 2 < 1] = 240
        if kind in ("liver_lesion", "kidney_stone", "plain"):
            liver = body & (((xx - 0.33 * w) / (0.22 * w)) ** 2 + ((yy - 0.45 * h) / (0.25 * h)) ** 2 < 1)
            img[liver] = 135 + 10 * _texture(rng, h, w)[liver]
            for cx in (0.3 * w, 0.7 * w):  # kidneys
                img[((xx - cx) / (0.06 * w)) ** 2 + ((yy - 0.66 * h) / (0.09 * h)) ** 2 < 1] = 150
        if kind == "liver_lesion":
            r = np.hypot(xx - 0.3 * w, yy - 0.42 * h)
            img[r < 0.07 * w] = 80
            for a in np.linspace(0, 2 * np.pi, 9, endpoint=False):
                px, py = 0.3 * w + 0.065 * w * np.cos(a), 0.42 * h + 0.065 * w * np.sin(a)
                img[np.hypot(xx - px, yy - py) < 0.014 * w] = 190
        if kind == "kidney_stone":
            img[np.hypot(xx - 0.36 * w, yy - 0.8 * h) < 0.012 * w] = 250
        if kind == "pe":
            for cx, cy, r in ((0.5 * w, 0.4 * h, 0.07), (0.38 * w, 0.42 * h, 0.045),
                              (0.62 * w, 0.42 * h, 0.045)):
                img[np.hypot(xx - cx, yy - cy) < r * w] = 220
            img[np.hypot(xx - 0.38 * w, yy - 0.42 * h) < 0.025 * w] = 90  # filling defect
            lungs = body & ((np.abs(xx - 0.27 * w) < 0.13 * w) | (np.abs(xx - 0.73 * w) < 0.13 * w))
            img[lungs & (img < 150)] = 30 + 15 * _texture(rng, h, w)[lungs & (img < 150)]
    img = np.asarray(_grey(img).filter(ImageFilter.GaussianBlur(0.8)), np.float32)
    out = _grey(img + _noise(rng, h, w, 5))
    if kind == "pe":
        ImageDraw.Draw(out).line([(0.2 * w, 0.2 * h), (0.35 * w, 0.38 * h)], fill=255, width=3)
    return out


def fundus(seed: int, size=(320, 320)) -> Image.Image:
    """A fundus photograph look-alike with dot-blot haemorrhages and hard exudates."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xx - w / 2, yy - h / 2)
    shade = np.clip(1 - (r / (0.47 * w)) ** 2 * 0.5, 0, 1) * (r < 0.47 * w)
    t = _texture(rng, h, w)
    arr = np.stack([200 * shade + 30 * t * shade, 85 * shade + 15 * t * shade,
                    35 * shade + 5 * t], -1) + 6
    img = _rgb(arr)
    d = ImageDraw.Draw(img)
    disc = (0.3 * w, 0.5 * h)
    for _ in range(9):
        a = rng.uniform(0, 2 * np.pi)
        pts = [disc]
        for _s in range(10):
            a += rng.normal(0, 0.2)
            pts.append((pts[-1][0] + 0.04 * w * np.cos(a), pts[-1][1] + 0.04 * h * np.sin(a)))
        d.line(pts, fill=(125, 25, 22), width=int(rng.integers(2, 5)))
    d.ellipse([disc[0] - 22, disc[1] - 25, disc[0] + 22, disc[1] + 25], fill=(238, 196, 125))
    for _ in range(70):  # haemorrhages in all quadrants
        x, y = rng.uniform(0.12, 0.88) * w, rng.uniform(0.12, 0.88) * h
        rr = rng.uniform(1.5, 4)
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=(110, 15, 15))
    for _ in range(25):  # hard exudates around the macula
        x, y = rng.normal(0.58 * w, 25), rng.normal(0.5 * h, 25)
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(245, 225, 120))
    return _rgb(np.asarray(img, np.float32) + rng.normal(0, 3, (h, w, 3)))


def histology(seed: int, *, granuloma: bool = False, steatosis: bool = False,
              size=(320, 320)) -> Image.Image:
    """An H&E section look-alike: pink stroma, purple nuclei, a granuloma or fat droplets."""
    rng = np.random.default_rng(seed)
    w, h = size
    t = _texture(rng, h, w)
    img = _rgb(np.stack([215 + 30 * t, 140 + 50 * t, 185 + 30 * t], -1))
    d = ImageDraw.Draw(img)
    cx, cy = w / 2, h / 2
    if granuloma:
        d.ellipse([cx - 70, cy - 60, cx + 70, cy + 60], fill=(235, 190, 215))  # epithelioid cuff
        d.ellipse([cx - 35, cy - 30, cx + 35, cy + 30], fill=(245, 215, 225))  # caseous centre
        for a in np.linspace(0, 2 * np.pi, 14, endpoint=False):  # giant cell nuclei in a horseshoe
            if a < 4.5:
                x, y = cx + 50 + 12 * np.cos(a), cy - 40 + 12 * np.sin(a)
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(60, 30, 110))
    for _ in range(int(w * h / 260)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if granuloma and np.hypot(x - cx, y - cy) < 38:
            continue
        rr = rng.uniform(1.8, 4.0)
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=(75, 40, 125))
    if steatosis:
        for _ in range(90):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            rr = rng.uniform(6, 14)
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=(248, 242, 246))
    return _rgb(np.asarray(img, np.float32) + rng.normal(0, 2, (h, w, 3)))


def ultrasound(seed: int, size=(352, 288)) -> Image.Image:
    """A sector ultrasound look-alike: speckle, an anechoic gallbladder with shadowing stones."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = np.arctan2(xx - w / 2, yy + 20)
    rad = np.hypot(xx - w / 2, yy + 20)
    sector = (np.abs(ang) < 0.65) & (rad < h + 10)
    speck = rng.gamma(2.0, 35, (h, w)).astype(np.float32)
    img = np.where(sector, speck * 0.9, 5)
    gb = ((xx - 0.5 * w) / (0.2 * w)) ** 2 + ((yy - 0.45 * h) / (0.1 * h)) ** 2 < 1
    img[gb] = 10 + rng.normal(0, 3, gb.sum())
    for k, cx in enumerate((0.44 * w, 0.5 * w, 0.56 * w)):
        stone = np.hypot(xx - cx, yy - 0.52 * h) < 0.022 * w + k
        img[stone] = 235
        img[(np.abs(xx - cx) < 0.02 * w) & (yy > 0.55 * h) & sector] *= 0.15  # acoustic shadow
    return _grey(np.asarray(_grey(img).filter(ImageFilter.GaussianBlur(0.7)), np.float32))


def wrist(seed: int, size=(288, 352)) -> Image.Image:
    """A lateral wrist radiograph look-alike with an angulated distal radius fracture."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("L", (w, h), 25)
    d = ImageDraw.Draw(img)
    d.polygon([(0.3 * w, 0), (0.7 * w, 0), (0.78 * w, h), (0.22 * w, h)], fill=95)  # soft tissue
    d.rectangle([0.42 * w, 0.35 * h, 0.58 * w, h], fill=200)  # radius shaft
    d.polygon([(0.42 * w, 0.35 * h), (0.58 * w, 0.35 * h), (0.66 * w, 0.22 * h),
               (0.5 * w, 0.2 * h)], fill=200)  # dorsally tilted distal fragment
    d.line([(0.42 * w, 0.35 * h), (0.58 * w, 0.35 * h)], fill=60, width=3)  # fracture line
    for k in range(4):  # carpal bones
        d.ellipse([0.4 * w + 12 * k, 0.08 * h, 0.47 * w + 12 * k, 0.16 * h], fill=185)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    arr += 20 * _texture(rng, h, w) + _noise(rng, h, w, 4)
    return _grey(arr)


def dermoscopy(seed: int, size=(320, 320)) -> Image.Image:
    """A dermoscopy look-alike: an asymmetric pigmented lesion with a blue-white area."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = _texture(rng, h, w)
    skin = np.stack([225 + 20 * t, 180 + 25 * t, 160 + 20 * t], -1)
    ang = np.arctan2(yy - h / 2, xx - w / 2)
    rad = np.hypot(xx - w / 2, yy - h / 2) / (0.3 * w * (1 + 0.25 * np.sin(3 * ang) + 0.1 * np.cos(5 * ang)))
    lesion = rad < 1
    skin[lesion] = np.stack([110 + 60 * t, 70 + 40 * t, 50 + 30 * t], -1)[lesion]
    veil = lesion & (np.hypot(xx - 0.58 * w, yy - 0.45 * h) < 0.1 * w)
    skin[veil] = [120, 140, 170]
    img = _rgb(skin)
    d = ImageDraw.Draw(img)
    for _ in range(60):
        x, y = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        rr = rng.uniform(1.5, 4)
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=(45, 25, 20))
    return _rgb(np.asarray(img, np.float32) + rng.normal(0, 3, (h, w, 3)))


def endoscopy(seed: int, size=(320, 288)) -> Image.Image:
    """An endoscopy frame look-alike: gastric folds and a clean-based ulcer."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = _texture(rng, h, w)
    folds = 0.5 + 0.5 * np.sin(xx / 18 + 3 * t)
    mucosa = np.stack([190 + 40 * folds, 90 + 30 * folds, 80 + 20 * folds], -1)
    vign = np.clip(1 - (np.hypot(xx - w / 2, yy - h / 2) / (0.6 * w)) ** 3, 0.1, 1)
    mucosa *= vign[..., None]
    ulcer = np.hypot(xx - 0.55 * w, yy - 0.55 * h) < 0.09 * w
    mucosa[ulcer] = [235, 230, 205]
    rim = np.abs(np.hypot(xx - 0.55 * w, yy - 0.55 * h) - 0.095 * w) < 3
    mucosa[rim] = [200, 70, 60]
    return _rgb(mucosa + rng.normal(0, 3, (h, w, 3)))


def knee_mri(seed: int, size=(288, 320)) -> Image.Image:
    """A sagittal knee MRI look-alike with a dark meniscus and a bright tear line."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 60 + 60 * _texture(rng, h, w)
    img[((xx - 0.5 * w) / (0.3 * w)) ** 2 + ((yy - 0.25 * h) / (0.22 * h)) ** 2 < 1] = 150  # femur
    img[(np.abs(xx - 0.5 * w) < 0.28 * w) & (yy > 0.55 * h)] = 145  # tibia
    men = ((xx - 0.7 * w) / (0.09 * w)) ** 2 + ((yy - 0.5 * h) / (0.03 * h)) ** 2 < 1
    img[men] = 20
    img[men & (np.abs(yy - 0.5 * h) < 1.5)] = 200
    return _grey(img + _noise(rng, h, w, 5))


def diagram(seed: int, size=(384, 288)) -> Image.Image:
    """A study flow diagram: boxes joined by arrows on a pale blue slide background."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", (w, h), (196, 214, 232))
    d = ImageDraw.Draw(img)
    boxes = [(0.3, 0.06), (0.3, 0.32), (0.08, 0.6), (0.52, 0.6), (0.08, 0.84), (0.52, 0.84)]
    for bx, by in boxes:
        d.rectangle([bx * w, by * h, (bx + 0.4) * w, (by + 0.12) * h], fill=(255, 255, 255),
                    outline=(30, 50, 90), width=2)
        for k in range(3):  # text-like strokes
            d.line([(bx + 0.03) * w, (by + 0.03 + 0.03 * k) * h,
                    (bx + 0.03 + rng.uniform(0.15, 0.32)) * w, (by + 0.03 + 0.03 * k) * h],
                   fill=(40, 40, 40), width=2)
    for (x0, y0), (x1, y1) in (((0.5, 0.18), (0.5, 0.32)), ((0.5, 0.44), (0.28, 0.6)),
                               ((0.5, 0.44), (0.72, 0.6)), ((0.28, 0.72), (0.28, 0.84)),
                               ((0.72, 0.72), (0.72, 0.84))):
        d.line([x0 * w, y0 * h, x1 * w, y1 * h], fill=(30, 50, 90), width=3)
    return _rgb(np.asarray(img, np.float32) + rng.normal(0, 3, (h, w, 3)))


def ecg(seed: int, size=(1200, 300)) -> Image.Image:
    """A long rhythm strip on pink grid paper (far wider than high)."""
    w, h = size
    img = Image.new("RGB", (w, h), (250, 222, 222))
    d = ImageDraw.Draw(img)
    for x in range(0, w, 10):
        d.line([x, 0, x, h], fill=(240, 180, 180) if x % 50 else (220, 120, 120), width=1)
    for y in range(0, h, 10):
        d.line([0, y, w, y], fill=(240, 180, 180) if y % 50 else (220, 120, 120), width=1)
    xs = np.arange(w)
    beat = (xs % 200).astype(np.float32)
    trace = 0.55 * h - 90 * np.exp(-((beat - 60) / 4) ** 2) + 15 * np.exp(-((beat - 130) / 14) ** 2)
    d.line(list(zip(xs.tolist(), trace.tolist(), strict=True)), fill=(20, 20, 20), width=2)
    return img


def slide(seed: int) -> Image.Image:
    """A small CT panel pasted on a white presentation slide with a title bar."""
    panel = axial(seed, "liver_lesion", size=(240, 210))
    img = Image.new("RGB", (640, 480), (255, 255, 255))
    img.paste(panel.convert("RGB"), (200, 150))
    d = ImageDraw.Draw(img)
    for k in range(2):
        d.line([(200, 60 + 22 * k), (440 - 60 * k, 60 + 22 * k)], fill=(40, 40, 40), width=6)
    return img


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 75) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- records

LICENSE = "CC BY 4.0"


def record(rid: str, pmc: str, fig: str, panel: str | None, modality: str | None,
           sub: str | None, full: str | None, refs: list[str], image: str | None = "jpg"
           ) -> dict:
    """One Open-PMC style figure record (image path relative to this folder)."""
    return {"id": rid, "PMC_ID": pmc, "media_id": fig, "subfigure_label": panel,
            "sub_caption": sub, "full_caption": full, "intext_refs": refs, "license": LICENSE,
            "modality": modality,
            "media_name": f"images/{rid}.{image}" if image else None}


RECORDS = [
    record("d01", "PMC9000101", "F1", "a", "x-ray",
           "Frontal chest radiograph: the visceral pleural line (arrow) runs parallel to the "
           "right chest wall, with no lung markings lateral to it.",
           "Figure 1. Spontaneous pneumothorax in a tall young smoker. (a) Frontal chest "
           "radiograph at presentation. (b) Radiograph after treatment.",
           ["A 24-year-old man presented with sudden right-sided pleuritic chest pain and "
            "breathlessness at rest; he was haemodynamically stable with an oxygen saturation "
            "of 93% on room air (Figure 1a).",
            "Because the rim of air measured more than 2 cm at the level of the hilum and he "
            "was symptomatic, a small-bore chest drain was inserted, and the lung re-expanded "
            "the next day (Figure 1b)."]),
    record("d02", "PMC9000102", "F2", "a", "ct",
           "Axial contrast-enhanced CT in the portal venous phase: a well-defined hypodense "
           "lesion in the right lobe of the liver with peripheral nodular enhancement.",
           "Figure 2. Incidental liver lesion in a 45-year-old woman. (a) Portal venous "
           "phase. (b) Delayed phase with centripetal fill-in.",
           ["CT performed for suspected renal colic in a 45-year-old woman with no history of "
            "malignancy showed an incidental 4-cm liver lesion with discontinuous peripheral "
            "nodular enhancement and progressive centripetal fill-in on delayed images, "
            "consistent with a cavernous haemangioma (Figure 2)."]),
    record("d03", "PMC9000103", "F3", None, "fundus",
           "Colour fundus photograph of the right eye with dot and blot haemorrhages in all "
           "four quadrants, hard exudates near the macula and venous beading.",
           "Figure 3. Retinal findings in a 58-year-old man with long-standing type 2 diabetes.",
           ["Fundus photography showed more than 20 intraretinal haemorrhages in each of the "
            "four quadrants together with venous beading, which meets the 4-2-1 rule for "
            "severe non-proliferative diabetic retinopathy; no new vessels were seen "
            "(Figure 3)."]),
    record("d04", "PMC9000104", "F2", "b", "pathology",
           "Lymph node biopsy (H&E, x200): a granuloma with central caseous necrosis, "
           "surrounded by epithelioid histiocytes and a Langhans-type giant cell.",
           "Figure 2. Cervical lymphadenopathy in a 30-year-old man. (a) Neck ultrasound. "
           "(b) Excisional biopsy. Ziehl-Neelsen staining (not shown) revealed acid-fast "
           "bacilli.",
           ["Excisional biopsy of the enlarged cervical node showed caseating granulomas, and "
            "acid-fast bacilli were seen, confirming tuberculous lymphadenitis (Figure 2b); he "
            "was started on standard four-drug therapy with rifampicin, isoniazid, "
            "pyrazinamide and ethambutol."]),
    record("d05", "PMC9000105", "F1", None, "ultrasound",
           "Right upper quadrant ultrasound: several echogenic foci in the gallbladder lumen "
           "with posterior acoustic shadowing; the gallbladder wall is not thickened.",
           "Figure 1. Recurrent biliary colic in a 42-year-old woman.",
           ["Ultrasound showed multiple mobile gallstones with acoustic shadowing, no wall "
            "thickening and no pericholecystic fluid (Figure 1); she was listed for elective "
            "laparoscopic cholecystectomy."]),
    record("d06", "PMC9000106", "F4", None, "mri",
           "Axial contrast-enhanced T1-weighted MRI: a ring-enhancing lesion in the right "
           "basal ganglia with surrounding oedema and mild mass effect.",
           "Figure 4. Headache and fever in a 34-year-old man with advanced HIV infection "
           "(CD4 count 40 cells/uL).",
           ["MRI showed a single ring-enhancing lesion in the right basal ganglia (Figure 4). "
            "Because a solitary lesion made toxoplasmosis less certain, primary CNS lymphoma "
            "was considered, and thallium-201 SPECT of the brain was requested to tell the "
            "two apart."]),
    record("d07", "PMC9000107", "F1", "b", "x-ray",
           "Lateral radiograph of the left wrist: a transverse fracture of the distal radius "
           "with dorsal angulation and dorsal displacement of the distal fragment.",
           "Figure 1. Fall on an outstretched hand in a 67-year-old woman. (a) "
           "Posteroanterior view. (b) Lateral view.",
           ["Radiographs showed a dorsally angulated extra-articular fracture of the distal "
            "radius, a Colles-type fracture (Figure 1b). After closed reduction under a "
            "haematoma block the position was acceptable, and a below-elbow cast was "
            "applied."]),
    record("d08", "PMC9000108", "F2", None, "dermoscopy",
           "Dermoscopy of a pigmented lesion on the back: asymmetry of colour and structure, "
           "an atypical pigment network, irregular dots and globules, and a blue-white veil.",
           "Figure 2. A changing mole in a 52-year-old man.",
           ["Because the lesion had grown over six months and dermoscopy showed an atypical "
            "network with a blue-white veil (Figure 2), an excisional biopsy with a narrow "
            "margin was performed; histology confirmed a superficial spreading melanoma with "
            "a Breslow thickness of 0.8 mm."]),
    record("d09", "PMC9000109", "F1", None, "ct",
           "Non-contrast head CT: a biconvex hyperdense extra-axial collection over the left "
           "temporal lobe with midline shift.",
           "Figure 1. Head injury in a 19-year-old man struck by a cricket ball.",
           ["After a brief loss of consciousness he had a lucid interval of about an hour "
            "before he deteriorated; CT showed a left temporal epidural haematoma (Figure 1), "
            "which was evacuated through an emergency craniotomy."]),
    record("d10", "PMC9000110", "F3", None, "x-ray",
           "Frontal chest radiograph: three well-defined round nodules (circles) in the left "
           "lung, the largest about 2 cm in the lower zone.",
           "Figure 3. Staging radiograph of a 16-year-old boy with osteosarcoma of the femur.",
           ["Staging chest radiography showed three pulmonary nodules in the left lung "
            "(Figure 3); CT confirmed pulmonary metastases and found no further lesions."]),
    record("d11", "PMC9000105", "F2", None, "endoscopy",  # the same article as d05
           "Upper endoscopy: a 1.5-cm clean-based ulcer on the lesser curvature of the gastric "
           "antrum with smooth, regular margins.",
           "Figure 2. Epigastric pain in a 50-year-old woman taking naproxen for "
           "osteoarthritis.",
           ["Endoscopy showed a benign-appearing antral ulcer (Figure 2); biopsies excluded "
            "malignancy and Helicobacter pylori, so the ulcer was attributed to the NSAID, "
            "which was stopped, and a proton pump inhibitor was given for eight weeks."]),
    record("d12", "PMC9000112", "F1", None, "ct",
           "CT pulmonary angiogram: a filling defect in the right main pulmonary artery "
           "extending into the lower lobe branches (arrow).",
           "Figure 1. Acute breathlessness three weeks after knee replacement in a 71-year-old "
           "woman.",
           ["CT pulmonary angiography confirmed acute pulmonary embolism (Figure 1); she was "
            "normotensive without right ventricular strain and was treated with a direct oral "
            "anticoagulant."]),
    record("d13", "PMC9000113", "F5", "c", "pathology",
           "H&E section of liver from a mouse fed a high-fat diet for 16 weeks: diffuse "
           "macrovesicular steatosis.",
           "Figure 5. Hepatic changes in the diet-induced obesity model. (a) Body weight. "
           "(b) Serum lipids. (c) Liver histology.",
           ["Mice on the high-fat diet developed marked macrovesicular steatosis compared with "
            "chow-fed controls (Figure 5c)."]),
    record("d14", "PMC9000114", "F1", None, None,
           "Flow of participants through the trial.",
           "Figure 1. Study flow diagram: patients screened, randomised, allocated and "
           "analysed.",
           ["Of 412 patients screened, 240 were randomised and 231 were included in the "
            "analysis (Figure 1)."]),
    record("d15", "PMC9000115", "F2", None, "x-ray",
           "Radiografía de tórax posteroanterior: consolidación del lóbulo inferior derecho "
           "con broncograma aéreo.",
           "Figura 2. Neumonía adquirida en la comunidad en un paciente de 70 años.",
           ["La radiografía mostró una consolidación del lóbulo inferior derecho que mejoró "
            "tras siete días de tratamiento antibiótico (Figura 2)."]),
    record("d16", "PMC9000116", "F3", None, None, "Representative image.", "Figure 3.", []),
    record("d17", "PMC9000117", "F2", None, "mri",
           "Sagittal proton-density MRI of the knee showing a complete tear of the anterior "
           "cruciate ligament.",
           "Figure 2. Twisting injury of the knee in a 28-year-old footballer.",
           ["MRI confirmed a complete tear of the anterior cruciate ligament with a bone "
            "bruise of the lateral femoral condyle (Figure 2)."]),
    record("d18", "PMC9000118", "F1", None, "ct",
           "Axial CT of the chest in lung windows: a spiculated 3-cm mass in the right upper "
           "lobe.",
           "Figure 1. Haemoptysis in a 66-year-old former smoker.",
           ["CT showed a spiculated right upper lobe mass (Figure 1); bronchoscopic biopsy "
            "confirmed squamous cell carcinoma."]),
    record("d19", "PMC9000119", "F2", None, "mri",
           "Sagittal T2-weighted MRI of the lumbar spine with normal disc hydration and "
           "alignment.",
           "Figure 2. Lumbar spine MRI of a control participant.",
           ["Control participants had no disc degeneration on MRI (Figure 2)."]),
    record("d20", "PMC9000120", "F1", None, "ct",
           "Non-contrast CT of the abdomen: a 6-mm calculus at the right vesicoureteric "
           "junction with mild proximal hydronephrosis.",
           "Figure 1. Acute right loin-to-groin pain in a 38-year-old man.",
           ["Non-contrast CT showed an obstructing 6-mm stone at the right vesicoureteric "
            "junction (Figure 1); it passed spontaneously with analgesia and tamsulosin."]),
    record("d21", "PMC9000121", "F3", None, "mri",
           "Sagittal proton-density MRI of the knee: a horizontal tear through the posterior "
           "horn of the medial meniscus.",
           "Figure 3. Knee pain and locking in a 45-year-old man.",
           ["MRI showed a horizontal tear of the posterior horn of the medial meniscus "
            "(Figure 3); arthroscopic partial meniscectomy relieved the locking."]),
    record("d22", "PMC9000122", "F1", None, "mri",
           "Axial T1-weighted MRI of the brain at the level of the lateral ventricles in a "
           "healthy volunteer.",
           "Figure 1. Example of the acquisition protocol.",
           ["Images were acquired on a 3-T scanner with a 32-channel head coil (Figure 1)."]),
    # Visual rejects: fine texts, unusable images.
    record("d23", "PMC9000123", "F1", None, "x-ray",
           "Frontal chest radiograph showing a large left pleural effusion with mediastinal "
           "shift to the right.", "Figure 1. Breathlessness in a 73-year-old woman.",
           ["Thoracentesis of the left effusion yielded an exudate (Figure 1)."]),
    record("d24", "PMC9000124", "F2", None, "ct",
           "Axial CT of the abdomen: a 5-cm hypodense lesion in the right hepatic lobe.",
           "Figure 2. Fever and right upper quadrant pain in a 55-year-old man.",
           ["CT showed a liver abscess that was drained percutaneously (Figure 2)."]),
    record("d25", "PMC9000125", "F1", None, "ct",
           "Axial non-contrast head CT: a crescentic hyperdense collection along the right "
           "convexity.", "Figure 1. Fall in an 81-year-old woman on warfarin.",
           ["CT showed an acute right subdural haematoma (Figure 1)."]),
    record("d26", "PMC9000126", "F4", None, "pathology",
           "H&E section of a lymph node with a caseating granuloma.",
           "Figure 4. Mediastinal lymphadenopathy in a 29-year-old man.",
           ["Transbronchial needle aspiration showed caseating granulomas (Figure 4)."]),
    record("d27", "PMC9000127", "F2", None, "ct",
           "Portal venous phase CT: a liver lesion with peripheral nodular enhancement.",
           "Figure 2. Slide from a teaching case on benign liver lesions.",
           ["The lesion showed the typical enhancement pattern of a haemangioma (Figure 2)."]),
    record("d28", "PMC9000128", "F1", None, "ecg",
           "Lead II rhythm strip: regular narrow-complex rhythm at 75 beats per minute.",
           "Figure 1. Palpitations in a 33-year-old woman.",
           ["The rhythm strip during symptoms showed sinus rhythm (Figure 1)."], image="png"),
    record("d29", "PMC9000129", "F3", None, "fundus",
           "Fundus photograph with dot and blot haemorrhages and hard exudates.",
           "Figure 3. Diabetic retinopathy screening in a 61-year-old woman.",
           ["Screening showed moderate non-proliferative diabetic retinopathy (Figure 3)."],
           image="png"),
    # Ingest rejects.
    record("d30", "PMC9000130", "F1", None, "x-ray",
           "Frontal chest radiograph with bilateral hilar lymphadenopathy.",
           "Figure 1. Erythema nodosum and arthralgia in a 31-year-old woman.",
           ["The radiograph showed bilateral hilar lymphadenopathy (Figure 1)."], image=None),
    record("d31", "PMC9000131", "F2", None, "ct",
           "Axial CT of the chest: bilateral ground-glass opacities.",
           "Figure 2. Fever and cough in a 47-year-old man.",
           ["CT showed bilateral ground-glass opacities (Figure 2)."]),
    record("d32", "PMC9000132", "F1", None, "x-ray", None, None, []),
]


def draw_images() -> None:
    """Write every record's image (d31's file is left out on purpose)."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    for p in IMAGES.glob("*"):
        p.unlink()
    # Smooth drawings keep quality 85: at 75 their faint noise is quantised away and they
    # look up-sampled; textured ones compress further.
    pics: dict[str, tuple[Image.Image, str, int]] = {
        "d01": (chest(1, pneumothorax=True, marker="arrow"), "JPEG", 85),
        "d02": (axial(2, "liver_lesion"), "JPEG", 85),
        "d03": (fundus(3), "JPEG", 75),
        "d04": (histology(4, granuloma=True), "JPEG", 75),
        "d05": (ultrasound(5), "JPEG", 75),
        "d06": (axial(6, "brain_ring"), "JPEG", 85),
        "d07": (wrist(7), "JPEG", 85),
        "d08": (dermoscopy(8), "JPEG", 75),
        "d09": (axial(9, "head_epidural"), "JPEG", 85),
        "d10": (chest(10, nodules=3, marker="circles"), "JPEG", 85),
        "d11": (endoscopy(11), "JPEG", 75),
        "d12": (axial(12, "pe"), "JPEG", 85),
        "d13": (histology(13, steatosis=True), "JPEG", 75),
        "d14": (diagram(14), "JPEG", 75),
        "d15": (chest(15), "JPEG", 85),
        "d16": (axial(16, "plain"), "JPEG", 85),
        "d17": (chest(17), "JPEG", 85),  # the caption describes a knee MRI
        "d18": (axial(18, "pe"), "JPEG", 85),
        "d19": (knee_mri(19), "JPEG", 85),
        "d20": (axial(20, "kidney_stone"), "JPEG", 85),
        "d21": (knee_mri(21), "JPEG", 85),
        "d22": (axial(22, "brain_ring"), "JPEG", 85),
        "d23": (chest(23, size=(96, 88)), "JPEG", 75),  # tiny
        "d24": (axial(24, "liver_lesion").filter(ImageFilter.GaussianBlur(4)), "JPEG", 75),
        "d25": (axial(25, "head_epidural", size=(80, 72)).resize((400, 360),
                                                               Image.Resampling.BICUBIC),
                "JPEG", 85),  # up-sampled from a thumbnail
        "d26": (histology(26, granuloma=True), "JPEG", 4),  # heavily compressed
        "d27": (slide(27), "JPEG", 75),  # padded slide
        "d28": (ecg(28), "PNG", 0),  # 4:1 strip
        "d30": (chest(30), "JPEG", 85),  # present, but the record names no image
        "d32": (chest(32), "JPEG", 85),  # present, but the record has no text
    }
    for rid, (img, fmt, q) in pics.items():
        ext = "jpg" if fmt == "JPEG" else "png"
        (IMAGES / f"{rid}.{ext}").write_bytes(encode(img, fmt, q))
    # d29: heavy JPEG compression, then saved losslessly as PNG (blocky).
    blocky = Image.open(io.BytesIO(encode(fundus(29), "JPEG", 5))).convert("RGB")
    (IMAGES / "d29.png").write_bytes(encode(blocky, "PNG"))
    (IMAGES / "d30.jpg").unlink()  # the record names no image; no file either


# --------------------------------------------------------------------------- model replies


def _verdict(reasons: dict[str, str], fail: tuple[str, ...] = ()) -> str:
    crit = ("textual_adequacy", "clinical_relevance", "image_text_alignment",
            "reasoning_readiness")
    return json.dumps({c: {"verdict": "fail" if c in fail else "pass", "reason": reasons[c]}
                       for c in crit})


def _ok(what: str, align: str, reason: str) -> dict[str, str]:
    return {"textual_adequacy": f"The captions describe {what} and say what it means.",
            "clinical_relevance": "It is a clinical image from a human patient.",
            "image_text_alignment": align, "reasoning_readiness": reason}


CONTEXT = {
    "d01": [_verdict(_ok("a right pneumothorax", "The radiograph shows the pleural line and "
                         "the arrow the caption mentions.", "Findings, symptoms and the "
                         "treatment given support questions that need the image."))],
    "d02": [_verdict(_ok("a liver lesion with its enhancement pattern", "The CT shows a liver "
                         "lesion with nodular rim enhancement as described.", "The record "
                         "links the enhancement pattern to a stated diagnosis."))],
    "d03": [_verdict(_ok("diabetic retinopathy findings", "Haemorrhages and exudates are "
                         "visible as described.", "The grade follows from the stated "
                         "findings and rule."))],
    "d04": [_verdict(_ok("a caseating granuloma", "The section shows a granuloma with a "
                         "necrotic centre and a giant cell.", "The diagnosis and its "
                         "treatment are both stated."))],
    "d05": [_verdict(_ok("gallstones on ultrasound", "Echogenic foci with shadowing are "
                         "visible in the gallbladder.", "Finding and management are given."))],
    "d06": [_verdict(_ok("a ring-enhancing brain lesion in an HIV patient", "The MRI shows a "
                         "ring-enhancing lesion with oedema.", "The differential and the test "
                         "used to resolve it are stated."))],
    "d07": [_verdict(_ok("a distal radius fracture", "The lateral view shows the angulated "
                         "distal fragment.", "Fracture type and treatment are described."))],
    "d08": [_verdict(_ok("dermoscopic features of a pigmented lesion", "The lesion is "
                         "asymmetric with a blue-white area as described.", "The workup "
                         "and the histological diagnosis are given."))],
    "d09": [_verdict(_ok("an epidural haematoma", "A biconvex collection is visible over "
                         "the temporal lobe.", "Course, diagnosis and surgery are stated."))],
    "d10": [_verdict(_ok("three lung nodules", "Three circled nodules are visible in the "
                         "left lung.", "Count, context and diagnosis are stated."))],
    "d11": [_verdict(_ok("a gastric ulcer", "The endoscopic view shows a clean-based ulcer.",
                         "Cause and drug treatment are stated."))],
    "d12": [_verdict(_ok("a pulmonary embolus", "The angiogram shows a filling defect at the "
                         "arrow.", "Diagnosis, severity and treatment are stated."))],
    "d13": [_verdict({**_ok("liver steatosis", "The section shows fat droplets as described.",
                            "A finding is stated."),
                      "clinical_relevance": "The tissue comes from a mouse diet model, not "
                                            "from a patient."}, fail=("clinical_relevance",))],
    "d14": [_verdict({"textual_adequacy": "The texts explain the diagram.",
                      "clinical_relevance": "It is a trial flow diagram, not a clinical "
                                            "image.",
                      "image_text_alignment": "The image is the flow diagram the caption "
                                              "describes.",
                      "reasoning_readiness": "There is no clinical finding to ask about."},
                     fail=("clinical_relevance", "reasoning_readiness"))],
    "d16": [_verdict({"textual_adequacy": "The caption says nothing about what is shown.",
                      "clinical_relevance": "It looks like a clinical CT slice.",
                      "image_text_alignment": "Without a description, alignment cannot be "
                                              "confirmed.",
                      "reasoning_readiness": "No finding or diagnosis is given."},
                     fail=("textual_adequacy", "image_text_alignment",
                           "reasoning_readiness"))],
    "d17": [_verdict({**_ok("a ligament tear", "", "Diagnosis is stated."),
                      "image_text_alignment": "The caption describes a knee MRI but the "
                                              "image is a chest radiograph."},
                     fail=("image_text_alignment",))],
    # d18: three replies, none of which follows the schema.
    "d18": ["The record looks suitable for question writing.",
            json.dumps({c: {"verdict": "yes", "reason": "Fine."} for c in (
                "textual_adequacy", "clinical_relevance", "image_text_alignment",
                "reasoning_readiness")}),
            json.dumps({"textual_adequacy": {"verdict": "pass", "reason": "Clear."},
                        "clinical_relevance": {"verdict": "pass", "reason": "CT."},
                        "image_text_alignment": {"verdict": "pass", "reason": "Matches."}})],
    # d19: the first reply is cut off; the re-ask parses.
    "d19": ['{"textual_adequacy": {"verdict": "pass", "reason": "The caption is cle',
            _verdict(_ok("a normal lumbar spine MRI", "The sagittal MRI matches the "
                         "description.", "A normal study could support a normal-versus-"
                         "abnormal question."))],
    "d20": [_verdict(_ok("an obstructing ureteric stone", "A small bright calculus is "
                         "visible near the bladder.", "Diagnosis and outcome are given."))],
    "d21": [_verdict(_ok("a meniscal tear", "The sagittal MRI shows a meniscus with a tear "
                         "line.", "Diagnosis and treatment are given."))],
    "d22": [_verdict({**_ok("an MRI acquisition", "The image is an axial brain slice.", ""),
                      "reasoning_readiness": "A protocol example in a volunteer holds no "
                                             "clinical finding to reason about."},
                     fail=("reasoning_readiness",))],
}


def _cat(cid: str, answer: str, evidence: str) -> str:
    return (f'  <category id="{cid}">\n    <answer>{answer}</answer>\n'
            f"    <evidence>{evidence}</evidence>\n  </category>")


def _cats(*cats: str) -> str:
    return "<categories>\n" + "\n".join(cats) + "\n</categories>"


TASKS = {
    "d01": [_cats(_cat("findings", "right pneumothorax", "the visceral pleural line runs "
                       "parallel to the right chest wall with no lung markings lateral to it"),
                  _cat("annotation_marker", "the visceral pleural line",
                       "the visceral pleural line (arrow)"),
                  _cat("next_step_management", "small-bore chest drain insertion",
                       "rim of air more than 2 cm and symptomatic, so a small-bore chest drain "
                       "was inserted"))],
    "d02": [_cats(_cat("diagnosis", "hepatic haemangioma", "peripheral nodular enhancement "
                       "with centripetal fill-in, consistent with a cavernous haemangioma"),
                  _cat("spatial_location", "right hepatic lobe", "lesion in the right lobe of "
                       "the liver"))],
    "d03": [_cats(_cat("severity_grading", "severe non-proliferative diabetic retinopathy",
                       "haemorrhages in four quadrants and venous beading meet the 4-2-1 rule"),
                  _cat("findings", "dot and blot haemorrhages in all four quadrants",
                       "dot and blot haemorrhages in all four quadrants"))],
    "d04": [_cats(_cat("diagnosis", "tuberculous lymphadenitis", "caseating granulomas with "
                       "acid-fast bacilli"),
                  _cat("drug_therapy", "rifampicin, isoniazid, pyrazinamide and ethambutol",
                       "started on standard four-drug therapy"),
                  _cat("prognosis", "good with treatment", "he was started on therapy"))],
    "d05": [_cats(_cat("findings", "gallstones", "echogenic foci with posterior acoustic "
                       "shadowing"),
                  _cat("complications", "acute cholecystitis", "gallstones in a symptomatic "
                       "patient"),
                  _cat("surgical_management", "elective laparoscopic cholecystectomy",
                       "listed for elective laparoscopic cholecystectomy"))],
    "d06": [_cats(_cat("differential_diagnosis", "toxoplasmosis versus primary CNS lymphoma",
                       "primary CNS lymphoma was considered besides toxoplasmosis"),
                  _cat("next_step_test", "thallium-201 SPECT of the brain",
                       "thallium-201 SPECT was requested to tell the two apart"))],
    "d07": [_cats(_cat("diagnosis", "Colles-type distal radius fracture", "dorsally angulated "
                       "extra-articular fracture of the distal radius"),
                  _cat("next_step_management", "closed reduction and a below-elbow cast",
                       "closed reduction under a haematoma block, below-elbow cast"))],
    "d08": [_cats(_cat("next_step_test", "excisional biopsy", "an excisional biopsy with a "
                       "narrow margin was performed"),
                  _cat("diagnosis", "melanoma", "histology confirmed a superficial spreading "
                       "melanoma"))],
    "d09": [_cats(_cat("diagnosis", "epidural haematoma", "CT showed a left temporal epidural "
                       "haematoma"),
                  _cat("surgical_management", "emergency craniotomy and evacuation",
                       "evacuated through an emergency craniotomy"))],
    "d10": [_cats(_cat("counting", "three", "three well-defined round nodules"),
                  _cat("annotation_marker", "pulmonary nodules", "nodules (circles)"),
                  _cat("diagnosis", "pulmonary metastases", "CT confirmed pulmonary "
                       "metastases"))],
    "d11": [_cats(_cat("spatial_location", "lesser curvature of the antrum", "ulcer on the "
                       "lesser curvature of the gastric antrum"),
                  _cat("drug_therapy", "a proton pump inhibitor for eight weeks", "a proton "
                       "pump inhibitor was given for eight weeks"))],
    "d12": [_cats(_cat("diagnosis", "acute pulmonary embolism", "CT pulmonary angiography "
                       "confirmed acute pulmonary embolism"),
                  _cat("drug_therapy", "a direct oral anticoagulant", "treated with a direct "
                       "oral anticoagulant"))],
    # d19: the only category offered has no evidence, so it does not count.
    "d19": [_cats('  <category id="normal_abnormal">\n    <answer>normal</answer>\n'
                  "    <evidence></evidence>\n  </category>")],
    # d20: malformed three times (unclosed, unknown id, prose).
    "d20": ['<categories>\n  <category id="diagnosis"><answer>ureteric stone</answer>'
            "<evidence>6-mm calculus</evidence>\n",
            _cats(_cat("stone_size", "6 mm", "a 6-mm calculus")),
            "Diagnosis and next-step management are both supported by this record."],
    # d21: only annotation / marker, but the texts describe no marker.
    "d21": [_cats(_cat("annotation_marker", "the meniscal tear", "a horizontal tear through "
                       "the posterior horn"))],
}


def _q(stem: str, options: list[str], correct: str, fmt: str, style: str, key: str,
       rationale: str, scope: str = "the whole image") -> str:
    return json.dumps({"stem": stem, "options": options, "correct": correct,
                       "answer_format": fmt, "rationale": rationale, "image_scope": scope,
                       "stem_style": style, "key_finding": key}, ensure_ascii=False)


QUESTIONS = {
    ("d01", "findings"): [
        # The first reply leaves out the rationale (a schema violation); the re-ask is valid.
        json.dumps({"stem": "What is the main abnormality on this frontal chest radiograph?",
                    "options": ["Right-sided pneumothorax", "Right lower lobe consolidation",
                                "Right pleural effusion", "Elevated right hemidiaphragm"],
                    "correct": "A", "answer_format": "mcq", "image_scope": "panel a",
                    "stem_style": "short", "key_finding": "right pneumothorax"}),
        _q("What is the main abnormality on this frontal chest radiograph?",
           ["Right-sided pneumothorax", "Right lower lobe consolidation",
            "Right pleural effusion", "Elevated right hemidiaphragm"], "A", "mcq", "short",
           "right pneumothorax", "A visceral pleural line with no lung markings lateral to it "
           "is a pneumothorax, as the caption states.", "panel a")],
    ("d01", "annotation_marker"): [
        _q("What does the arrow on this radiograph point to?",
           ["The visceral pleural line", "A rib fracture", "The medial border of the scapula",
            "A skin fold"], "A", "mcq", "short", "visceral pleural line",
           "The caption marks the visceral pleural line with the arrow.", "panel a")],
    ("d01", "next_step_management"): [
        _q("A 24-year-old man has sudden right-sided pleuritic chest pain and breathlessness at "
           "rest. He is haemodynamically stable, and his oxygen saturation is 93% on room air. "
           "His chest radiograph is shown. What is the most appropriate next step?",
           ["Small-bore chest drain insertion", "Discharge with follow-up in two weeks",
            "Emergency thoracotomy", "High-dose oral corticosteroids",
            "Immediate thoracoscopic pleurodesis"], "A", "mcq", "long",
           "large right pneumothorax", "A symptomatic pneumothorax with a rim over 2 cm was "
           "drained with a small-bore chest drain in the record.", "panel a")],
    ("d02", "diagnosis"): [
        _q("A 45-year-old woman with no history of cancer has this lesion found on CT done for "
           "flank pain. What is the most likely diagnosis?",
           ["Hepatic haemangioma", "Hepatocellular carcinoma", "Liver metastasis",
            "Simple hepatic cyst", "Pyogenic liver abscess"], "A", "mcq", "short",
           "peripheral nodular enhancement", "Discontinuous peripheral nodular enhancement is "
           "the pattern of a cavernous haemangioma, the record's diagnosis.", "panel a")],
    ("d02", "spatial_location"): [
        _q("On this portal venous phase CT image, where is the finding located?",
           ["Right hepatic lobe", "Left hepatic lobe", "Medial segment of the left lobe",
            "Posterior caudate region"], "A", "mcq", "short", "hypodense lesion",
           "The caption places the lesion in the right lobe of the liver.", "panel a")],
    ("d03", "severity_grading"): [
        _q("A 58-year-old man who has had type 2 diabetes for 15 years has this fundus "
           "photograph taken at a screening visit. How should his retinopathy be graded?",
           ["Mild non-proliferative diabetic retinopathy",
            "Moderate non-proliferative diabetic retinopathy",
            "Severe non-proliferative diabetic retinopathy",
            "Proliferative diabetic retinopathy", "No diabetic retinopathy"], "C", "mcq",
           "long", "haemorrhages in all four quadrants with venous beading",
           "Haemorrhages in four quadrants with venous beading meet the 4-2-1 rule for severe "
           "non-proliferative disease; no new vessels were seen.")],
    ("d03", "findings"): [
        _q("True or false: this photograph shows haemorrhages in only one quadrant of the "
           "retina.", ["True", "False"], "B", "true_false", "short",
           "haemorrhages in all four quadrants",
           "The record describes haemorrhages in each of the four quadrants.")],
    ("d04", "diagnosis"): [
        _q("What is the most likely diagnosis for this lymph node biopsy?",
           ["Tuberculous lymphadenitis", "Sarcoidosis", "Hodgkin lymphoma",
            "Cat-scratch disease", "Metastatic carcinoma"], "A", "mcq", "short",
           "caseating granuloma", "Caseating granulomas with acid-fast bacilli mean "
           "tuberculosis, as the record concludes.", "panel b")],
    ("d04", "drug_therapy"): [
        _q("A 30-year-old man has had painless swelling in the neck for two months, with "
           "evening fevers and weight loss. A biopsy of an enlarged cervical lymph node is "
           "shown; a stain for acid-fast bacilli is positive. Which treatment should be "
           "started?",
           ["Rifampicin, isoniazid, pyrazinamide and ethambutol", "Doxycycline for six weeks",
            "ABVD chemotherapy", "Oral prednisolone", "Azithromycin for five days"], "A",
           "mcq", "long", "caseating granuloma", "Tuberculous lymphadenitis is treated with "
           "standard four-drug therapy, as in the record.", "panel b")],
    ("d04", "prognosis"): [
        "INVALID: the record says nothing about the outcome or the course of the disease."],
    ("d05", "findings"): [
        _q("What is the most likely finding in the gallbladder on this ultrasound image?",
           ["Gallstones", "Gallbladder polyp", "Biliary sludge", "Porcelain gallbladder"], "A",
           "mcq", "short", "gallstones", "Mobile echogenic foci that cast acoustic shadows "
           "are gallstones, as stated in the record.")],
    ("d05", "complications"): [
        _q("A 42-year-old woman has had three episodes of colicky right upper abdominal pain "
           "after fatty meals. Her ultrasound is shown. If she is not treated, which "
           "complication is most likely?",
           ["Acute cholecystitis", "Acute pancreatitis", "acute cholecystitis",
            "Ascending cholangitis", "Gallstone ileus"], "A", "mcq", "long", "gallstones",
           "Cystic duct obstruction by a stone causes acute cholecystitis.")],
    ("d05", "surgical_management"): [
        _q("A 42-year-old woman has had three episodes of colicky right upper abdominal pain "
           "after fatty meals over six months. She is now pain-free, and her liver tests are "
           "normal. Her ultrasound is shown. What is the most appropriate treatment?",
           ["Elective laparoscopic cholecystectomy", "ERCP with sphincterotomy",
            "Oral ursodeoxycholic acid", "Percutaneous cholecystostomy", "No treatment"], "A",
           "mcq", "long", "gallstones", "Symptomatic gallstones without complications are "
           "treated by elective laparoscopic cholecystectomy, as in the record.")],
    ("d06", "differential_diagnosis"): [
        _q("A 34-year-old man with advanced HIV infection has headache and fever. Which pair "
           "of conditions is the main differential diagnosis of the lesion on this MRI?",
           ["Cerebral toxoplasmosis and primary CNS lymphoma", "Glioblastoma and meningioma",
            "Multiple sclerosis and acute disseminated encephalomyelitis",
            "Herpes simplex encephalitis and neurosyphilis"], "A", "mcq", "long",
           "ring-enhancing lesion", "A ring-enhancing lesion in advanced HIV raises "
           "toxoplasmosis and CNS lymphoma, the pair the record weighs.")],
    ("d06", "next_step_test"): [
        _q("A 34-year-old man with advanced HIV infection has headache and fever; his MRI is "
           "shown. Which test would best tell apart the two leading diagnoses?",
           ["Thallium-201 SPECT of the brain", "Electroencephalography",
            "Serum cryptococcal antigen", "Cerebral angiography", "Visual evoked potentials"],
           "A", "mcq", "long", "ring-enhancing lesion", "The record used thallium-201 SPECT "
           "to separate lymphoma from toxoplasmosis.")],
    ("d07", "diagnosis"): [
        _q("What injury does this lateral radiograph show after a fall on an outstretched "
           "hand?",
           ["Extra-articular distal radius fracture with dorsal angulation of the distal "
            "fragment (a Colles-type fracture)", "Smith fracture", "Scaphoid fracture",
            "Galeazzi"], "A", "mcq", "short", "dorsal angulation",
           "The distal fragment is angulated dorsally, a Colles-type fracture.", "panel b")],
    ("d07", "next_step_management"): [
        _q("A 67-year-old woman fell on her outstretched left hand an hour ago. The wrist is "
           "swollen and deformed; the hand is warm and sensation is intact. Her radiograph is "
           "shown. What is the most appropriate initial management?",
           ["Closed reduction under a haematoma block and a below-elbow cast",
            "Open reduction and internal fixation within 24 hours", "A sling and analgesia "
            "only", "External fixation", "Immediate referral to vascular surgery"], "A", "mcq",
           "long", "dorsally angulated distal radius fracture", "The record's fracture was "
           "reduced closed under a haematoma block and put in a cast.", "panel b")],
    ("d08", "next_step_test"): [
        # Three replies, none valid: cut off, options as one string, a short stem.
        '{"stem": "A 52-year-old man has a mole on his back that has grown over six months. '
        'His dermoscopy image is shown. What is the most appropriate next step?", "options": [',
        json.dumps({"stem": "A 52-year-old man has a mole on his back that has grown over six "
                    "months. His dermoscopy image is shown. What is the most appropriate next "
                    "step?", "options": "Excisional biopsy; Shave biopsy; Review in a year; "
                    "Cryotherapy", "correct": "A", "answer_format": "mcq", "rationale": "r",
                    "image_scope": "whole", "stem_style": "long", "key_finding": "veil"}),
        _q("What is the next test for this lesion?", ["Excisional biopsy with a narrow margin",
           "Shave biopsy", "Review in twelve months", "Cryotherapy"], "A", "mcq", "short",
           "blue-white veil", "The record performed an excisional biopsy.")],
    ("d08", "diagnosis"): [
        _q("What is the most likely diagnosis of this pigmented lesion?",
           ["Melanoma", "Seborrhoeic keratosis", "Dermatofibroma", "Blue naevus",
            "Basal cell carcinoma"], "A", "mcq", "short", "blue-white veil",
           "An atypical network with a blue-white veil points to melanoma, which histology "
           "confirmed.")],
    ("d09", "diagnosis"): [
        _q("A 19-year-old man was hit on the head by a cricket ball. His CT shows a lens-shaped "
           "collection typical of an epidural haematoma. What is the most likely diagnosis?",
           ["Epidural haematoma", "Subdural haematoma", "Subarachnoid haemorrhage",
            "Cerebral contusion"], "A", "mcq", "long", "biconvex collection",
           "A biconvex extra-axial collection is an epidural haematoma.")],
    ("d09", "surgical_management"): [
        _q("A 19-year-old man was hit on the side of the head by a cricket ball. He was "
           "briefly unconscious, recovered, and an hour later became drowsy with a dilating "
           "left pupil. His CT is shown. What is the most appropriate management?",
           ["Emergency craniotomy and evacuation", "Burr-hole drainage the next morning",
            "Intravenous mannitol and observation", "Lumbar puncture",
            "Repeat CT in 24 hours"], "A", "mcq", "long", "epidural haematoma with midline "
           "shift", "A deteriorating patient with an epidural haematoma needs emergency "
           "evacuation, as in the record.")],
    ("d10", "counting"): [
        _q("How many nodules are circled on this radiograph?", ["One", "Two", "Three", "Four"],
           "C", "mcq", "short", "three pulmonary nodules",
           "The caption describes three round nodules, each circled.")],
    ("d10", "annotation_marker"): [
        _q("What do the circles on this chest radiograph mark?",
           ["Pulmonary nodules", "Calcified lymph nodes", "Nipple shadows", "Rib fractures"],
           "A", "mcq", "short", "pulmonary nodules",
           "The circles mark the three nodules that CT showed to be metastases.")],
    ("d10", "diagnosis"): [
        _q("A 16-year-old boy treated for osteosarcoma of the femur has staging imaging. What "
           "is the most likely cause of the findings on his radiograph?",
           ["Pulmonary metastases", "Miliary tuberculosis", "Sarcoidosis", "Hamartomas",
            "Septic emboli"], "A", "mcq", "long", "three round nodules",
           "Round lung nodules in osteosarcoma are metastases, confirmed by CT in the "
           "record.")],
    ("d11", "spatial_location"): [
        _q("Where is the finding on this endoscopic image?",
           ["Gastric ulcer", "Duodenal ulcer", "Oesophageal varices", "Gastric polyp"], "A",
           "mcq", "short", "clean-based ulcer", "The ulcer lies on the lesser curvature.")],
    ("d11", "drug_therapy"): [
        _q("A 50-year-old woman who takes naproxen for osteoarthritis has had epigastric pain "
           "for a month. Biopsies are negative for Helicobacter pylori and malignancy. Her "
           "endoscopy is shown. Besides stopping naproxen, which drug treatment is most "
           "appropriate?",
           ["A proton pump inhibitor for eight weeks", "Triple eradication therapy",
            "Oral prednisolone", "Misoprostol for three days", "Intravenous octreotide"], "A",
           "mcq", "long", "clean-based gastric ulcer", "An NSAID ulcer without H. pylori is "
           "treated with a proton pump inhibitor, as the record did.")],
    ("d12", "diagnosis"): [
        _q("A 71-year-old woman becomes acutely breathless three weeks after a knee "
           "replacement. What is the diagnosis shown on her CT pulmonary angiogram?",
           ["Acute pulmonary embolism", "Aortic dissection", "Pneumonia",
            "Pericardial effusion", "Pulmonary artery sarcoma"], "A", "mcq", "long",
           "filling defect", "A filling defect in the pulmonary artery is an embolus.")],
    ("d12", "drug_therapy"): [
        _q("A 71-year-old woman became breathless three weeks after a knee replacement. Her CT "
           "pulmonary angiogram shows a filling defect in the right main pulmonary artery. "
           "She is normotensive with no right ventricular strain. What is the most "
           "appropriate treatment?",
           ["A direct oral anticoagulant", "Systemic thrombolysis",
            "Surgical embolectomy", "An inferior vena cava filter", "Aspirin alone"], "A",
           "mcq", "long", "filling defect in the right main pulmonary artery",
           "Haemodynamically stable embolism is treated with anticoagulation, as in the "
           "record.")],
}

# Text-only probe: three samples per question that passed the code checks.
_P = {"A": "\\boxed{A}", "B": "\\boxed{B}", "C": "\\boxed{C}", "D": "\\boxed{D}",
      "E": "\\boxed{E}"}
PROBES = {
    ("d01", "findings"): "DBC", ("d01", "annotation_marker"): "BDC",
    ("d01", "next_step_management"): "ABA", ("d02", "diagnosis"): "AEA",
    ("d02", "spatial_location"): "BAC", ("d03", "severity_grading"): "BCD",
    ("d03", "findings"): "ABB", ("d04", "diagnosis"): "BAC",
    ("d04", "drug_therapy"): "AAA",  # the stem's acid-fast stain gives it away
    ("d05", "findings"): "ABA", ("d05", "surgical_management"): "AAE",
    ("d06", "differential_diagnosis"): "ACA", ("d06", "next_step_test"): "CAB",
    ("d07", "next_step_management"): "BAC", ("d08", "diagnosis"): "ABD",
    ("d09", "surgical_management"): "AAA",  # a lucid interval is a textbook clue
    ("d10", "counting"): "BCD", ("d10", "annotation_marker"): "ACA",
    ("d10", "diagnosis"): "AAD", ("d11", "drug_therapy"): "ABA",
    ("d12", "diagnosis"): "AAA",  # breathless after surgery: guessable without the image
}
_PROBE_TEXT = {"A": "Without the image the stem still points to the first option.",
               "B": "I cannot see the image; the second option seems more common.",
               "C": "Guessing from the stem alone, the third option is plausible.",
               "D": "With no image, the fourth option is my best guess.",
               "E": "Without the picture, I would pick the last option."}


# Part 2: source-grounded traces. Per kept question: the drafter's explanation, the
# refiner's three sections (a list: one reply per sample, re-asks included) and the
# verifier's verdicts (None: every criterion passes; a dict: the failing criteria with their
# reasons; a list: raw replies, one per sample).
def _t(perception: str, interpretation: str, justification: str) -> str:
    return (f"<perception>{perception}</perception>\n<interpretation>{interpretation}"
            f"</interpretation>\n<justification>{justification}</justification>")


PASS_REASONS = {
    "source_consistency": "Every finding in the trace is shown in the image or stated in the "
                          "captions and in-text references.",
    "answer_justification": "The trace shows how the findings lead to the selected option.",
    "reasoning_utility": "The trace stays on this image and this question without padding.",
}


def _verdict(fail: dict[str, str] | None = None) -> str:
    fail = fail or {}
    return json.dumps({c: {"verdict": "fail" if c in fail else "pass",
                           "reason": fail.get(c, r)} for c, r in PASS_REASONS.items()})


TRACES = {
    ("d01", "findings"): (
        ["The frontal radiograph shows a thin pleural line running parallel to the right chest "
         "wall with no lung markings beyond it, which is what the question is about. The "
         "sub-caption describes this visceral pleural line, and the article reports a "
         "24-year-old man with sudden right-sided pleuritic pain. Air outside the lung edge "
         "is a pneumothorax. The authors inserted a drain and the lung re-expanded the next "
         "day."],
        [_t("Frontal chest radiograph. In the right hemithorax a thin visceral pleural line "
            "runs parallel to the chest wall, with no lung markings lateral to it.",
            "A visible visceral pleural line with no markings beyond it means air has "
            "separated the lung from the chest wall; the presentation was sudden right-sided "
            "pleuritic pain.",
            "Air outside a right-sided pleural line in a patient with acute pleuritic pain "
            "makes a right-sided pneumothorax the main abnormality.")], None),
    ("d01", "annotation_marker"): (
        ["The arrow points to a fine white line close to the right chest wall. The sub-caption "
         "says the arrow marks the visceral pleural line, beyond which there are no lung "
         "markings. That line is the edge of the lung pushed away from the chest wall by air, "
         "so the arrow marks the visceral pleural line. His oxygen saturation was 93%."],
        [_t("Frontal chest radiograph with an arrow pointing at a thin curved white line in the "
            "lateral right hemithorax, beyond which no lung markings are visible.",
            "The sub-caption states that the arrow marks the visceral pleural line, which is "
            "the displaced edge of the lung when air lies in the pleural space.",
            "The marked structure is the thin line at the lung edge that the caption names, "
            "so the arrow points to the visceral pleural line.")], None),
    ("d01", "next_step_management"): (
        ["The radiograph shows a right pneumothorax with a pleural line and absent markings "
         "laterally. The article states that the rim of air measured more than 2 cm at the "
         "hilum and that he was breathless at rest, so a small-bore chest drain was inserted. "
         "Large symptomatic primary pneumothoraces need drainage, while observation suits "
         "small ones; most recur within five years."],
        [_t("Frontal chest radiograph with a right visceral pleural line and no lung markings "
            "lateral to it: a rim of air along the right chest wall.",
            "This is a right pneumothorax; the in-text reference gives a rim of air over 2 cm "
            "at the hilum in a patient breathless at rest, which makes it large and "
            "symptomatic.",
            "A large, symptomatic pneumothorax in a stable young man needs the pleural air "
            "drained, which makes small-bore chest drain insertion the appropriate next "
            "step.")], None),
    ("d02", "diagnosis"): (
        ["On the portal venous phase CT there is a well-defined hypodense lesion in the right "
         "lobe of the liver with peripheral nodular enhancement. The article reports "
         "centripetal fill-in on delayed images in a woman with no history of malignancy, and "
         "the authors call it a cavernous haemangioma, the commonest benign liver tumour, "
         "seen in up to 20% of autopsies."],
        [_t("Axial contrast-enhanced CT in the portal venous phase with a well-defined "
            "hypodense lesion in the right hepatic lobe and nodular enhancement at its rim.",
            "Discontinuous peripheral nodular enhancement that fills in centripetally on "
            "delayed images, as the in-text reference describes, is the typical pattern of a "
            "cavernous haemangioma; the patient has no history of malignancy.",
            "An incidental, well-defined liver lesion with peripheral nodular enhancement and "
            "centripetal fill-in in a woman without cancer is a hepatic haemangioma.")], None),
    ("d02", "spatial_location"): (
        ["The finding is the hypodense lesion with peripheral nodular enhancement. On the "
         "axial image it lies on the patient's right within the liver, and the sub-caption "
         "places it in the right lobe of the liver, so it is in the right hepatic lobe."],
        [  # three replies, each without a usable justification: rejected in code
         "<perception>Axial portal venous phase CT with a hypodense lesion in the liver on "
         "the patient's right.</perception>\n<interpretation>The sub-caption places the "
         "lesion in the right lobe of the liver.</interpretation>",
         "<perception>Axial CT with a liver lesion on the right.</perception>\n"
         "<interpretation>The caption names the right lobe.</interpretation>\nAnswer: A",
         _t("Axial portal venous phase CT with a hypodense lesion in the right liver.",
            "The sub-caption places the lesion in the right lobe of the liver.", "")], None),
    ("d03", "severity_grading"): (
        ["The fundus photograph shows dot and blot haemorrhages in all four quadrants with "
         "hard exudates near the macula and venous beading, and no new vessels. The in-text "
         "reference says more than 20 haemorrhages in each quadrant with venous beading meet "
         "the 4-2-1 rule, which defines severe non-proliferative retinopathy; proliferative "
         "disease needs new vessels."],
        [_t("Colour fundus photograph of the right eye with dot and blot haemorrhages in all "
            "four quadrants, hard exudates near the macula and venous beading; no new vessels "
            "are visible.",
            "The 4-2-1 rule grades retinopathy as severe non-proliferative when more than 20 "
            "intraretinal haemorrhages lie in each of four quadrants or veins are beaded in "
            "two; the in-text reference reports both and no neovascularisation.",
            "Haemorrhages in every quadrant with venous beading and no new vessels meet the "
            "4-2-1 rule, so the retinopathy is severe non-proliferative diabetic "
            "retinopathy.")], None),
    ("d03", "findings"): (
        ["The statement claims haemorrhages in only one quadrant. The photograph and the "
         "sub-caption show dot and blot haemorrhages over all four quadrants of the retina, "
         "with hard exudates and venous beading, so the statement is false."],
        [_t("Colour fundus photograph with dot and blot haemorrhages scattered over all four "
            "quadrants of the retina and hard exudates near the macula.",
            "The sub-caption and the in-text reference both describe haemorrhages in each of "
            "the four quadrants, a diffuse rather than a localised pattern.",
            "Since haemorrhages appear in every quadrant, the claim that they are confined to "
            "one quadrant does not hold, so the statement is false.")],
        ["All three criteria are met.", _verdict()]),  # the first verdict is no JSON: re-asked
    ("d04", "diagnosis"): (
        ["The H&E section shows a granuloma with central caseous necrosis, epithelioid "
         "histiocytes and a Langhans giant cell. The caption adds that Ziehl-Neelsen staining "
         "revealed acid-fast bacilli, and the article confirms tuberculous lymphadenitis "
         "treated with four drugs. Caseating granulomas with acid-fast bacilli mean "
         "tuberculosis."],
        [_t("H&E section of a lymph node with a caseating granuloma, epithelioid histiocytes, "
            "a Langhans giant cell and red acid-fast bacilli in the necrotic centre.",
            "Caseating granulomas with acid-fast organisms are the hallmark of mycobacterial "
            "infection; the caption reports Ziehl-Neelsen staining positive for acid-fast "
            "bacilli.",
            "A caseating granuloma with acid-fast bacilli in a cervical node means "
            "tuberculous lymphadenitis.")],
        {"source_consistency": "The trace places acid-fast bacilli in this H&E panel, but the "
                               "caption says the Ziehl-Neelsen stain is not shown."}),
    ("d05", "findings"): (
        ["The ultrasound shows bright echogenic foci inside the gallbladder that cast acoustic "
         "shadows behind them, and the wall is not thickened. Mobile shadowing foci in the "
         "lumen are gallstones; sludge does not shadow and a polyp does not move, so this is "
         "not sludge or a polyp."],
        [_t("Right upper quadrant ultrasound with several echogenic foci in the gallbladder "
            "lumen that cast posterior acoustic shadows; the gallbladder wall is not "
            "thickened.",
            "Echogenic intraluminal foci with posterior shadowing are the sonographic sign of "
            "calculi, and the in-text reference describes multiple mobile gallstones.",
            "Shadowing echogenic foci within the gallbladder lumen are gallstones.")], None),
    ("d05", "surgical_management"): (
        ["The ultrasound shows several shadowing gallstones without wall thickening or "
         "pericholecystic fluid. She has had recurrent biliary colic, and the article lists "
         "her for elective laparoscopic cholecystectomy, the usual treatment of symptomatic "
         "uncomplicated gallstones."],
        [_t("Right upper quadrant ultrasound with multiple shadowing gallstones; the wall is "
            "not thickened and no pericholecystic fluid is described.",
            "Gallstones affect about one adult in ten in Western countries and most never "
            "cause symptoms; in large cohorts a third of patients with biliary colic have "
            "another attack within two years, and women are affected twice as often as men.",
            "Recurrent biliary colic from uncomplicated gallstones is treated by elective "
            "laparoscopic cholecystectomy.")],
        {"reasoning_utility": "Most of the interpretation is general epidemiology and cohort "
                              "results that say nothing about this image."}),
    ("d06", "differential_diagnosis"): (
        ["The T1-weighted MRI after contrast shows a ring-enhancing lesion in the right basal "
         "ganglia with oedema and mild mass effect. In a man with advanced HIV and a CD4 count "
         "of 40, the article weighs toxoplasmosis against primary CNS lymphoma, because a "
         "solitary lesion makes toxoplasmosis less certain."],
        [_t("Axial contrast-enhanced T1-weighted MRI with a ring-enhancing lesion in the right "
            "basal ganglia, surrounding oedema and mild mass effect.",
            "With advanced HIV and a CD4 count of 40 cells/uL, a ring-enhancing basal ganglia "
            "lesion is most often toxoplasmosis, and the in-text reference notes that a "
            "solitary lesion also raises primary CNS lymphoma.",
            "A solitary ring-enhancing lesion in severe immunosuppression leaves cerebral "
            "toxoplasmosis and primary CNS lymphoma as the pair to tell apart.")], None),
    ("d06", "next_step_test"): (
        ["The MRI shows a single ring-enhancing lesion in the right basal ganglia. The article "
         "requested thallium-201 SPECT of the brain to tell lymphoma from toxoplasmosis, since "
         "lymphoma takes up thallium and an infectious lesion does not."],
        [_t("Axial contrast-enhanced T1-weighted MRI with a single ring-enhancing lesion in "
            "the right basal ganglia and surrounding oedema.",
            "Toxoplasmosis and primary CNS lymphoma both enhance in a ring in advanced HIV; "
            "lymphoma is metabolically active and takes up thallium-201 while an infectious "
            "lesion does not, and the in-text reference requested SPECT for this purpose.",
            "The test that separates the two leading diagnoses of this lesion is thallium-201 "
            "SPECT of the brain.")], None),
    ("d07", "next_step_management"): (
        ["The lateral radiograph shows a transverse distal radius fracture with dorsal "
         "angulation and displacement of the distal fragment, a Colles-type fracture after a "
         "fall on the outstretched hand. The article reduced it closed under a haematoma "
         "block and applied a below-elbow cast."],
        [_t("Lateral radiograph of the left wrist with a transverse fracture of the distal "
            "radius; the distal fragment is angulated and displaced dorsally.",
            "A dorsally angulated extra-articular distal radius fracture after a fall on the "
            "outstretched hand is a Colles-type fracture, and the in-text reference reports "
            "an acceptable position after closed reduction.",
            "A displaced Colles-type fracture with a warm hand and intact sensation is managed "
            "first by closed reduction under a haematoma block and a below-elbow cast.")],
        ["All three criteria pass.",  # three verdicts, none valid: verify_unparsed
         '```json\n{"source_consistency": "pass", "answer_justification": "pass", '
         '"reasoning_utility": "pass"}\n```',
         json.dumps({c: {"verdict": "ok", "reason": r} for c, r in PASS_REASONS.items()})]),
    ("d08", "diagnosis"): (
        ["Dermoscopy shows an asymmetric pigmented lesion with an atypical network, irregular "
         "dots and globules and a blue-white veil. The lesion grew over six months and "
         "histology confirmed a superficial spreading melanoma with a Breslow thickness of "
         "0.8 mm."],
        [_t("Dermoscopy of a pigmented lesion on the back with asymmetry of colour and "
            "structure, an atypical pigment network, irregular dots and globules and a "
            "blue-white veil.",
            "An atypical network, irregular dots and globules and a blue-white veil are "
            "dermoscopic features of melanoma; the lesion grew over six months.",
            "These features favour melanoma over seborrhoeic keratosis, which would show "
            "milia-like cysts and comedo-like openings instead.")], None),
    ("d10", "counting"): (
        ["<think>Count the circles: one in the upper zone, one in the middle",  # cut off
         "The radiograph has circles drawn over round nodules in the left lung, from the upper "
         "to the lower zone, and the sub-caption says three well-defined nodules are circled, "
         "the largest about 2 cm. Counting the circles gives three."],
        [_t("Frontal chest radiograph with circles drawn over round nodules in the left lung, "
            "from the upper to the lower zone.",
            "The sub-caption states that three well-defined round nodules are circled in the "
            "left lung, the largest about 2 cm in the lower zone.",
            "Each circle surrounds a single nodule and three circles are drawn, so three "
            "nodules are circled.")], None),
    ("d10", "annotation_marker"): (
        ["The circles on the radiograph surround round opacities in the left lung. The "
         "sub-caption calls them well-defined round nodules, and CT confirmed them as "
         "pulmonary metastases in this boy with osteosarcoma."],
        [_t("Frontal chest radiograph with circles drawn around three round opacities in the "
            "left lung.",
            "The sub-caption identifies the circled opacities as well-defined round nodules, "
            "and the in-text reference reports that CT confirmed them as pulmonary "
            "metastases.",
            "The circles surround the round lung opacities that the texts call nodules, so "
            "they mark pulmonary nodules.")], None),
    ("d10", "diagnosis"): (
        ["Three round nodules in the left lung of a boy with osteosarcoma are metastases, as "
         "the staging CT in the article confirmed; osteosarcoma spreads to the lungs first."],
        [_t("Frontal chest radiograph with three well-defined round nodules in the left lung, "
            "the largest about 2 cm in the lower zone.",
            "The nodules are in the lungs of a patient who is being staged for osteosarcoma.",
            "The answer is pulmonary metastases.")],
        {"answer_justification": "The trace states the answer without showing why round lung "
                                 "nodules in osteosarcoma point to metastases."}),
    ("d11", "drug_therapy"): (
        ["Endoscopy shows a 1.5-cm clean-based ulcer on the lesser curvature of the antrum "
         "with smooth margins. Biopsies excluded malignancy and Helicobacter pylori, so the "
         "ulcer was put down to naproxen, which was stopped, and a proton pump inhibitor was "
         "given for eight weeks."],
        [_t("Upper endoscopy with a 1.5-cm clean-based ulcer on the lesser curvature of the "
            "gastric antrum with smooth, regular margins.",
            "A clean-based ulcer with smooth margins looks benign; the in-text reference "
            "reports biopsies negative for malignancy and Helicobacter pylori, so the ulcer "
            "was attributed to naproxen.",
            "A benign NSAID-related gastric ulcer without Helicobacter pylori heals with acid "
            "suppression once the NSAID is stopped, which makes a proton pump inhibitor for "
            "eight weeks the appropriate treatment.")], None),
}


# Two auxiliary VQA rows (recipes/curate_aux_demo.yaml) that overlap the curated benchmark
# split (d02 and d03 with the demo's seed): the OctoMed prepare stage removes the first for
# its byte-identical image and the second for a 16-word span of a benchmark question.
OVERLAP = [
    {"id": "v01", "question": "Which eye is shown in this fundus photograph?",
     "options": ["Right eye", "Left eye"], "answer": "A", "images": ["images/d03.jpg"],
     "task": "mm_reasoning", "modality": "fundus"},
    {"id": "v02", "question": "A 58-year-old man who has had type 2 diabetes for 15 years has "
     "this fundus photograph taken at a screening visit. What should he be offered next?",
     "options": ["Referral to an ophthalmologist", "Rescreening in two years"], "answer": "A",
     "images": ["images/d01.jpg"], "task": "mm_reasoning", "modality": "fundus"},
]


def trace_replies() -> list[dict]:
    """The drafter's, refiner's and verifier's replayed replies (written to Parquet)."""
    out = []

    def add(key: str, model: str, texts: list[str]) -> None:
        for i, text in enumerate(texts):
            out.append({"item_id": f"{SOURCE}/{key}", "sample_index": i, "model": model,
                        "text": text, "finish_reason": "stop" if "<think>" not in text
                        else "length", "prompt_tokens": 1200,
                        "completion_tokens": max(1, len(text) // 4)})

    for (rid, cat), (drafts, refined, verdicts) in TRACES.items():
        add(f"{rid}/{cat}#draft", DRAFTER, drafts)
        add(f"{rid}/{cat}#refine", REFINER, refined)
        if isinstance(verdicts, list):
            add(f"{rid}/{cat}#verify", VERIFIER, verdicts)
        else:
            add(f"{rid}/{cat}#verify", VERIFIER, [_verdict(verdicts)])
    return out


def write_trace_replies(path: Path) -> None:
    """The trace replies as a compressed Parquet replay file (the replay backend reads it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = trace_replies()
    schema = pa.schema([("item_id", pa.string()), ("sample_index", pa.int32()),
                        ("model", pa.string()), ("text", pa.string()),
                        ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()),
                        ("completion_tokens", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd",
                   compression_level=19)


def replies() -> list[dict]:
    """Every replayed reply, as lines of the replay format."""
    out = []

    def add(key: str, model: str, texts: list[str]) -> None:
        for i, text in enumerate(texts):
            out.append({"item_id": f"{SOURCE}/{key}", "sample_index": i, "model": model,
                        "text": text, "finish_reason": "stop", "prompt_tokens": 900,
                        "completion_tokens": max(1, len(text) // 4)})

    for rid, texts in CONTEXT.items():
        add(f"{rid}#context", JUDGE, texts)
    for rid, texts in TASKS.items():
        add(f"{rid}#tasks", JUDGE, texts)
    for (rid, cat), texts in QUESTIONS.items():
        add(f"{rid}#{cat}", JUDGE, texts)
    for (rid, cat), letters in PROBES.items():
        add(f"{rid}#{cat}#probe", PROBER,
            [f"{_PROBE_TEXT[x]} {_P[x]}" for x in letters])
    return out


def main() -> None:
    draw_images()
    with open(HERE / "figures.jsonl", "w", encoding="utf-8") as f:
        for r in RECORDS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(HERE / "responses.jsonl", "w", encoding="utf-8") as f:
        for r in replies():
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    write_trace_replies(HERE / "trace_responses.parquet")
    with open(HERE / "aux_overlap.jsonl", "w", encoding="utf-8") as f:
        for r in OVERLAP:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(RECORDS)} records, {len(replies())} + {len(trace_replies())} replies, "
          f"{len(list(IMAGES.glob('*')))} images in {HERE}")


if __name__ == "__main__":
    main()
