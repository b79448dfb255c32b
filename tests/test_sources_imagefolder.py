"""The imagefolder classification adapter: folder-per-class and label-file layouts, presets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from medrecipe.config import SourceSpec
from medrecipe.errors import SourceError
from source_helpers import ingest

_counter = [0]


def img(path: Path, fmt: str | None = None) -> Path:
    """A tiny image whose pixels differ from every other one written here."""
    _counter[0] += 1
    n = _counter[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (n * 37 % 256, n * 91 % 256, n * 13 % 256)).save(path, format=fmt)
    return path


# --------------------------------------------------------------------------- folder per class


def brain_tumor_folder(root: Path) -> Path:
    # Kaggle "Brain Tumor MRI Dataset" layout: Testing/<class>/Te-xx_NNNN.jpg
    for cls, tag in (("glioma", "gl"), ("meningioma", "me"), ("notumor", "no"), ("pituitary", "pi")):
        for i in range(2):
            img(root / "Testing" / cls / f"Te-{tag}_{i:04d}.jpg", "JPEG")
    (root / "Testing" / "notumor" / "README.txt").write_text("not an image")
    (root / "Testing" / ".DS_Store").write_bytes(b"\0\0")
    return root / "Testing"


def test_brain_tumor_preset_fixed_options_question_and_labels(tmp_path):
    path = brain_tumor_folder(tmp_path / "data")
    spec = SourceSpec(name="brain_tumor", adapter="imagefolder", path=str(path), split="test",
                      options={"preset": "brain_tumor"})
    items, quarantine, stats, store = ingest(spec, tmp_path)
    assert quarantine == [] and stats.items == 8
    opts = ["Glioma", "Meningioma", "Pituitary tumor", "No tumor"]
    assert all(it.options == opts for it in items)
    by_id = {it.id: it for it in items}
    no_tumor = by_id["brain_tumor/notumor/Te-no_0001.jpg"]
    assert no_tumor.answer == "D" and no_tumor.answer_text == "No tumor"
    assert no_tumor.meta == {"label": "notumor", "class": "No tumor", "file": "notumor/Te-no_0001.jpg"}
    assert by_id["brain_tumor/pituitary/Te-pi_0000.jpg"].answer == "C"
    it = by_id["brain_tumor/glioma/Te-gl_0000.jpg"]
    assert it.task == "mm_classification" and it.split == "test"
    assert (it.modality, it.anatomy) == ("mri", "brain") and "brain MRI" in it.question
    original = (path / "glioma" / "Te-gl_0000.jpg").read_bytes()
    assert it.images == [hashlib.sha256(original).hexdigest()] and store.has(it.images[0])


def test_other_upstream_folder_spellings_map_to_the_same_classes(tmp_path):
    # the older Kaggle copy names its folders glioma_tumor, no_tumor, ...
    for cls in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"):
        img(tmp_path / "d" / cls / "1.jpg", "JPEG")
    items, quarantine, _, _ = ingest(SourceSpec(name="bt", adapter="imagefolder", path=str(tmp_path / "d"),
                                                options={"dataset": "brain_tumor"}), tmp_path)
    assert quarantine == []
    assert {it.meta["label"]: it.answer_text for it in items} == {
        "glioma_tumor": "Glioma", "meningioma_tumor": "Meningioma", "no_tumor": "No tumor",
        "pituitary_tumor": "Pituitary tumor"}


def test_diabetic_retinopathy_five_grades_from_named_folders(tmp_path):
    # "gaussian filtered" APTOS copy: No_DR, Mild, Moderate, Severe, Proliferate_DR
    for cls in ("No_DR", "Mild", "Moderate", "Severe", "Proliferate_DR"):
        img(tmp_path / "dr" / cls / "a.png")
    spec = SourceSpec(name="aptos", adapter="imagefolder", path=str(tmp_path / "dr"),
                      options={"preset": "aptos"})
    items, quarantine, _, _ = ingest(spec, tmp_path)
    assert quarantine == []
    assert items[0].options == ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]
    assert {it.meta["label"]: it.answer for it in items} == {
        "No_DR": "A", "Mild": "B", "Moderate": "C", "Severe": "D", "Proliferate_DR": "E"}
    assert items[0].modality == "fundus" and "diabetic retinopathy" in items[0].question
    assert "five-grade" in items[0].question


def test_busi_masks_are_not_samples(tmp_path):
    root = tmp_path / "Dataset_BUSI_with_GT"
    for cls in ("benign", "malignant", "normal"):
        img(root / cls / f"{cls} (1).png")
        img(root / cls / f"{cls} (1)_mask.png")
    img(root / "benign" / "benign (2)_mask_1.png")
    items, quarantine, _, _ = ingest(SourceSpec(name="busi", adapter="imagefolder", path=str(root),
                                                options={"preset": "busi"}), tmp_path)
    assert sorted(it.id for it in items) == ["busi/benign/benign (1).png",
                                             "busi/malignant/malignant (1).png",
                                             "busi/normal/normal (1).png"]
    assert items[0].options == ["Normal", "Benign", "Malignant"] and quarantine == []
    assert items[0].modality == "ultrasound" and items[0].anatomy == "breast"


def test_custom_dataset_sorted_classes_display_names_and_question(tmp_path):
    for cls in ("stone", "cyst", "normal"):
        img(tmp_path / "kidney" / cls / "x.png")
    spec = SourceSpec(name="kid", adapter="imagefolder", path=str(tmp_path / "kidney"), modality="ct",
                      options={"question": "Which finding does this kidney CT show?",
                               "labels": {"cyst": "Renal cyst", "stone": "Kidney stone"}})
    items, _, _, _ = ingest(spec, tmp_path)
    assert items[0].options == ["Renal cyst", "normal", "Kidney stone"]  # sorted by folder name
    assert items[0].question == "Which finding does this kidney CT show?"
    assert items[0].modality == "ct" and items[0].anatomy is None
    ordered, _, _, _ = ingest(spec.model_copy(update={"options": {"classes": ["normal", "cyst", "stone"]}}),
                              tmp_path)
    assert ordered[0].options == ["normal", "cyst", "stone"]
    assert {it.meta["label"]: it.answer for it in ordered} == {"normal": "A", "cyst": "B", "stone": "C"}


def test_numeric_classes_sort_as_numbers(tmp_path):
    for cls in ("10", "2", "1"):
        img(tmp_path / "g" / cls / "x.png")
    items, _, _, _ = ingest(SourceSpec(name="g", adapter="imagefolder", path=str(tmp_path / "g")), tmp_path)
    assert items[0].options == ["1", "2", "10"]


def test_hyperkvasir_takes_the_class_from_the_image_folder(tmp_path):
    root = tmp_path / "labeled-images"
    img(root / "lower-gi-tract" / "pathological-findings" / "polyps" / "a.jpg", "JPEG")
    img(root / "lower-gi-tract" / "anatomical-landmarks" / "cecum" / "b.jpg", "JPEG")
    img(root / "upper-gi-tract" / "anatomical-landmarks" / "z-line" / "c.jpg", "JPEG")
    items, _, _, _ = ingest(SourceSpec(name="hk", adapter="imagefolder", path=str(root),
                                       options={"preset": "hyperkvasir"}), tmp_path)
    assert items[0].options == ["cecum", "polyps", "z line"]
    assert {it.meta["label"]: it.answer_text for it in items} == {
        "polyps": "polyps", "cecum": "cecum", "z-line": "z line"}
    assert items[0].modality == "endoscopy"


def test_folder_defects_are_quarantined_and_the_rest_ingested(tmp_path):
    path = brain_tumor_folder(tmp_path / "data")
    (path / "glioma" / "Te-gl_0009.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    img(path / "astrocytoma" / "Te-as_0000.jpg", "JPEG")  # a class outside the preset
    spec = SourceSpec(name="bt", adapter="imagefolder", path=str(path), options={"preset": "brain_tumor"})
    items, quarantine, stats, _ = ingest(spec, tmp_path)
    assert stats.items == 8
    assert sorted((q.reason, q.item_id) for q in quarantine) == [
        ("image_undecodable", "bt/glioma/Te-gl_0009.jpg"),
        ("unknown_label", "bt/astrocytoma/Te-as_0000.jpg")]


def test_a_single_class_folder_is_a_user_error(tmp_path):
    img(tmp_path / "one" / "only" / "x.png")
    with pytest.raises(SourceError, match="at least two"):
        ingest(SourceSpec(name="o", adapter="imagefolder", path=str(tmp_path / "one")), tmp_path)


def test_unknown_preset_and_option_are_user_errors(tmp_path):
    img(tmp_path / "d" / "a" / "x.png")
    with pytest.raises(SourceError, match="unknown imagefolder preset"):
        ingest(SourceSpec(name="o", adapter="imagefolder", path=str(tmp_path / "d"),
                          options={"preset": "brain_tumour_mri"}), tmp_path)
    with pytest.raises(SourceError, match="label file"):
        ingest(SourceSpec(name="o", adapter="imagefolder", path=str(tmp_path / "d"),
                          options={"where": {"split": "test"}}), tmp_path)
    with pytest.raises(SourceError, match="qestion"):
        ingest(SourceSpec(name="o", adapter="imagefolder", path=str(tmp_path / "d"),
                          options={"qestion": "?"}), tmp_path)


# --------------------------------------------------------------------------- label files


def test_ham10000_metadata_csv_with_images_split_over_two_folders(tmp_path):
    root = tmp_path / "ham"
    rows = [("HAM_0000118", "ISIC_0027419", "bkl", "histo", "80.0", "male", "scalp"),
            ("HAM_0002730", "ISIC_0026769", "mel", "histo", "60.0", "female", "back"),
            ("HAM_0001466", "ISIC_0031633", "nv", "follow_up", "45.0", "male", "trunk"),
            ("HAM_0000999", "ISIC_0099999", "vasc", "consensus", "30.0", "female", "face")]
    img(root / "HAM10000_images_part_1" / "ISIC_0027419.jpg", "JPEG")
    img(root / "HAM10000_images_part_1" / "ISIC_0026769.jpg", "JPEG")
    img(root / "HAM10000_images_part_2" / "ISIC_0031633.jpg", "JPEG")
    csv = root / "HAM10000_metadata.csv"
    csv.write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n"
                   + "".join(",".join(r) + "\n" for r in rows))
    spec = SourceSpec(name="ham", adapter="imagefolder", path=str(csv), options={"preset": "ham10000"})
    items, quarantine, _, _ = ingest(spec, tmp_path)
    assert [it.id for it in items] == ["ham/ISIC_0027419", "ham/ISIC_0026769", "ham/ISIC_0031633"]
    assert items[0].options == [
        "Actinic keratosis / intraepithelial carcinoma", "Basal cell carcinoma",
        "Benign keratosis-like lesion", "Dermatofibroma", "Melanoma", "Melanocytic nevus",
        "Vascular lesion"]
    assert [it.answer for it in items] == ["C", "E", "F"]
    assert items[1].meta == {"label": "mel", "class": "Melanoma", "file": "ISIC_0026769",
                             "lesion_id": "HAM_0002730", "dx_type": "histo", "age": "60.0",
                             "sex": "female", "localization": "back"}
    assert items[0].modality == "dermoscopy" and items[0].anatomy == "skin"
    assert [(q.reason, q.item_id) for q in quarantine] == [("image_missing", "ham/ISIC_0099999")]


def test_aptos_train_csv_ids_without_extension(tmp_path):
    for code in ("000c1434d8d7", "001639a390f0", "0024cdab0c1e"):
        img(tmp_path / "train_images" / f"{code}.png")
    csv = tmp_path / "train.csv"
    csv.write_text("id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,4\n0024cdab0c1e,0\n02685f13cefd,\n")
    spec = SourceSpec(name="aptos", adapter="imagefolder", path=str(csv),
                      image_root=str(tmp_path / "train_images"), options={"preset": "aptos"})
    items, quarantine, _, _ = ingest(spec, tmp_path)
    assert [it.answer_text for it in items] == ["Moderate", "Proliferative DR", "No DR"]
    assert [q.reason for q in quarantine] == ["missing_answer"]


def test_coronahack_metadata_labels_split_filter_and_unused_labels(tmp_path):
    root = tmp_path / "Coronahack-Chest-XRay-Dataset"
    names = {"IM-0128-0001.jpeg": "train", "person1_bacteria_1.jpeg": "train",
             "person1_virus_6.jpeg": "test", "person1591_virus_2763.jpeg": "test",
             "SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.jpeg": "train",
             "NORMAL2-IM-0336-0001.jpeg": "test"}
    for name, folder in names.items():
        img(root / folder / name, "JPEG")
    csv = tmp_path / "Chest_xray_Corona_Metadata.csv"
    csv.write_text(
        ",X_ray_image_name,Label,Dataset_type,Label_2_Virus_category,Label_1_Virus_category\n"
        "0,IM-0128-0001.jpeg,Normal,TRAIN,,\n"
        "1,person1_bacteria_1.jpeg,Pnemonia,TRAIN,,bacteria\n"
        "2,person1_virus_6.jpeg,Pnemonia,TEST,,Virus\n"
        "3,person1591_virus_2763.jpeg,Pnemonia,TEST,COVID-19,Virus\n"
        "4,SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.jpeg,Pnemonia,TRAIN,ARDS,Stress-Smoking\n"
        "5,NORMAL2-IM-0336-0001.jpeg,Normal,TEST,,\n")
    spec = SourceSpec(name="ch", adapter="imagefolder", path=str(csv), image_root=str(root),
                      options={"preset": "coronahack"})
    items, quarantine, stats, _ = ingest(spec, tmp_path)
    assert quarantine == []
    assert items[0].options == ["Normal", "Bacterial pneumonia", "Viral pneumonia"]
    assert [it.answer_text for it in items] == ["Normal", "Bacterial pneumonia", "Viral pneumonia",
                                                "Viral pneumonia", "Normal"]
    assert items[3].meta["Label_2_Virus_category"] == "COVID-19"
    assert stats.skip_reasons == {"label_not_used": 1}  # Stress-Smoking is none of the classes
    test_only, _, stats, _ = ingest(spec.model_copy(update={"options": {
        "preset": "coronahack", "where": {"Dataset_type": "TEST"}}}), tmp_path)
    assert [it.id for it in test_only] == ["ch/person1_virus_6.jpeg", "ch/person1591_virus_2763.jpeg",
                                           "ch/NORMAL2-IM-0336-0001.jpeg"]
    assert stats.skip_reasons == {"filtered_by_where": 3}


def test_path_label_csv_inside_the_data_folder(tmp_path):
    root = tmp_path / "bcss"
    img(root / "patches" / "p1.png")
    img(root / "patches" / "p2.png")
    img(root / "patches" / "p3.png")
    (root / "patches" / "p4.png").write_bytes(b"")  # an empty file
    (root / "labels.csv").write_text("path,label\npatches/p1.png,tumor\npatches/p2.png,"
                                     "lymphocytic_infiltrate\npatches/p3.png,necrosis_or_debris\n"
                                     "patches/p4.png,stroma\npatches/p3.png,stroma\n")
    spec = SourceSpec(name="bcss", adapter="imagefolder", path=str(root),
                      options={"preset": "bcss", "csv": "labels.csv"})
    items, quarantine, _, _ = ingest(spec, tmp_path)
    assert items[0].options == ["Tumor", "Stroma", "Inflammatory infiltrate", "Necrosis"]
    assert [(it.id, it.answer) for it in items] == [("bcss/patches/p1.png", "A"),
                                                    ("bcss/patches/p2.png", "C"),
                                                    ("bcss/patches/p3.png", "D")]
    assert sorted(q.reason for q in quarantine) == ["duplicate_id", "image_undecodable"]


def test_vindr_mammo_path_template_reads_dicoms(tmp_path):
    import io

    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    def dicom(path: Path, value: int) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 4, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (np.arange(16, dtype=np.uint16) * value).tobytes()
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())

    dicom(tmp_path / "images" / "s1" / "i1.dicom", 10)
    dicom(tmp_path / "images" / "s1" / "i2.dicom", 20)
    csv = tmp_path / "breast-level_annotations.csv"
    csv.write_text("study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,"
                   "breast_density,split\n"
                   "s1,x,i1,L,CC,4,4,BI-RADS 1,DENSITY C,training\n"
                   "s1,x,i2,L,MLO,4,4,BI-RADS 4,DENSITY C,test\n")
    spec = SourceSpec(name="mammo", adapter="imagefolder", path=str(csv),
                      options={"preset": "vindr_mammo", "where": {"split": "test"}})
    items, quarantine, stats, store = ingest(spec, tmp_path)
    assert quarantine == [] and stats.skipped == 1
    (it,) = items
    assert it.id == "mammo/images/s1/i2.dicom" and it.answer_text == "BI-RADS 4" and it.answer == "D"
    assert it.meta["view_position"] == "MLO" and it.modality == "mammography"
    assert store.path(it.images[0]).suffix == ".png"  # DICOM stored as an 8-bit PNG
