"""Prepare: resized copies stored once, reduced-size JPEG decoding, benchmark-image removal
(exact and near duplicates), the stage's reasons and flags. smart_resize parity with
transformers lives in test_smart_resize.py."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from medrecipe.config import PrepareConfig, ResizeConfig
from medrecipe.images import ImageStore
from medrecipe.prepare.dedup import dhash, exact_matches, near_matches
from medrecipe.prepare.resize import load_for_size, resize_all, target_size
from medrecipe.prepare.stage import prepare
from medrecipe.schema import ITEM_SCHEMA, Item, to_table


def _jpeg(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = ((xx * 255 // max(w - 1, 1)) + (yy * 127 // max(h - 1, 1))) % 256
    arr = np.stack([base, base[::-1], (base * 3) % 256], -1) + rng.integers(0, 20, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_resized_copies_are_stored_once_per_hash_and_size(tmp_path):
    store = ImageStore(tmp_path / "img")
    big = store.put_bytes(_jpeg(1600, 1200))
    small = store.put_bytes(_jpeg(56, 56, seed=1))  # already a valid size: kept as is
    cfg = ResizeConfig()
    rep = resize_all([big, big, small, f"{big}@999x999"], store, cfg)
    w, h = target_size(1600, 1200, cfg)
    assert rep.mapping == {big: f"{big}@{h}x{w}", small: small} and rep.resized == 1
    assert store.open(rep.mapping[big]).size == (w, h)
    files = sorted(p.name for p in (tmp_path / "img").rglob("*") if p.is_file())
    assert len(files) == 3  # two originals + one resized copy
    mtime = store.path(rep.mapping[big]).stat().st_mtime_ns
    resize_all([big], store, cfg)  # a second pass writes nothing new
    assert store.path(rep.mapping[big]).stat().st_mtime_ns == mtime


def test_reduced_size_jpeg_decoding_is_close_to_full_decoding(tmp_path):
    p = tmp_path / "big.jpg"
    p.write_bytes(_jpeg(2048, 2048))
    size = target_size(2048, 2048, ResizeConfig())
    fast = np.asarray(load_for_size(p, size).resize(size, Image.Resampling.BICUBIC), np.int16)
    naive = np.asarray(Image.open(p).convert("RGB").resize(size, Image.Resampling.BICUBIC), np.int16)
    assert load_for_size(p, size).size[0] < 2048  # the DCT decoder skipped resolution
    assert np.abs(fast - naive).mean() < 3.0


def test_exact_and_near_duplicate_benchmark_images(tmp_path):
    store = ImageStore(tmp_path / "img")
    img = Image.fromarray(np.tile(np.arange(128, dtype=np.uint8), (128, 1)))
    bench_ref = store.put_image(img)
    same = bench_ref
    buf = io.BytesIO()
    img.resize((100, 100)).save(buf, "JPEG", quality=80)  # re-encoded, resized copy
    near = store.put_bytes(buf.getvalue())
    other = store.put_image(Image.fromarray(np.tile(np.arange(128, dtype=np.uint8)[::-1], (128, 1))))
    train = [[same], [near], [other], []]
    assert exact_matches(train, {"bench": [bench_ref]}) == [["bench"], [], [], []]
    nd = near_matches(train, {"bench": [bench_ref]}, store, threshold=4)
    assert list(nd.rows) == [1] and nd.rows[1][0].distance <= 4
    assert bin(dhash(store.open(other)) ^ dhash(store.open(bench_ref))).count("1") > 20


def _item(i, source="s", images=(), q=None, task="text", answer="A"):
    return Item(id=f"{source}/{i}", source=source, task=task, answer=answer,
                question=q or f"Question {i} about something quite specific number {i}?",
                options=["x", "y", "z"], images=list(images))


def test_prepare_stage_removes_and_reports_with_reasons(tmp_path):
    store = ImageStore(tmp_path / "img")
    shared = store.put_bytes(_jpeg(600, 400))
    own = store.put_bytes(_jpeg(600, 400, seed=5))
    leak = ("which of the following is the most likely cause of painless jaundice with a "
            "palpable gallbladder in an elderly man with weight loss")
    train = to_table([
        _item(0), _item(1, q="Question 0 about something quite specific number 0?"),  # duplicate
        _item(2, q="Case: " + leak + "?"),  # shares a 16-gram
        _item(3, images=[shared], task="mm_reasoning"),  # benchmark image
        _item(4, images=[own], task="mm_reasoning"),
    ], ITEM_SCHEMA)
    bench = to_table([_item(0, source="bench", q=leak.capitalize() + "?"),
                      _item(1, source="bench", images=[shared], task="mm_reasoning")], ITEM_SCHEMA)
    cfg = PrepareConfig.model_validate({"decontaminate": {"against": ["bench"]}})
    res = prepare(train, bench, cfg, store)
    assert res.items.column("id").to_pylist() == ["s/0", "s/4"]
    reasons = {q.item_id: q.reason for q in res.quarantine}
    assert reasons == {"s/1": "duplicate_question", "s/2": "contaminated:bench",
                       "s/3": "image_in_benchmark"}
    assert res.counts == {"s": {"duplicate_question": 1, "contaminated:bench": 1,
                                "image_in_benchmark": 1}}
    flags = res.flags.to_pydict()
    assert flags["ngram:bench"] == [False, False, True, False, False]
    assert flags["image:bench"] == [False, False, False, True, False]
    # Kept images point at their smart-resized copies.
    (ref,) = res.items.column("images").to_pylist()[1]
    assert ref.startswith(own + "@") and store.open(ref).size == target_size(600, 400, cfg.resize)
