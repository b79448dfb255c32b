"""Visual usability measures: each check catches its own degradation and spares clean images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from curate_images import DEGRADATIONS, clean_set, degrade, encode
from medrecipe.curate.config import VisualConfig
from medrecipe.curate.visual import (
    MEASURES,
    estimate_jpeg_quality,
    failed_checks,
    failed_checks_batch,
    measure_image,
)

N_CLEAN = 40


@pytest.fixture(scope="module")
def crafted():
    """Measures of clean pictures and of one degraded copy of each kind per picture."""
    clean = clean_set(N_CLEAN, seed=1)
    rng = np.random.default_rng(5)
    out = {"clean": [measure_image(b) for _, b in clean]}
    for kind in DEGRADATIONS:
        out[kind] = [measure_image(degrade(kind, img, rng)) for img, _ in clean]
    return out


@pytest.mark.parametrize("kind", sorted(DEGRADATIONS))
def test_each_check_rejects_its_degradation_and_spares_clean_images(crafted, kind):
    cfg = VisualConfig()
    reason = DEGRADATIONS[kind]
    caught = sum(reason in failed_checks(m, cfg) for m in crafted[kind]) / N_CLEAN
    false_alarms = sum(reason in failed_checks(m, cfg) for m in crafted["clean"]) / N_CLEAN
    assert caught >= 0.95, f"{reason} caught only {caught:.0%} of {kind} images"
    assert false_alarms <= 0.05, f"{reason} rejected {false_alarms:.0%} of clean images"


def test_clean_images_pass_every_check(crafted):
    cfg = VisualConfig()
    assert sum(bool(failed_checks(m, cfg)) for m in crafted["clean"]) <= 0.05 * N_CLEAN


def test_measure_image_returns_every_documented_measure_as_floats():
    img, data = clean_set(2, seed=3)[0]
    m = measure_image(data)
    assert set(m) == set(MEASURES) and all(isinstance(v, float) for v in m.values())
    assert (m["width"], m["height"]) == (float(img.width), float(img.height))
    assert m["short_side"] == min(img.size) and m["aspect_ratio"] >= 1.0
    # JPEG: quality from the tables, no blockiness; PNG: the other way round.
    assert not math.isnan(m["jpeg_quality"]) and math.isnan(m["blockiness"])
    png = measure_image(encode(img, "PNG"))
    assert math.isnan(png["jpeg_quality"]) and 0.9 < png["blockiness"] < 1.1


@pytest.mark.parametrize("quality", [5, 20, 50, 75, 90, 98])
def test_jpeg_quality_is_recovered_from_the_quantisation_tables(quality):
    img = clean_set(1, seed=4)[0][0]
    m = measure_image(encode(img, "JPEG", quality))
    assert abs(m["jpeg_quality"] - quality) <= 2
    assert math.isnan(estimate_jpeg_quality([1, 2, 3]))


def test_large_jpegs_are_analysed_at_reduced_size():
    rng = np.random.default_rng(0)
    big = Image.fromarray((rng.random((2048, 1536)) * 255).astype(np.uint8), "L")
    m = measure_image(encode(big, "JPEG", 90))
    assert m["analysis_scale"] == 0.5  # DCT-domain 1/2 decode: the longest side is now 1024
    assert m["short_side"] == 1536 and m["effective_resolution"] <= 768
    small = measure_image(encode(big, "JPEG", 90), analysis_side=4096)
    assert small["analysis_scale"] == 1.0


def test_dicom_images_are_measured():
    from pydicom.data import get_testdata_file

    m = measure_image(open(get_testdata_file("CT_small.dcm"), "rb").read())
    assert m["width"] == 128 and math.isnan(m["jpeg_quality"])
    assert "too_small" in failed_checks(m, VisualConfig())


def test_thresholds_are_configurable_and_null_switches_a_check_off():
    m = {"short_side": 100.0, "aspect_ratio": 1.0, "border_white_fraction": 0.0,
         "sharpness": 5.0, "effective_resolution": 100.0, "jpeg_quality": float("nan"),
         "blockiness": 1.0}
    assert failed_checks(m, VisualConfig()) == ["too_small", "blurry", "upsampled"]
    relaxed = VisualConfig(min_short_side=64, min_sharpness=None, min_effective_resolution=50)
    assert failed_checks(m, relaxed) == []
    # Geometry first; among pixel checks the one failed by the widest margin comes first.
    cols = {"short_side": [300.0, 300.0], "sharpness": [1.0, 18.0],
            "effective_resolution": [150.0, 40.0]}
    assert failed_checks_batch(cols, VisualConfig()) == [["blurry", "upsampled"],
                                                          ["upsampled", "blurry"]]


def test_undecodable_bytes_raise_an_image_error():
    from medrecipe.errors import ImageError

    with pytest.raises(ImageError):
        measure_image(b"")
    with pytest.raises(ImageError):
        measure_image(encode(clean_set(1)[0][0], "JPEG")[:400])  # truncated file
