"""Image-question adapters (PMC-VQA, VQA-RAD, SLAKE, PathVQA, MMMU-Pro) on upstream-format fixtures."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from medrecipe.config import SourceSpec
from source_helpers import ingest

datasets = pytest.importorskip("datasets")

FIX = Path(__file__).parent / "fixtures" / "sources"


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (7, 5), colour).save(buf, format="PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- PMC-VQA


def test_pmc_vqa_strips_choice_prefixes_and_resolves_figures(tmp_path):
    root = FIX / "pmc_vqa"
    spec = SourceSpec(name="pmc", adapter="pmc_vqa", path=str(root / "test_clean.csv"),
                      image_root=str(root), split="test")
    items, quarantine, _, store = ingest(spec, tmp_path)
    assert [it.id for it in items] == ["pmc/0", "pmc/1", "pmc/2"]
    a, b, c = items
    # "A:Computed tomography " and " B: Right kidney" both lose their letter tag
    assert a.options == ["Computed tomography", "Magnetic resonance imaging", "Ultrasound", "PET"]
    assert b.options == ["Left kidney", "Right kidney", "Liver", "Spleen"]
    assert (a.answer, b.answer) == ("A", "B")
    assert c.answer == "A" and c.answer_text == "Calcification"  # no Answer_label: matched by text
    assert a.task == "mm_reasoning" and a.meta["Figure_path"] == "PMC8253730_fig2_0.jpg"
    expected = sha((root / "figures" / "PMC8253730_fig2_0.jpg").read_bytes())
    assert a.images == [expected] and store.path(expected).suffix == ".jpg"
    assert [(q.reason, q.row) for q in quarantine] == [("image_missing", 3)]
    assert "PMC0000000_fig9_9.jpg" in quarantine[0].detail


def test_pmc_vqa_label_outside_the_choices_is_quarantined(tmp_path):
    csv = tmp_path / "test_2.csv"
    csv.write_text("Figure_path,Question,Answer,Choice A,Choice B,Choice C,Choice D,Answer_label\n"
                   "x.jpg,Q?,Foo,A:Foo ,B:Bar ,C:Baz ,D:Qux ,E\n")
    items, quarantine, _, _ = ingest(SourceSpec(name="p", adapter="pmc_vqa", path=str(csv)), tmp_path)
    assert items == [] and quarantine[0].reason == "answer_not_in_options"


# --------------------------------------------------------------------------- VQA-RAD / PathVQA


def open_vqa_dataset(tmp_path, rows, name="vqa"):
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as HFImage

    feats = Features({"image": HFImage(), "question": Value("string"), "answer": Value("string")})
    dd = DatasetDict({split: Dataset.from_dict(r, features=feats) for split, r in rows.items()})
    out = tmp_path / name
    dd.save_to_disk(str(out))
    return str(out)


def test_vqa_rad_reads_the_requested_split_and_marks_yes_no_as_closed(tmp_path):
    imgs = [png((200, 0, 0)), png((0, 200, 0)), png((0, 0, 200))]
    path = open_vqa_dataset(tmp_path, {
        "train": {"image": [{"bytes": imgs[0], "path": None}], "question": ["is the liver enlarged?"],
                  "answer": ["no"]},
        "test": {"image": [{"bytes": imgs[1], "path": None}, {"bytes": imgs[2], "path": None},
                           {"bytes": imgs[2], "path": None}],
                 "question": ["are the lungs clear?", "where is the mass?", "what is the modality?"],
                 "answer": ["Yes", "right upper lobe", ""]},
    })
    spec = SourceSpec(name="vqa_rad", adapter="vqa_rad", path=path, hf_split="test", split="test")
    items, quarantine, _, store = ingest(spec, tmp_path)
    assert [it.question for it in items] == ["are the lungs clear?", "where is the mass?"]
    closed, open_ = items
    assert closed.task == "open_vqa" and closed.options == [] and closed.answer == "Yes"
    assert closed.meta == {"answer_type": "closed"} and open_.meta == {"answer_type": "open"}
    # the HF Image bytes are stored as they are: the ref is the hash of the original PNG
    assert closed.images == [sha(imgs[1])] and store.has(sha(imgs[1]))
    assert open_.images == [sha(imgs[2])]
    assert [q.reason for q in quarantine] == ["missing_answer"]
    # two items share one image file in the store
    assert len(list((tmp_path / "images").rglob("*.png"))) == 2


def test_pathvqa_answer_type_filter_counts_skipped_rows(tmp_path):
    imgs = [png((i * 40, 10, 10)) for i in range(3)]
    path = open_vqa_dataset(tmp_path, {"test": {
        "image": [{"bytes": b, "path": None} for b in imgs],
        "question": ["is this an adenocarcinoma?", "what are the arrows pointing to?",
                     "does this show fibrosis?"],
        "answer": ["yes", "granulomas", "no"]}}, name="pathvqa")
    spec = SourceSpec(name="pathvqa", adapter="pathvqa", path=path, hf_split="test",
                      options={"answer_type": "closed"})
    items, _, stats, _ = ingest(spec, tmp_path)
    assert [it.answer for it in items] == ["yes", "no"]
    assert all(it.modality == "pathology" for it in items)
    assert stats.skipped == 1 and stats.skip_reasons == {"answer_type_filtered": 1}


def test_open_vqa_row_without_image_is_quarantined(tmp_path):
    path = open_vqa_dataset(tmp_path, {"test": {
        "image": [None, {"bytes": png((1, 2, 3)), "path": None}],
        "question": ["is there a fracture?", "is there a fracture?"], "answer": ["no", "yes"]}})
    items, quarantine, _, _ = ingest(SourceSpec(name="v", adapter="vqa_rad", path=path), tmp_path)
    assert [it.answer for it in items] == ["yes"]
    assert [q.reason for q in quarantine] == ["image_missing"]


def test_undecodable_hf_image_bytes_are_quarantined(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    feats = Features({"image": HFImage(), "question": Value("string"), "answer": Value("string")})
    ds = Dataset.from_dict({"image": [{"bytes": b"GIF89a-but-not-really", "path": None},
                                      {"bytes": png((9, 9, 9)), "path": None}],
                            "question": ["q1?", "q2?"], "answer": ["a", "b"]}, features=feats)
    ds.save_to_disk(str(tmp_path / "bad"))
    items, quarantine, _, _ = ingest(SourceSpec(name="v", adapter="vqa_rad",
                                                path=str(tmp_path / "bad")), tmp_path)
    assert [it.answer for it in items] == ["b"]
    assert [q.reason for q in quarantine] == ["image_undecodable"]


# --------------------------------------------------------------------------- SLAKE


def test_slake_keeps_english_by_default_and_labels_modality_and_anatomy(tmp_path):
    root = FIX / "slake"
    spec = SourceSpec(name="slake", adapter="slake", path=str(root / "test.json"),
                      image_root=str(root), split="test")
    items, quarantine, stats, store = ingest(spec, tmp_path)
    assert [it.id for it in items] == ["slake/11934", "slake/11935", "slake/12100"]
    organ, closed, brain = items
    assert organ.answer == "Liver" and organ.task == "open_vqa"
    assert (organ.modality, organ.anatomy) == ("ct", "abdomen")
    assert (brain.modality, brain.anatomy) == ("mri", "brain")
    assert closed.meta["answer_type"] == "CLOSED" and closed.meta["content_type"] == "Modality"
    assert organ.meta["triple"] == ["vhead", "_", "_"] and organ.meta["location"] == "Abdomen"
    # images live under imgs/<img_name>; the two questions about xmlab1 share one stored image
    expected = sha((root / "imgs" / "xmlab1" / "source.jpg").read_bytes())
    assert organ.images == closed.images == [expected] and store.has(expected)
    assert stats.skip_reasons == {"language_filtered": 1}
    assert [(q.reason, q.item_id) for q in quarantine] == [("image_missing", "slake/12200")]


def test_slake_language_and_answer_type_options(tmp_path):
    root = FIX / "slake"
    zh, _, _, _ = ingest(SourceSpec(name="s", adapter="slake", path=str(root / "test.json"),
                                    image_root=str(root), options={"lang": "zh"}), tmp_path)
    assert [it.answer for it in zh] == ["肝脏"]
    closed, _, stats, _ = ingest(SourceSpec(name="s", adapter="slake", path=str(root / "test.json"),
                                            image_root=str(root), options={"lang": "all",
                                                                           "answer_type": "closed"}),
                                 tmp_path)
    assert [it.answer for it in closed] == ["Yes"]
    assert stats.skip_reasons == {"answer_type_filtered": 3}


# --------------------------------------------------------------------------- MMMU-Pro


def mmmu_pro_path(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    cols = {"id": Value("string"), "question": Value("string"), "options": Value("string"),
            "explanation": Value("string"),
            **{f"image_{k}": HFImage() for k in range(1, 8)},
            "img_type": Value("string"), "answer": Value("string"),
            "topic_difficulty": Value("string"), "subject": Value("string")}
    a, b, c, d = png((250, 0, 0)), png((0, 250, 0)), png((0, 0, 250)), png((90, 90, 0))
    rows = [
        {"id": "test_Clinical_Medicine_12", "explanation": "",
         "question": "Compare <image 1> with <image 2>. Which change has occurred?",
         "options": "['Consolidation', 'Effusion', 'Pneumothorax', 'Collapse', 'No change']",
         "image_1": a, "image_2": b, "img_type": "['Medical Images']", "answer": "B",
         "topic_difficulty": "Medium", "subject": "Clinical_Medicine"},
        {"id": "test_Pharmacy_3", "explanation": "Zero-order kinetics give a straight line.",
         "question": "<image 1> The plot shows which elimination kinetics?",
         "options": "[\"Zero-order\", \"First-order\", \"Michaelis' saturable\", 'Mixed']",
         "image_1": c, "img_type": "['Plots and Charts']", "answer": "A",
         "topic_difficulty": "Easy", "subject": "Pharmacy"},
        {"id": "test_History_40", "explanation": "", "question": "Who painted <image 1>?",
         "options": "['Monet', 'Manet']", "image_1": d, "img_type": "['Paintings']",
         "answer": "A", "topic_difficulty": "Hard", "subject": "History"},
        {"id": "test_Public_Health_7", "explanation": "",
         "question": "Based on <image 1>, which measure is lowest?",
         "options": "['Incidence', 'Prevalence']", "img_type": "['Tables']", "answer": "A",
         "topic_difficulty": "Medium", "subject": "Public_Health"},
    ]
    full = [{k: r.get(k) for k in cols} for r in rows]
    for r in full:
        for k in range(1, 8):
            if r[f"image_{k}"] is not None:
                r[f"image_{k}"] = {"bytes": r[f"image_{k}"], "path": None}
    ds = Dataset.from_list(full, features=Features(cols))
    ds.save_to_disk(str(tmp_path / "mmmu_pro"))
    return str(tmp_path / "mmmu_pro"), (a, b, c)


def test_mmmu_pro_health_subjects_images_and_literal_options(tmp_path):
    path, (a, b, c) = mmmu_pro_path(tmp_path)
    spec = SourceSpec(name="mmmu", adapter="mmmu_pro", path=path, hf_config="standard (10 options)",
                      split="test")
    items, quarantine, stats, _ = ingest(spec, tmp_path)
    assert [it.id for it in items] == ["mmmu/test_Clinical_Medicine_12", "mmmu/test_Pharmacy_3"]
    med, pharm = items
    assert med.images == [sha(a), sha(b)] and pharm.images == [sha(c)]
    assert "<image 1>" in med.question and "<image 2>" in med.question  # tags kept in the text
    assert med.options == ["Consolidation", "Effusion", "Pneumothorax", "Collapse", "No change"]
    assert med.answer_text == "Effusion" and med.task == "mm_reasoning"
    assert pharm.options[2] == "Michaelis' saturable"
    assert pharm.meta["explanation"].startswith("Zero-order") and "explanation" not in med.meta
    assert med.meta["subject"] == "Clinical_Medicine" and med.meta["topic_difficulty"] == "Medium"
    assert stats.skip_reasons == {"subject_filtered": 1}
    assert [(q.reason, q.item_id) for q in quarantine] == [("image_missing", "mmmu/test_Public_Health_7")]


def test_mmmu_pro_subject_options(tmp_path):
    path, _ = mmmu_pro_path(tmp_path)
    hist, _, _, _ = ingest(SourceSpec(name="m", adapter="mmmu_pro", path=path,
                                      options={"subjects": ["History"]}), tmp_path)
    assert [it.id for it in hist] == ["m/test_History_40"]
    every, _, stats, _ = ingest(SourceSpec(name="m", adapter="mmmu_pro", path=path,
                                           options={"subset": "all"}), tmp_path)
    assert len(every) == 3 and stats.skipped == 0
    health, _, _, _ = ingest(SourceSpec(name="m", adapter="mmmu_pro", path=path,
                                        options={"subset": "health"}), tmp_path)
    assert len(health) == 2
