"""One row of each kind of defect goes to quarantine with its own reason; the good rows load.

The fixture is a MedXpertQA MM file (`mm_test.jsonl`, upstream field names) whose images
sit in an `images/` folder the way the upstream zip unpacks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medrecipe.config import SourceSpec
from medrecipe.images import ImageStore
from medrecipe.schema import items_from_table
from medrecipe.sources import BuildStats, load

FIX = Path(__file__).parent / "fixtures" / "sources" / "medxpertqa"


def _ingest(tmp_path, **kw):
    store = ImageStore(tmp_path / "images")
    quarantine: list = []
    stats = BuildStats()
    spec = SourceSpec(name="mx_mm", adapter="medxpertqa", path=str(FIX / "mm_test.jsonl"),
                      image_root=str(FIX), split="test", **kw)
    items = [it for t in load(spec, images=store, quarantine=quarantine, stats=stats)
             for it in items_from_table(t)]
    return items, quarantine, stats, store


def test_each_defect_is_quarantined_with_a_distinct_reason(tmp_path):
    items, quarantine, stats, _ = _ingest(tmp_path)
    by_reason = {q.reason: q for q in quarantine}
    assert sorted(by_reason) == sorted([
        "missing_answer", "answer_not_in_options", "duplicate_id", "image_missing",
        "image_undecodable", "empty_question", "malformed_json"])
    assert len(quarantine) == 7  # one row per reason
    assert by_reason["duplicate_id"].item_id == "mx_mm/MM-1"
    assert by_reason["image_missing"].item_id == "mx_mm/MM-6"
    assert "MM-6-a.png" in by_reason["image_missing"].detail
    assert by_reason["image_undecodable"].item_id == "mx_mm/MM-7"
    assert by_reason["answer_not_in_options"].row == 3
    assert by_reason["answer_not_in_options"].item_id == "mx_mm/MM-4"
    assert by_reason["missing_answer"].item_id == "mx_mm/MM-3"
    assert by_reason["malformed_json"].row == 8 and "line 9" in by_reason["malformed_json"].detail
    # the quarantine keeps the offending row for a person to read
    assert json.loads(by_reason["missing_answer"].raw)["id"] == "MM-3"
    # ... and every good row of the same file is ingested
    assert [it.id for it in items] == ["mx_mm/MM-1", "mx_mm/MM-2", "mx_mm/MM-10"]
    assert (stats.rows, stats.items, stats.quarantined) == (10, 3, 7)


def test_good_mm_rows_carry_their_images_and_fields(tmp_path):
    items, _, _, store = _ingest(tmp_path)
    first, second, last = items
    assert first.task == "mm_reasoning" and first.split == "test"
    assert len(first.options) == 5 and first.answer == "A"
    assert first.answer_text == "Fine-needle aspiration of the nodule"
    assert "Answer Choices" not in first.question and first.question.endswith("next step?")
    # images are stored by the SHA-256 of the original file bytes, in list order
    expected = [hashlib.sha256((FIX / "images" / n).read_bytes()).hexdigest()
                for n in ("MM-2-a.png", "MM-2-b.png")]
    assert second.images == expected and all(store.has(r) for r in second.images)
    assert second.meta == {"medical_task": "Diagnosis", "body_system": "Respiratory",
                           "question_type": "Understanding"}
    # a choices block that does not repeat the options is left in the question and flagged
    assert "Answer Choices: (A) Osteosarcoma" in last.question
    assert last.meta["choices_in_question"] is True


def test_a_limit_reads_only_the_first_rows(tmp_path):
    items, quarantine, stats, _ = _ingest(tmp_path, limit=3)
    assert [it.id for it in items] == ["mx_mm/MM-1", "mx_mm/MM-2"]
    assert [q.reason for q in quarantine] == ["missing_answer"] and stats.rows == 3
