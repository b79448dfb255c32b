"""Figure-record adapters on small fixtures written in the upstream field names (own texts)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medrecipe.curate.config import FigureSourceSpec, curate_recipe_from_data
from medrecipe.curate.records import (
    FIGURE_RECORD_SCHEMA,
    FigureRecord,
    load_records,
    records_from_table,
    records_to_table,
)
from medrecipe.errors import RecipeError, SourceError
from medrecipe.images import ImageStore, sha256_bytes
from medrecipe.sources.base import BuildStats


def _png(path, shade: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (40, 30), shade).save(buf, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def load(tmp_path, **spec):
    """(records, quarantine rows, stats) of one source."""
    rows, stats = [], BuildStats()
    s = FigureSourceSpec(name=spec.pop("name", "src"), **spec)
    tables = list(load_records(s, store=ImageStore(tmp_path / "store"), quarantine=rows,
                               stats=stats))
    recs = [r for t in tables for r in records_from_table(t)]
    return recs, rows, stats


def test_figure_record_round_trips_through_arrow():
    rec = FigureRecord(id="s/1", source="s", image="ab" * 32, sub_caption="Panel A.",
                       caption="Figure 1.", references=["See Figure 1."], article_id="PMC1",
                       figure_id="F1", panel="A", license="CC BY", modality="ct",
                       meta={"year": 2020})
    table = records_to_table([rec])
    assert table.schema.equals(FIGURE_RECORD_SCHEMA)
    back = records_from_table(table)[0]
    assert back.model_dump() == rec.model_dump() and back.texts() == ["Panel A.", "Figure 1.",
                                                                      "See Figure 1."]


def test_generic_adapter_maps_fields_and_quarantines_what_it_cannot_use(tmp_path):
    data = _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png", 120)
    _jsonl(tmp_path / "figs.jsonl", [
        {"fid": "1", "pic": "img/a.png", "sub": "Axial CT, panel B.",
         "info": {"cap": "Figure 2. Liver lesion."}, "refs": ["As shown in Figure 2B, ..."],
         "pmcid": "PMC11", "lic": "CC BY", "year": 2019},
        {"fid": "2", "pic": "img/b.png", "sub": "", "info": {"cap": None},
         "refs": "[\"Only an in-text reference.\"]"},
        {"fid": "3", "pic": "", "sub": "A caption without an image."},
        {"fid": "4", "pic": "img/missing.png", "sub": "The file is gone."},
        {"fid": "5", "pic": "img/a.png", "sub": "", "info": {}, "refs": []},
        {"fid": "1", "pic": "img/a.png", "sub": "A second row with the same id."},
    ])
    (tmp_path / "figs.jsonl").open("a").write("{not json\n")
    recs, bad, stats = load(tmp_path, path=str(tmp_path / "figs.jsonl"), mapping={
        "id": "fid", "image": "pic", "sub_caption": "sub", "caption": "info.cap",
        "references": "refs", "article_id": "pmcid", "license": "lic", "meta": "year"},
        modality="ct")
    assert [r.id for r in recs] == ["src/1", "src/2"]
    a = recs[0]
    assert a.image == sha256_bytes(data) and a.caption == "Figure 2. Liver lesion."
    assert a.references == ["As shown in Figure 2B, ..."] and a.article_id == "PMC11"
    assert a.meta == {"year": 2019} and a.modality == "ct" and a.license == "CC BY"
    assert recs[1].references == ["Only an in-text reference."] and recs[1].caption is None
    assert sorted(r.reason for r in bad) == ["duplicate_id", "image_missing", "malformed_json",
                                             "no_image", "no_text"]
    assert stats.rows == 7 and stats.items == 2 and stats.quarantined == 5


def test_generic_adapter_reads_parquet_and_hf_datasets(tmp_path):
    import datasets

    data = _png(tmp_path / "x.png")
    pq.write_table(pa.table({"image": ["x.png"], "caption": ["Figure 1. Chest radiograph."],
                             "references": [["Figure 1 shows the effusion."]]}),
                   tmp_path / "figs.parquet")
    recs, bad, _ = load(tmp_path, path=str(tmp_path / "figs.parquet"))
    assert len(recs) == 1 and not bad and recs[0].references == ["Figure 1 shows the effusion."]

    ds = datasets.Dataset.from_dict({"image": [{"bytes": data, "path": None}],
                                     "caption": ["Figure 3. Fundus photograph."]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "caption": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    recs, bad, _ = load(tmp_path, path=str(tmp_path / "hf"))
    assert len(recs) == 1 and recs[0].image == sha256_bytes(data)  # original bytes, not re-encoded


def test_open_pmc_preset(tmp_path):
    _png(tmp_path / "images" / "PMC77_F2_b.jpg.png")
    _jsonl(tmp_path / "open_pmc.jsonl", [{
        "media_name": "PMC77_F2_b.jpg.png", "sub_caption": "(b) Coronal T2 MRI of the knee.",
        "full_caption": "Figure 2. Knee injury. (a) Radiograph. (b) MRI.",
        "intext_refs": ["MRI showed a bone bruise (Figure 2b).", ""], "PMC_ID": "PMC77",
        "media_id": "F2", "subfigure_label": "b", "license": "CC BY-NC", "modality": "mri",
        "year": 2021}])
    recs, bad, _ = load(tmp_path, adapter="open_pmc", path=str(tmp_path / "open_pmc.jsonl"))
    r = recs[0]
    assert not bad and r.id == "src/PMC77_F2_b" and r.panel == "b" and r.figure_id == "F2"
    assert r.caption.startswith("Figure 2.") and r.sub_caption.startswith("(b)")
    assert r.references == ["MRI showed a bone bruise (Figure 2b)."] and r.meta == {"year": 2021}


def test_pmc_oa_preset_reads_ids_from_the_image_name(tmp_path):
    _png(tmp_path / "images" / "PMC5551_Fig3_2.jpg")
    _jsonl(tmp_path / "pmc_oa.jsonl", [{"image": "PMC5551_Fig3_2.jpg",
                                        "caption": "Sagittal CT reconstruction of the spine.",
                                        "pmcid": "PMC5551", "url_name": "12-3-4.jpg"}])
    recs, _, _ = load(tmp_path, adapter="pmc_oa", path=str(tmp_path / "pmc_oa.jsonl"))
    r = recs[0]
    assert (r.id, r.article_id, r.figure_id, r.panel) == ("src/PMC5551_Fig3_2", "PMC5551",
                                                           "Fig3", "2")
    assert r.sub_caption == "Sagittal CT reconstruction of the spine." and r.caption is None
    assert r.meta == {"url_name": "12-3-4.jpg"}
    full, _, _ = load(tmp_path, adapter="pmc_oa", path=str(tmp_path / "pmc_oa.jsonl"),
                      options={"caption_kind": "full"})
    assert full[0].caption == "Sagittal CT reconstruction of the spine."
    with pytest.raises(SourceError, match="caption_kind"):
        load(tmp_path, adapter="pmc_oa", path=str(tmp_path / "pmc_oa.jsonl"),
             options={"caption_kind": "both"})


def test_medicat_preset(tmp_path):
    _png(tmp_path / "figures" / "abc123_3-Figure2-1.png")
    _jsonl(tmp_path / "medicat.jsonl", [
        {"pdf_hash": "abc123", "fig_uri": "3-Figure2-1.png", "fig_key": "Figure2",
         "s2_caption": "Figure 2. Abdominal CT with a dilated small bowel loop.",
         "s2orc_caption": "Figure 2. Abdominal CT.",
         "s2orc_references": ["CT (Figure 2) showed a transition point in the ileum."],
         "radiology": True, "scope": True, "predicted_type": "Medical images",
         "oa_info": {"license": "cc-by", "doi": "10.0000/example.1", "pmcid": "PMC42"}},
        {"pdf_hash": "def456", "fig_uri": "1-Figure1-1.png", "s2_caption": "Figure 1. Chart.",
         "s2orc_references": [], "radiology": False, "predicted_type": "Other",
         "oa_info": {}}])
    recs, bad, _ = load(tmp_path, adapter="medicat", path=str(tmp_path / "medicat.jsonl"),
                        image_root=str(tmp_path))
    r = recs[0]
    assert r.id == "src/abc123_3-Figure2-1" and r.article_id == "PMC42" and r.figure_id == "Figure2"
    assert r.caption.startswith("Figure 2. Abdominal CT with") and r.license == "cc-by"
    assert r.references == ["CT (Figure 2) showed a transition point in the ileum."]
    assert r.modality == "radiology" and r.meta["predicted_type"] == "Medical images"
    assert r.meta["oa_info"]["doi"] == "10.0000/example.1"
    assert [b.reason for b in bad] == ["image_missing"]  # def456's figure is not on disk


def test_roco_folder_with_captions_links_licences_and_keywords(tmp_path):
    split = tmp_path / "data" / "train" / "radiology"
    _png(split / "images" / "PMC9001_fig1.jpg")
    _png(split / "images" / "ROCO_00003.jpg")
    (split / "captions.txt").write_text(
        "ROCO_00001\t Axial CT showing a large left renal mass.\n"
        "ROCO_00002\t Chest radiograph with a right apical pneumothorax.\n"
        "ROCO_00003\t Ultrasound of the thyroid with a hypoechoic nodule.\n")
    (split / "dlinks.txt").write_text(
        "ROCO_00001\twget -x ftp://ftp.example.org/pub/pmc/oa_package/ab/cd/PMC9001.tar.gz\t"
        "fig1.jpg\n")
    (split / "licences.txt").write_text("ROCO_00001\tCC BY\n")
    (split / "keywords.txt").write_text("ROCO_00001\t renal mass\n")
    recs, bad, stats = load(tmp_path, adapter="roco", path=str(split))
    assert [r.id for r in recs] == ["src/ROCO_00001", "src/ROCO_00003"]
    r = recs[0]
    assert r.article_id == "PMC9001" and r.license == "CC BY" and r.figure_id == "fig1.jpg"
    assert r.caption == "Axial CT showing a large left renal mass."
    assert r.meta == {"roco_class": "radiology", "keywords": ["renal", "mass"]}
    assert [b.reason for b in bad] == ["image_missing"] and stats.rows == 3

    v2 = tmp_path / "rocov2"
    _png(v2 / "train" / "ROCOv2_2023_train_000001.jpg")
    (v2 / "train_captions.csv").write_text("ID,Caption\nROCOv2_2023_train_000001,"
                                           "Head CT without contrast showing a bleed.\n")
    recs, bad, _ = load(tmp_path, adapter="roco", path=str(v2 / "train_captions.csv"),
                        image_root=str(v2 / "train"))
    assert [r.id for r in recs] == ["src/ROCOv2_2023_train_000001"] and not bad


def test_unknown_adapter_and_unknown_mapping_fields_fail_early(tmp_path):
    with pytest.raises(SourceError, match="unknown figure-record adapter"):
        load(tmp_path, adapter="nope", path=str(tmp_path))
    with pytest.raises(RecipeError, match="mapping names unknown FigureRecord field"):
        curate_recipe_from_data({"kind": "curate", "name": "x", "sources": [
            {"name": "s", "path": "p.jsonl", "mapping": {"captions": "c"}}]})
