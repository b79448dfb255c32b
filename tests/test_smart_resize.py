"""smart_resize gives the same size as transformers' own Qwen2-VL rule for every input size."""

from __future__ import annotations

import importlib
import random

import pytest

from medrecipe.images import smart_resize


def _transformers_rule():
    """transformers' smart_resize; the torchvision-free PIL module is tried first."""
    pytest.importorskip("transformers")
    for module in ("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
                   "transformers.models.qwen2_vl.image_processing_qwen2_vl"):
        try:
            return importlib.import_module(module).smart_resize
        except ImportError:
            continue
    pytest.skip("transformers has no importable Qwen2-VL image processor here")


def _sizes(rnd: random.Random, count: int) -> list[tuple[int, int]]:
    sizes = []
    for _ in range(count):
        kind = rnd.random()
        if kind < 0.5:  # photographs, scans and slides, log-uniform 1 .. 20000 px per side
            h, w = (int(10 ** rnd.uniform(0, 4.3)) for _ in range(2))
        elif kind < 0.8:  # around the factor, where rounding decides
            h, w = (rnd.randint(1, 120) for _ in range(2))
        else:  # extreme aspect ratios, either side of the 200 limit
            short = rnd.randint(1, 300)
            long_side = int(short * rnd.uniform(150, 250))
            h, w = (short, long_side) if rnd.random() < 0.5 else (long_side, short)
        sizes.append((max(1, h), max(1, w)))
    # Exactly at the limit, and just past it.
    sizes += [(1, 200), (200, 1), (3, 600), (1, 201), (201, 1), (5, 1001)]
    return sizes


def _outcome(rule, h, w, **kw):
    try:
        return rule(h, w, **kw)
    except ValueError:
        return "ValueError"


def test_equals_transformers_on_random_sizes():
    theirs = _transformers_rule()
    rnd = random.Random(0)
    sizes = _sizes(rnd, 12_000)
    errors = 0
    for h, w in sizes:
        want = _outcome(theirs, h, w, max_pixels=262_144)
        assert _outcome(smart_resize, h, w) == want, (h, w)
        errors += want == "ValueError"
    assert errors > 100  # the aspect-ratio error path was exercised


@pytest.mark.parametrize(("factor", "min_pixels", "max_pixels"),
                         [(28, 56 * 56, 28 * 28 * 1280), (14, 3136, 12_845_056), (32, 4096, 1_048_576),
                          (28, 256 * 28 * 28, 262_144)])
def test_equals_transformers_with_other_settings(factor, min_pixels, max_pixels):
    theirs = _transformers_rule()
    rnd = random.Random(factor + max_pixels)
    for h, w in _sizes(rnd, 3_000):
        kw = {"factor": factor, "min_pixels": min_pixels, "max_pixels": max_pixels}
        assert _outcome(smart_resize, h, w, **kw) == _outcome(theirs, h, w, **kw), (h, w, kw)


def test_output_is_a_multiple_of_the_factor_within_bounds():
    rnd = random.Random(1)
    for h, w in _sizes(rnd, 2_000):
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError, match="aspect ratio"):
                smart_resize(h, w)
            continue
        rh, rw = smart_resize(h, w)
        assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
        assert rh * rw <= 262_144 or min(rh, rw) == 28  # only the factor floor can exceed it
