"""The prepare stage end to end on small tables: reasons, flags, counts, duplicates, near images,
balancing and resize bookkeeping; the multi-index Hamming search against brute force."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image

from medrecipe.config import PrepareConfig
from medrecipe.images import ImageStore
from medrecipe.prepare.dedup import hamming_pairs
from medrecipe.prepare.stage import duplicate_of, prepare
from medrecipe.schema import ITEM_SCHEMA, Item, to_table

LEAK = ("a sixty year old woman presents with sudden painless loss of vision in one eye and a "
        "cherry red spot on fundoscopy")


def _item(i, source="s", q=None, options=("x", "y", "z"), images=(), task="text", answer="A"):
    return Item(id=f"{source}/{i}", source=source, task=task, answer=answer,
                question=q or f"Question {i} about something specific, number {i}?",
                options=list(options), images=list(images))


def _png(seed: int, size=(96, 80)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _cfg(**kw) -> PrepareConfig:
    return PrepareConfig.model_validate(kw)


def test_duplicates_collapse_to_the_first_in_input_order(tmp_path):
    store = ImageStore(tmp_path / "img")
    a, b = store.put_bytes(_png(1)), store.put_bytes(_png(2))
    train = to_table([
        _item(0, "first", q="What causes  Scurvy?", options=["Vitamin C deficiency", "Iron"]),
        _item(1, "second", q="what causes scurvy", options=["vitamin C deficiency.", "IRON"]),
        _item(2, "second", q="What causes scurvy?", options=["Iron", "Vitamin C deficiency"],
              answer="B"),  # options in another order: a different question
        _item(3, "second", q="What causes scurvy?", options=["Vitamin C deficiency", "Iron"],
              answer="B"),  # same question, conflicting answer
        _item(4, "first", q="Which organ is shown?", images=[a], task="mm_reasoning"),
        _item(5, "second", q="Which organ is shown?", images=[b], task="mm_reasoning"),
        _item(6, "second", q="Which ORGAN is shown", images=[a], task="mm_reasoning"),
    ], ITEM_SCHEMA)
    assert duplicate_of(train).tolist() == [0, 0, 2, 0, 4, 5, 4]
    res = prepare(train, ITEM_SCHEMA.empty_table(), _cfg(resize={"enabled": False}), store)
    assert res.items.column("id").to_pylist() == ["first/0", "second/2", "first/4", "second/5"]
    reasons = {q.item_id: (q.reason, q.detail) for q in res.quarantine}
    assert set(reasons) == {"second/1", "second/3", "second/6"}
    assert all(r == "duplicate_question" for r, _ in reasons.values())
    assert "first/0" in reasons["second/1"][1]
    assert "'A'" in reasons["second/3"][1] and "'B'" in reasons["second/3"][1]
    assert res.counts == {"second": {"duplicate_question": 3}}
    flags = res.flags.to_pydict()
    assert flags["duplicate_of"] == [None, "first/0", None, "first/0", None, None, "first/4"]
    assert flags["removed"] == [None, "duplicate_question", None, "duplicate_question", None,
                                None, "duplicate_question"]


def test_decontamination_defaults_to_every_benchmark_and_names_them(tmp_path):
    store = ImageStore(tmp_path / "img")
    train = to_table([
        _item(0, q="Case: " + LEAK.upper() + "!"),  # in both benchmarks
        _item(1, q="Which is the most likely diagnosis?",  # overlaps through its options
              options=["presents with sudden painless loss of vision in one eye and a cherry red "
                       "spot on fundoscopy", "other"]),
        _item(2),
    ], ITEM_SCHEMA)
    bench = to_table([
        _item(0, "medqa", q=LEAK + "?"),
        _item(1, "pubmedqa", q="Vignette: " + LEAK.split(" a cherry")[0] + " jaw pain"),  # 16 words
        _item(2, "vqa", q="What is shown?"),
    ], ITEM_SCHEMA)
    res = prepare(train, bench, _cfg(resize={"enabled": False}), store)
    assert res.items.column("id").to_pylist() == ["s/2"]
    q = {r.item_id: r for r in res.quarantine}
    assert q["s/0"].reason == "contaminated:medqa" and "medqa, pubmedqa" in q["s/0"].detail
    assert q["s/1"].reason == "contaminated:medqa"
    assert json.loads(q["s/0"].raw)["question"].startswith("Case:")
    flags = res.flags.to_pydict()
    assert flags["ngram:medqa"] == [True, True, False]
    assert flags["ngram:pubmedqa"] == [True, False, False]
    assert flags["ngram:vqa"] == [False, False, False]
    assert res.details["decontaminate"]["flagged"] == {"medqa": 2, "pubmedqa": 1, "vqa": 0}
    # Naming benchmarks restricts the check to them.
    only = prepare(train, bench, _cfg(decontaminate={"against": ["pubmedqa"]},
                                      resize={"enabled": False}), store)
    assert only.items.column("id").to_pylist() == ["s/1", "s/2"]
    assert [c for c in only.flags.column_names if c.startswith("ngram:")] == ["ngram:pubmedqa"]


def _near_copy(data: bytes) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((90, 75))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def test_near_duplicate_images_reported_or_removed(tmp_path):
    store = ImageStore(tmp_path / "img")
    yy, xx = np.mgrid[0:80, 0:96]
    smooth = (128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([smooth, smooth[::-1], smooth], -1)).save(buf, "PNG")
    original = buf.getvalue()
    bench_img = store.put_bytes(original)
    copy = store.put_bytes(_near_copy(original))
    other = store.put_bytes(_png(9))
    train = to_table([_item(0, images=[copy], task="mm_reasoning"),
                      _item(1, images=[other], task="mm_reasoning"),
                      _item(2, images=[bench_img], task="mm_reasoning")], ITEM_SCHEMA)
    bench = to_table([_item(0, "bench", q="Shown?", images=[bench_img], task="mm_reasoning")],
                     ITEM_SCHEMA)
    report = prepare(train, bench, _cfg(dedup_images={"near_duplicates": True},
                                        resize={"enabled": False}), store)
    assert report.items.column("id").to_pylist() == ["s/0", "s/1"]  # near copy only reported
    flags = report.flags.to_pydict()
    assert flags["near_image:bench"] == [True, False, False]  # exact match is not "near"
    assert flags["image:bench"] == [False, False, True]
    ex = report.details["near_duplicates"]["examples"]
    assert [(e["item"], e["image"], e["bench_image"]) for e in ex] == [("s/0", copy, bench_img)]
    removed = prepare(train, bench, _cfg(dedup_images={"near_duplicates": True,
                                                       "remove_near_duplicates": True},
                                         resize={"enabled": False}), store)
    assert removed.items.column("id").to_pylist() == ["s/1"]
    assert {q.item_id: q.reason for q in removed.quarantine} == {
        "s/0": "near_duplicate_image", "s/2": "image_in_benchmark"}


def test_resize_keeps_original_refs_and_quarantines_unreadable_images(tmp_path):
    store = ImageStore(tmp_path / "img")
    big = store.put_bytes(_png(3, size=(1200, 900)))
    fine = store.put_bytes(_png(4, size=(56, 56)))
    broken = store.put_bytes(_png(5, size=(300, 300)))
    store.path(broken).write_bytes(b"not an image any more")  # damaged after ingest
    train = to_table([_item(0, images=[big, fine], task="mm_reasoning"),
                      _item(1, images=[fine], task="mm_reasoning"),
                      _item(2, images=[broken], task="mm_reasoning")], ITEM_SCHEMA)
    res = prepare(train, ITEM_SCHEMA.empty_table(), _cfg(), store)
    rows = res.items.to_pylist()
    assert [r["id"] for r in rows] == ["s/0", "s/1"]
    resized, same = rows[0]["images"]
    assert resized.startswith(big + "@") and same == fine
    assert json.loads(rows[0]["meta"])["original_images"] == [big, fine]
    assert "original_images" not in json.loads(rows[1]["meta"])  # nothing changed
    # 900x1200 px: beta = sqrt(1.08e6 / 262144) = 2.03; floor(900 / 2.03 / 28) * 28 = 420, 21 * 28 = 588
    assert store.open(resized).size == (588, 420)
    assert [(q.item_id, q.reason) for q in res.quarantine] == [("s/2", "image_resize_failed")]
    assert res.items.schema.equals(ITEM_SCHEMA)


def test_balanced_out_rows_are_counted_not_quarantined(tmp_path):
    store = ImageStore(tmp_path / "img")
    rows = [_item(i, "cls", q="Which class?", options=["a", "b"], task="mm_classification",
                  answer="A" if i < 6 else "B", images=[store.put_bytes(_png(100 + i, (56, 56)))])
            for i in range(8)]
    train = to_table(rows, ITEM_SCHEMA)
    res = prepare(train, ITEM_SCHEMA.empty_table(),
                  _cfg(balance={"enabled": True, "per_class": "equal", "seed": 1}), store)
    assert sorted(res.items.column("answer").to_pylist()) == ["A", "A", "B", "B"]
    assert res.quarantine == [] and res.counts == {"cls": {"balanced_out": 4}}
    assert res.flags.column("removed").to_pylist().count("balanced_out") == 4
    assert res.details["balance"]["cls"]["after"] == {"A": 2, "B": 2}


def test_multi_index_hamming_search_equals_brute_force():
    rng = np.random.default_rng(0)
    bench = rng.integers(0, 2**63, 400, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 400).astype(np.uint64)
    flips = [np.uint64(0)]
    for k in range(1, 12):
        flips.append(np.bitwise_or.reduce(np.uint64(1) << rng.choice(64, k, replace=False).astype(np.uint64)))
    near = np.array([bench[rng.integers(0, 400)] ^ flips[rng.integers(0, 12)] for _ in range(300)],
                    dtype=np.uint64)
    train = np.concatenate([near, rng.integers(0, 2**63, 300, dtype=np.uint64)])
    dist = np.bitwise_count(train[:, None] ^ bench[None, :])
    for threshold in (0, 1, 3, 4, 6, 10, 30):
        t, b, d = hamming_pairs(train, bench, threshold)
        want = set(zip(*np.nonzero(dist <= threshold), strict=True))
        assert set(zip(t.tolist(), b.tolist(), strict=True)) == {(int(x), int(y)) for x, y in want}
        assert (d == dist[t, b]).all()
        assert len(want) >= (300 if threshold >= 11 else 1)
    assert len(hamming_pairs(train, bench[:0], 4)[0]) == 0


def test_empty_inputs(tmp_path):
    empty = ITEM_SCHEMA.empty_table()
    res = prepare(empty, empty, PrepareConfig(), ImageStore(tmp_path / "img"))
    assert res.items.num_rows == 0 and res.flags.num_rows == 0 and res.counts == {}
    assert isinstance(res.items, pa.Table)


def test_batch_by_batch_equals_all_at_once(tmp_path):
    """The streamed stage (small batches, two passes) gives the in-memory result exactly."""
    from medrecipe.prepare.stage import prepare_stream

    store = ImageStore(tmp_path / "img")
    imgs = [store.put_bytes(_png(s)) for s in range(6)]
    near = store.put_bytes(_near_copy(_png(0)))
    rows = [_item(0, "a", q="Case: " + LEAK + "!"),
            _item(1, "a", q="What causes scurvy?", options=["Vitamin C deficiency", "Iron"]),
            _item(2, "b", q="what causes  scurvy", options=["vitamin C deficiency", "iron"]),
            _item(3, "b", q="Which organ?", images=[imgs[1]], task="mm_reasoning"),
            _item(4, "a", q="Which organ?", images=[imgs[0]], task="mm_reasoning"),
            _item(5, "a", q="Which organ?", images=[near], task="mm_reasoning")]
    rows += [_item(10 + i, "cls", q=f"Tissue {i}?", options=["t", "s"], images=[imgs[2 + i % 3]],
                   task="mm_classification", answer="AB"[i % 3 == 0]) for i in range(9)]
    rows.append(_item(30, "b", q="What causes scurvy?", options=["Vitamin C deficiency", "Iron"]))
    train = to_table(rows, ITEM_SCHEMA)
    bench = to_table([_item(0, "medqa", q=LEAK + "?"),
                      _item(1, "imgbench", q="Which organ?", images=[imgs[0]], task="mm_reasoning")],
                     ITEM_SCHEMA)
    cfg = _cfg(dedup_images={"near_duplicates": True, "remove_near_duplicates": True},
               balance={"enabled": True}, resize={"max_pixels": 56 * 56})
    whole = prepare(train, bench, cfg, ImageStore(tmp_path / "img"))
    items, flags, quarantine = [], [], []
    counts, details = prepare_stream(lambda: [b for b in (train.slice(i, 4) for i in range(0, 16, 4))],
                                     bench, cfg, ImageStore(tmp_path / "img"),
                                     emit_items=items.append, emit_flags=flags.append,
                                     emit_quarantine=quarantine.extend)
    assert pa.concat_tables(items).equals(whole.items)
    assert pa.concat_tables(flags).equals(whole.flags)
    assert [(q.item_id, q.reason, q.detail) for q in quarantine] == [
        (q.item_id, q.reason, q.detail) for q in whole.quarantine]
    assert counts == whole.counts and details == whole.details
    reasons = {q.reason.split(":")[0] for q in quarantine}
    assert {"contaminated", "duplicate_question", "image_in_benchmark",
            "near_duplicate_image"} <= reasons and "balance" in details
