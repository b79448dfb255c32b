"""Rows that would have become silently wrong data, or killed an ingest, are quarantined."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from PIL import Image

from medrecipe.config import SourceSpec
from medrecipe.images import ImageStore
from source_helpers import ingest


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


# --------------------------------------------------------------------------- blank options


@pytest.mark.parametrize("options", [
    ["Alpha", "", "Gamma", "Delta"],
    ["Alpha", None, "Gamma", "Delta"],
    ["Alpha", "   ", "Gamma", "Delta"],
    {"A": "Alpha", "B": "", "C": "Gamma", "D": "Delta"},
    {"A": "Alpha", "B": None, "C": "Gamma", "D": "Delta"},
    '["Alpha", "", "Gamma", "Delta"]',
])
def test_a_blank_option_quarantines_the_row_instead_of_shifting_letters(tmp_path, options):
    rows = [{"id": "bad", "question": "Which one is the third?", "options": options,
             "answer": "C"},
            {"id": "good", "question": "Which one is the third?",
             "options": ["Alpha", "Beta", "Gamma", "Delta"], "answer": "C"}]
    spec = SourceSpec(name="s", path=_jsonl(tmp_path / "q.jsonl", rows))
    items, quarantine, _, _ = ingest(spec, tmp_path)
    assert [(it.id, it.answer, it.answer_text) for it in items] == [("s/good", "C", "Gamma")]
    assert [(q.reason, q.item_id) for q in quarantine] == [("blank_option", "s/bad")]
    assert "option B is empty" in quarantine[0].detail


def test_blank_options_quarantine_in_the_named_adapters_too(tmp_path):
    medqa = [{"id": "m1", "question": "Q?", "answer_idx": "C",
              "options": {"A": "a", "B": "", "C": "c", "D": "d"}}]
    mmlu = [{"question_id": 7, "question": "Q?", "options": ["a", None, "c", "d"], "answer": "C",
             "answer_index": 2, "category": "health", "src": "x", "cot_content": ""}]
    medxpert = [{"id": "x1", "question": "Q?", "options": {"A": "a", "B": " ", "C": "c"},
                 "label": "C", "medical_task": "t", "body_system": "b", "question_type": "r"}]
    for adapter, rows in (("medqa", medqa), ("mmlu_pro", mmlu), ("medxpertqa", medxpert)):
        spec = SourceSpec(name=adapter, adapter=adapter,
                          path=_jsonl(tmp_path / f"{adapter}.jsonl", rows))
        items, quarantine, _, _ = ingest(spec, tmp_path)
        assert items == [], adapter
        assert [q.reason for q in quarantine] == ["blank_option"], adapter


def test_trailing_blank_options_are_padding_and_move_no_letter(tmp_path):
    rows = [{"id": "p", "question": "Q?", "options": ["a", "b", "c", "", None], "answer": "C"}]
    items, quarantine, _, _ = ingest(SourceSpec(name="s", path=_jsonl(tmp_path / "q.jsonl", rows)),
                                     tmp_path)
    assert quarantine == [] and items[0].options == ["a", "b", "c"] and items[0].answer == "C"


# --------------------------------------------------------------------------- ids in quarantine


def test_every_quarantined_row_names_its_item(tmp_path):
    rows = [{"id": "noans", "question": "Q?", "options": ["a", "b"], "answer": ""},
            {"question": "Q2?", "options": ["a", "b"], "answer": "Z"},
            {"id": "ok", "question": "Q3?", "options": ["a", "b"], "answer": "A"}]
    items, quarantine, _, _ = ingest(SourceSpec(name="s", path=_jsonl(tmp_path / "q.jsonl", rows)),
                                     tmp_path)
    assert [it.id for it in items] == ["s/ok"]
    assert [(q.reason, q.item_id) for q in quarantine] == [("missing_answer", "s/noans"),
                                                           ("answer_not_in_options", "s/1")]


# --------------------------------------------------------------------------- text Arrow cannot hold


def test_a_lone_surrogate_quarantines_its_row_and_the_rest_is_ingested(tmp_path):
    p = tmp_path / "q.jsonl"
    good = json.dumps({"id": "ok", "question": "Fine?", "options": ["a", "b"], "answer": "A"})
    p.write_text('{"id": "sur", "question": "Broken \\ud800 text?", "options": ["a", "b"], '
                 '"answer": "A"}\n' + good + "\n")
    items, quarantine, stats, _ = ingest(SourceSpec(name="s", path=str(p)), tmp_path)
    assert [it.id for it in items] == ["s/ok"] and stats.items == 1
    assert [(q.reason, q.item_id, q.row) for q in quarantine] == [("invalid_text", "s/sur", 0)]
    assert "question" in quarantine[0].detail


# --------------------------------------------------------------------------- images


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (there are no real pixels behind it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [60_000, 30_000])
def test_an_oversized_image_is_quarantined_before_decoding(tmp_path, side):
    (tmp_path / "huge.png").write_bytes(_png_header_only(side, side))
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    rows = [{"id": "huge", "question": "What is shown?", "answer": "x", "images": ["huge.png"]},
            {"id": "ok", "question": "What is shown?", "answer": "x", "images": ["ok.png"]}]
    items, quarantine, _, _ = ingest(SourceSpec(name="s", path=_jsonl(tmp_path / "q.jsonl", rows)),
                                     tmp_path)
    assert [it.id for it in items] == ["s/ok"]
    assert [(q.reason, q.item_id) for q in quarantine] == [("image_too_large", "s/huge")]
    assert "huge.png" in quarantine[0].detail and "max_image_pixels" in quarantine[0].detail


def test_the_pixel_limit_is_configurable(tmp_path):
    import io

    from medrecipe.errors import ImageError

    def png(w, h):
        buf = io.BytesIO()
        Image.new("L", (w, h)).save(buf, format="PNG")
        return buf.getvalue()

    store = ImageStore(tmp_path / "img", max_pixels=100)
    assert store.put_bytes(png(10, 10))
    with pytest.raises(ImageError, match="larger than the limit"):
        store.put_bytes(png(11, 10), name="x.png")
    # The recipe sets it for the whole run (and 30000x30000 is over the default).
    from medrecipe.config import Recipe

    r = Recipe(name="r", sources=[{"name": "a", "path": "a.jsonl"}], max_image_pixels=10**10)
    assert r.max_image_pixels == 10**10 and Recipe.model_fields["max_image_pixels"].default < 30_000**2


def test_an_undecodable_image_is_named_by_its_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not an image at all")
    rows = [{"id": "b", "question": "What is shown?", "answer": "x", "images": ["broken.png"]}]
    _, quarantine, _, _ = ingest(SourceSpec(name="s", path=_jsonl(tmp_path / "q.jsonl", rows)),
                                 tmp_path)
    assert quarantine[0].reason == "image_undecodable"
    assert "broken.png" in quarantine[0].detail and "BytesIO" not in quarantine[0].detail


def test_image_paths_outside_the_source_folders_are_refused_unless_allowed(tmp_path):
    data = tmp_path / "data"
    outside = tmp_path / "elsewhere"
    data.mkdir()
    outside.mkdir()
    Image.new("RGB", (16, 16), "blue").save(outside / "secret.png")
    Image.new("RGB", (16, 16), "green").save(data / "inside.png")
    (data / "link.png").symlink_to(outside / "secret.png")
    rows = [{"id": "abs", "question": "Q?", "answer": "x", "images": [str(outside / "secret.png")]},
            {"id": "dots", "question": "Q?", "answer": "x", "images": ["../elsewhere/secret.png"]},
            {"id": "link", "question": "Q?", "answer": "x", "images": ["link.png"]},
            {"id": "in", "question": "Q?", "answer": "x", "images": ["inside.png"]}]
    path = _jsonl(data / "q.jsonl", rows)
    items, quarantine, _, _ = ingest(SourceSpec(name="s", path=path), tmp_path)
    assert [it.id for it in items] == ["s/in"]
    assert [(q.reason, q.item_id) for q in quarantine] == [
        ("image_outside_root", "s/abs"), ("image_outside_root", "s/dots"),
        ("image_outside_root", "s/link")]
    allowed = SourceSpec(name="s", path=path, allow_images_outside_root=True)
    items, quarantine, _, _ = ingest(allowed, tmp_path)
    assert len(items) == 4 and quarantine == []
