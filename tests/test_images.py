"""The content-addressed image store and decoding (raster formats and DICOM)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medrecipe.errors import ImageError
from medrecipe.images import ImageStore, decode_image_bytes, dicom_to_image, parse_ref, smart_resize


def encoded(fmt: str, size=(20, 12), **kw) -> tuple[bytes, np.ndarray]:
    """An image with a left/right colour split, encoded in `fmt`, and its pixels."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2] = (220, 40, 40)
    arr[:, size[0] // 2:] = (30, 60, 200)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue(), arr


# --------------------------------------------------------------------------- store


def test_same_bytes_give_one_ref_and_one_file_written_once(tmp_path, monkeypatch):
    data, _ = encoded("PNG")
    store = ImageStore(tmp_path)
    writes = []
    real_write = ImageStore._write
    monkeypatch.setattr(ImageStore, "_write", lambda self, *a: (writes.append(a[0]), real_write(self, *a)))
    ref = store.put_bytes(data)
    assert ref == hashlib.sha256(data).hexdigest()
    assert store.put_bytes(data) == ref
    # a second store on the same folder (a later run) finds the file instead of rewriting it
    assert ImageStore(tmp_path).put_bytes(data) == ref
    assert writes == [ref]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [store.path(ref)] and store.path(ref).read_bytes() == data
    assert store.path(ref).parent.name == ref[:2]


def test_different_bytes_give_different_refs(tmp_path):
    store = ImageStore(tmp_path)
    a, _ = encoded("PNG")
    b, _ = encoded("PNG", size=(21, 12))
    assert store.put_bytes(a) != store.put_bytes(b)


def test_put_file_stores_original_bytes_and_reports_a_missing_file(tmp_path):
    data, _ = encoded("JPEG", quality=90)
    src = tmp_path / "scan.jpeg"
    src.write_bytes(data)
    store = ImageStore(tmp_path / "store")
    ref = store.put_file(src)
    assert ref == hashlib.sha256(data).hexdigest() and store.path(ref).suffix == ".jpg"
    with pytest.raises(ImageError, match="not found"):
        store.put_file(tmp_path / "absent.png")
    with pytest.raises(ImageError):
        store.path("0" * 64)


@pytest.mark.parametrize("fmt,suffix,kw,lossless", [
    ("PNG", ".png", {}, True),
    ("JPEG", ".jpg", {"quality": 95}, False),
    ("TIFF", ".tif", {}, True),
    ("BMP", ".bmp", {}, True),
    ("WEBP", ".webp", {"lossless": True}, True),
])
def test_raster_formats_decode_and_are_kept_as_is(tmp_path, fmt, suffix, kw, lossless):
    data, arr = encoded(fmt, **kw)
    img = decode_image_bytes(data)
    assert img.size == (20, 12)
    px = np.asarray(img.convert("RGB"), dtype=np.int16)
    if lossless:
        assert np.array_equal(px, arr)
    else:
        assert np.abs(px - arr).mean() < 12
    store = ImageStore(tmp_path)
    ref = store.put_bytes(data)
    assert store.path(ref).suffix == suffix and store.path(ref).read_bytes() == data
    opened = store.open(ref)
    assert opened.mode == "RGB" and opened.size == (20, 12)


def test_open_flattens_alpha_and_greyscale_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    store = ImageStore(tmp_path)
    out = store.open(store.put_bytes(buf.getvalue()))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)  # flattened on white


@pytest.mark.parametrize("data", [
    b"",
    b"definitely not an image",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # PNG signature, garbage body
])
def test_undecodable_bytes_raise_image_error(tmp_path, data):
    with pytest.raises(ImageError):
        decode_image_bytes(data)
    with pytest.raises(ImageError):
        ImageStore(tmp_path).put_bytes(data)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-written


def test_truncated_jpeg_is_rejected(tmp_path):
    data, _ = encoded("JPEG", size=(64, 64))
    with pytest.raises(ImageError):
        ImageStore(tmp_path).put_bytes(data[: len(data) // 2])


def test_put_resized_and_parse_ref(tmp_path):
    store = ImageStore(tmp_path)
    data, _ = encoded("PNG")
    sha = store.put_bytes(data)
    ref = store.put_resized(sha, store.open(sha).resize((28, 56)))
    assert ref == f"{sha}@56x28" and parse_ref(ref) == (sha, (56, 28))
    assert store.open(ref).size == (28, 56) and store.open(sha).size == (20, 12)
    assert parse_ref(sha) == (sha, None)


# --------------------------------------------------------------------------- smart_resize


def test_smart_resize_follows_the_qwen2_vl_rule():
    # 1000x1000 rounds to 1008x1008 (> 262,144 px), so it is scaled by sqrt(1e6 / 262,144) first
    assert smart_resize(1000, 1000) == (504, 504)
    assert smart_resize(56, 56) == (56, 56)
    h, w = smart_resize(10, 10)  # tiny images are scaled up to min_pixels
    assert h * w >= 56 * 56 and h % 28 == 0 and w % 28 == 0
    for hw in [(333, 777), (1920, 1080), (4000, 300)]:
        h, w = smart_resize(*hw)
        assert h % 28 == 0 and w % 28 == 0 and 56 * 56 <= h * w <= 262_144
    with pytest.raises(ValueError):
        smart_resize(10, 3000)


# --------------------------------------------------------------------------- DICOM


def make_dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", window=None,
               rescale=None, signed: bool = False) -> bytes:
    """A minimal valid DICOM file (with preamble) holding `pixels` (frames, rows, cols) or (rows, cols)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_window_centre_and_width_are_applied():
    # centre 150, width 101: values up to 99.5 are black, from 199.5 up white (PS3.3 C.11.2.1.2)
    pixels = np.array([[0, 99, 150, 200, 300, 1000]], np.uint16)
    img = decode_image_bytes(make_dicom(pixels, window=(150, 101)))
    assert img.mode == "L"
    out = np.asarray(img)[0]
    assert out[0] == 0 and out[1] == 0 and out[3] == 255 and out[4] == 255 and out[5] == 255
    assert 125 <= out[2] <= 130  # the centre lands mid-grey


def test_rescale_slope_and_intercept_come_before_the_window():
    # CT-style storage: HU = stored - 1024; a 40/400 window puts 40 HU mid-grey
    stored = np.array([[1024 - 160, 1024 + 40, 1024 + 240]], np.uint16)
    out = np.asarray(decode_image_bytes(make_dicom(stored, window=(40, 400), rescale=(1, -1024))))[0]
    assert out[0] == 0 and out[2] == 255 and 125 <= out[1] <= 130


def test_without_a_window_a_robust_min_max_ignores_outliers():
    ramp = np.arange(1000, dtype=np.uint16).reshape(20, 50)
    ramp[0, 0] = 60000  # one hot pixel
    out = np.asarray(decode_image_bytes(make_dicom(ramp)))
    mid = out.reshape(-1)[500]
    assert 120 <= mid <= 135  # a plain min-max would crush the ramp to the bottom few grey levels
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.reshape(-1)[1:].astype(int)) >= 0)  # the ramp stays a ramp


def test_monochrome1_is_inverted():
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 10
    m2 = np.asarray(decode_image_bytes(make_dicom(pixels, window=(300, 600))), dtype=int)
    m1 = np.asarray(decode_image_bytes(make_dicom(pixels, photometric="MONOCHROME1", window=(300, 600))),
                    dtype=int)
    assert np.array_equal(m1, 255 - m2)
    assert m1[0, 0] > m1[-1, -1]  # low values are bright in MONOCHROME1


def test_multi_frame_takes_the_middle_frame():
    frames = np.stack([np.full((4, 5), v, np.uint16) for v in (0, 100, 200)])
    img = decode_image_bytes(make_dicom(frames, window=(100, 201)))
    assert img.size == (5, 4)
    out = np.asarray(img)
    assert np.all((out >= 125) & (out <= 130))  # frame 1 (value 100), not frame 0 or 2


def test_pydicom_ct_sample_without_window_uses_min_max():
    path = get_testdata_file("CT_small.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.int64)
    img = decode_image_bytes(Path(path).read_bytes())
    out = np.asarray(img).astype(np.int64)
    assert img.mode == "L" and out.shape == raw.shape == (128, 128)
    assert out.min() == 0 and out.max() == 255
    # the mapping is monotone: a brighter source pixel is never darker in the output
    order = np.argsort(raw.reshape(-1), kind="stable")
    assert np.all(np.diff(out.reshape(-1)[order]) >= 0)


def test_pydicom_mr_sample_uses_its_window():
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    raw = ds.pixel_array.astype(np.float64)
    # DICOM PS3.3 C.11.2.1.2 linear VOI LUT, written out independently here
    expected = np.clip(((raw - (c - 0.5)) / (w - 1) + 0.5), 0, 1) * 255
    out = np.asarray(decode_image_bytes(Path(path).read_bytes())).astype(np.float64)
    assert out.shape == (64, 64)
    assert np.abs(out - expected).max() <= 1.0


def test_dicom_is_stored_as_png_keyed_by_the_dicom_bytes(tmp_path):
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    store = ImageStore(tmp_path)
    ref = store.put_bytes(data)
    assert ref == hashlib.sha256(data).hexdigest()
    assert store.path(ref).suffix == ".png"
    assert store.path(ref).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = store.open(ref)
    assert rgb.mode == "RGB" and rgb.size == (64, 64)
    assert np.array_equal(np.asarray(rgb)[..., 0], np.asarray(dicom_to_image(data)))


def test_broken_dicom_raises_image_error():
    data = make_dicom(np.zeros((4, 4), np.uint16))
    with pytest.raises(ImageError):
        decode_image_bytes(data[:200])  # header only, pixel data cut off
