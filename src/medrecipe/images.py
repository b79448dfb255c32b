"""Content-addressed image store, decoding (PNG/JPEG/TIFF/BMP/WebP/DICOM) and smart_resize.

An image is identified by the SHA-256 of its original bytes. The store keeps one file per
hash (written once, atomically): raster formats as their original bytes, DICOM converted
to an 8-bit PNG. A resized copy is identified as "<sha>@<H>x<W>" and stored once per size.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medrecipe.errors import ImageError

# Formats we keep as-is; anything else that Pillow or pydicom reads is converted to PNG.
_RASTER_EXT = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}
_DICOM_MAGIC_OFFSET = 128

# Pillow's own guard stays as a last line; the store checks its own (configurable) limit
# from the header, before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = 30_000 * 30_000
DEFAULT_MAX_PIXELS = 100_000_000
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                  Image.DecompressionBombError)


def _label(name: str | None) -> str:
    return f"{name}: " if name else ""


def _open_checked(data: bytes, limit: int | None, name: str | None) -> Image.Image:
    """Image.open (header only) with the pixel limit checked; Pillow's bomb error included."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # beyond Pillow's own limit: no size to show
        raise ImageError(f"{_label(name)}image is larger than the limit of "
                         f"{limit or Image.MAX_IMAGE_PIXELS:,} pixels (max_image_pixels); it was "
                         f"not decoded ({_reason(e)})") from None
    check_pixels(img.width, img.height, limit, name)
    return img


def check_pixels(width: int, height: int, limit: int | None, name: str | None = None) -> None:
    """Raise ImageError when an image is larger than `limit` pixels (read from its header)."""
    if limit is not None and width * height > limit:
        raise ImageError(f"{_label(name)}image of {width}x{height} = {width * height:,} pixels is "
                         f"larger than the limit of {limit:,} (max_image_pixels); it was not "
                         "decoded")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes (the image id)."""
    return hashlib.sha256(data).hexdigest()


def is_dicom(data: bytes) -> bool:
    """True when the bytes carry the DICOM preamble marker."""
    return len(data) > 132 and data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM"


# --------------------------------------------------------------------------- DICOM


def _first(value) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def dicom_to_image(data: bytes, max_pixels: int | None = None,
                   name: str | None = None) -> Image.Image:
    """Decode DICOM bytes to an 8-bit image: rescale, window (or robust min-max), MONOCHROME1."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on many harmless quirks
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
            check_pixels(cols, rows, max_pixels, name)
            return _dicom_pixels_to_image(ds)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom and its codecs raise many types
        raise ImageError(f"{_label(name)}undecodable DICOM: {type(e).__name__}: {e}") from None


def _dicom_pixels_to_image(ds) -> Image.Image:
    arr = ds.pixel_array
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        photometric = "RGB"
    is_color = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or (
        arr.ndim >= 3 and arr.shape[-1] in (3, 4) and getattr(ds, "SamplesPerPixel", 1) > 1)
    if frames > 1 and arr.ndim >= 3 and arr.shape[0] == frames:
        arr = arr[frames // 2]  # multi-frame: the middle frame
    if is_color:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = np.asarray(arr)
        if arr.dtype != np.uint8:
            arr = _minmax_u8(arr.astype(np.float64))
        return Image.fromarray(arr[..., :3].astype(np.uint8), "RGB")

    x = arr.astype(np.float64)
    slope = _first(getattr(ds, "RescaleSlope", None)) or 1.0
    intercept = _first(getattr(ds, "RescaleIntercept", None)) or 0.0
    x = x * slope + intercept
    center = _first(getattr(ds, "WindowCenter", None))
    width = _first(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width > 1:
        # Linear VOI LUT (DICOM PS3.3 C.11.2.1.2): map [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2].
        lo = center - 0.5 - (width - 1) / 2
        hi = center - 0.5 + (width - 1) / 2
        y = np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0
    else:
        y = _minmax_u8(x).astype(np.float64)
    if photometric == "MONOCHROME1":
        y = 255.0 - y  # MONOCHROME1: low values are bright
    return Image.fromarray(np.rint(y).astype(np.uint8), "L")


def _minmax_u8(x: np.ndarray) -> np.ndarray:
    """Robust min-max to 8 bits: the 0.5th-99.5th percentile range, so outliers don't flatten it."""
    lo, hi = np.percentile(x, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return np.rint(np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- decoding


def decode_image_bytes(data: bytes, max_pixels: int | None = None,
                       name: str | None = None) -> Image.Image:
    """Decode any supported format to a PIL image (fully loaded); raises ImageError.

    `max_pixels` is checked from the header before decoding; `name` (a file name) goes
    into error messages.
    """
    if not data:
        raise ImageError(f"{_label(name)}empty image file")
    if is_dicom(data):
        return dicom_to_image(data, max_pixels, name)
    try:
        img = _open_checked(data, max_pixels, name)
        img.load()
        return img
    except ImageError:
        raise
    except _DECODE_ERRORS as e:
        # DICOM files without the 128-byte preamble still start with group-0008 tags.
        if data[:2] in (b"\x08\x00", b"\x02\x00"):
            return dicom_to_image(data, max_pixels, name)
        raise ImageError(f"{_label(name)}undecodable image: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    """An exception's text without Pillow's `<_io.BytesIO object at 0x...>` noise."""
    import re

    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e)).strip()
    return text or type(e).__name__


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of an image, scaling 16-bit greyscale and flattening alpha on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(_minmax_u8(arr), "L").convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.split()[-1])
        return bg
    return img.convert("RGB")


# --------------------------------------------------------------------------- smart resize


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 262_144) -> tuple[int, int]:
    """Output (h, w) of the Qwen2-VL / Qwen2.5-VL image-processor resize rule.

    Both sides become multiples of `factor`, the area lands within [min_pixels,
    max_pixels], and the aspect ratio is kept as closely as that allows.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got "
            f"{max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --------------------------------------------------------------------------- store


def parse_ref(ref: str) -> tuple[str, tuple[int, int] | None]:
    """Split "<sha>" or "<sha>@<H>x<W>" into the hash and an optional (H, W)."""
    sha, _, size = ref.partition("@")
    if not size:
        return sha, None
    h, _, w = size.partition("x")
    return sha, (int(h), int(w))


def resized_ref(sha: str, height: int, width: int) -> str:
    return f"{sha}@{height}x{width}"


class ImageStore:
    """Content-addressed images under one folder: <root>/<aa>/<sha><ext>."""

    def __init__(self, root: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_pixels = max_pixels  # images above this are refused before decoding
        self._paths: dict[str, Path] = {}

    def _dir(self, sha: str) -> Path:
        return self.root / sha[:2]

    def _find(self, ref: str) -> Path | None:
        cached = self._paths.get(ref)
        if cached is not None:
            return cached
        sha, size = parse_ref(ref)
        d = self._dir(sha)
        stem = f"{sha}@{size[0]}x{size[1]}" if size else sha
        for ext in (".png", ".jpg", ".tif", ".bmp", ".webp"):
            p = d / f"{stem}{ext}"
            if p.exists():
                self._paths[ref] = p
                return p
        return None

    def has(self, ref: str) -> bool:
        return self._find(ref) is not None

    def path(self, ref: str) -> Path:
        """File path of a stored image ref; raises ImageError when absent."""
        p = self._find(ref)
        if p is None:
            raise ImageError(f"image {ref} is not in the store at {self.root}")
        return p

    def put_bytes(self, data: bytes, verify: bool = True, name: str | None = None) -> str:
        """Store original bytes (decoding to check them) and return the image ref (SHA-256).

        Raises ImageError, naming `name` (the file or field the bytes came from), when the
        bytes are not an image, are truncated, or exceed `max_pixels` (checked before decoding).
        """
        sha = sha256_bytes(data)
        if self._find(sha) is not None:
            return sha
        if is_dicom(data):
            img = dicom_to_image(data, self.max_pixels, name)
            self._write(sha, _encode_png(img), ".png")
            return sha
        try:
            with _open_checked(data, self.max_pixels, name) as im:
                fmt = im.format
                if verify:
                    im.load()  # catches truncated files, not just bad headers
        except ImageError:
            raise
        except _DECODE_ERRORS:
            # Headerless DICOM, or garbage: decode_image_bytes decides (and names the file).
            img = decode_image_bytes(data, self.max_pixels, name)
            self._write(sha, _encode_png(img), ".png")
            return sha
        ext = _RASTER_EXT.get(fmt or "")
        if ext is None:  # readable but unusual (GIF, PPM, ...): normalise to PNG
            self._write(sha, _encode_png(decode_image_bytes(data, self.max_pixels, name)), ".png")
        else:
            self._write(sha, data, ext)
        return sha

    def put_file(self, path: str | Path) -> str:
        """Store an image file; raises ImageError (naming the file) when missing or undecodable."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"image file not found: {p}") from None
        except OSError as e:
            raise ImageError(f"cannot read image file {p}: {e.strerror or e}") from None
        return self.put_bytes(data, name=str(p))

    def put_image(self, img: Image.Image) -> str:
        """Store a PIL image (hash of its PNG encoding, since no original bytes exist)."""
        return self.put_bytes(_encode_png(img))

    def put_resized(self, sha: str, img: Image.Image) -> str:
        """Store an already-resized copy of image `sha`; returns "<sha>@<H>x<W>"."""
        ref = resized_ref(sha, img.height, img.width)
        if self._find(ref) is None:
            self._write(ref, _encode_png(img), ".png")
        return ref

    def open(self, ref: str) -> Image.Image:
        """The stored image as RGB."""
        p = self.path(ref)
        return to_rgb(decode_image_bytes(p.read_bytes(), name=str(p)))

    def _write(self, stem: str, data: bytes, ext: str) -> None:
        sha = stem.partition("@")[0]
        d = self._dir(sha)
        d.mkdir(parents=True, exist_ok=True)
        final = d / f"{stem}{ext}"
        tmp = d / f".{stem}{ext}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, final)  # written once; a concurrent writer produces identical bytes
        self._paths[stem] = final


def _encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    if img.mode not in ("L", "RGB", "RGBA", "LA", "I;16"):
        img = to_rgb(img)
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()
