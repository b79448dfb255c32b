"""Image question sources: PMC-VQA, VQA-RAD, SLAKE (English), PathVQA, MMMU-Pro (health).

Field names follow the public copies (see shared/datasets.md). Multiple-choice sets
(PMC-VQA, MMMU-Pro) become `mm_reasoning` Items; the free-answer sets (VQA-RAD, SLAKE,
PathVQA) become `open_vqa` Items whose answer is the reference text.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from medrecipe.config import SourceSpec
from medrecipe.sources import register
from medrecipe.sources.base import (
    RawStream,
    Reject,
    Skip,
    answer_to_letter,
    as_text,
    clean_meta,
    image_roots,
)
from medrecipe.sources.text_mcq import (
    blank,
    check_options,
    choice_filter,
    ids_from,
    norm_key,
    positional_options,
    records,
    reject_answer,
)


def locate_image(name: Any, spec: SourceSpec, subdirs: tuple[str, ...] = ()) -> Any:
    """A relative image file name resolved against image_root (or the data file's folder).

    Each root is tried as is and with the given subfolders (the layout of the upstream
    zip files, e.g. `imgs/` for SLAKE); payloads that are not names pass through, and a
    name found nowhere is returned unchanged so the loader reports it as missing.
    """
    if not isinstance(name, str) or blank(name) or Path(name).is_absolute():
        return name
    rel = Path(name.strip())
    for root in image_roots(spec):
        for sub in ("", *subdirs):
            cand = root / sub / rel
            if cand.is_file():
                return str(cand)
    return name


def _yes_no(answer: Any) -> str:
    return "closed" if str(answer).strip().lower() in ("yes", "no") else "open"


# --------------------------------------------------------------------------- PMC-VQA


def _pmc_choice(value: Any, letter: str) -> Any:
    """'A:CT scan ' / ' A: CT scan' -> 'CT scan' (only the column's own letter is removed)."""
    if blank(value):
        return value
    return re.sub(rf"^\s*{letter}\s*:\s*", "", str(value)).strip()


@register("pmc_vqa", task="mm_reasoning", hub_id="xmcmic/PMC-VQA",
          description="PMC-VQA (figures from PubMed Central; 4 options); test_clean.csv is the"
                      " verified 2,000-item test set",
          needs="a PMC-VQA CSV (test_clean.csv, train_2.csv, ...) with image_root at the unzipped"
                " figures (Figure_path is looked up there and in its figures/ or images/ folder)")
@ids_from(lambda r: r.get("index"))
def pmc_vqa(spec: SourceSpec) -> RawStream:
    """PMC-VQA rows: Figure_path, Question, Choice A..D ("A:..."), Answer_label letter."""
    check_options(spec, [])
    for idx, rec in records(spec):
        if isinstance(rec, Reject):
            yield idx, rec
            continue
        names = [f"Choice {L}" for L in "ABCD" if f"Choice {L}" in rec]
        options = positional_options([_pmc_choice(rec.get(n), n[-1]) for n in names],
                                     drop_trailing_blank=True)
        if isinstance(options, str):
            yield idx, Reject("bad_options", options, rec)
            continue
        label = rec.get("Answer_label")
        if not blank(label):
            letter = answer_to_letter(label, options, "letter")
            if letter is None:
                yield idx, reject_answer(label, len(options), rec, "Answer_label")
                continue
        else:
            answer_text = re.sub(r"^\s*[A-Z]\s*:\s*", "", as_text(rec.get("Answer")))
            letter = answer_to_letter(answer_text, options, "text")
            if letter is None:
                yield idx, reject_answer(rec.get("Answer"), len(options), rec, "Answer")
                continue
        figure = rec.get("Figure_path")
        if blank(figure):
            yield idx, Reject("image_missing", "Figure_path is empty", rec)
            continue
        native = rec.get("index") if not blank(rec.get("index")) else None
        yield idx, {"id": native, "question": as_text(rec.get("Question")), "options": options,
                    "answer": letter,
                    "images": [locate_image(str(figure), spec, ("figures", "images"))],
                    "meta": clean_meta(rec, ["Figure_path", "Answer", "Caption"])}


# --------------------------------------------------------------------------- VQA-RAD / PathVQA

_ANSWER_TYPE_HELP = "all (default) | open | closed (yes/no answers); others are skipped (counted)"


def _vqa_id(rec: dict[str, Any]) -> Any:
    return next((rec[k] for k in ("id", "qid") if not blank(rec.get(k))), None)


def _open_vqa(spec: SourceSpec, modality: str | None) -> RawStream:
    """Rows of an `image, question, answer` dataset (answer type: yes/no = closed)."""
    check_options(spec, ["answer_type"])
    wanted = choice_filter(spec.options.get("answer_type"), "all")
    for idx, rec in records(spec):
        if isinstance(rec, Reject):
            yield idx, rec
            continue
        answer = rec.get("answer")
        if blank(answer):
            yield idx, Reject("missing_answer", "answer is empty", rec)
            continue
        kind = _yes_no(answer)
        if wanted is not None and kind not in wanted:
            yield idx, Skip("answer_type_filtered")
            continue
        native = _vqa_id(rec)
        yield idx, {"id": native, "question": as_text(rec.get("question")), "options": [],
                    "answer": str(answer).strip(), "images": [rec.get("image")],
                    "modality": spec.modality or modality, "meta": {"answer_type": kind}}


@register("vqa_rad", task="open_vqa", hub_id="flaviagiammarino/vqa-rad",
          description="VQA-RAD (radiology; open and yes/no questions, answer_type inferred)",
          needs="a HF dataset folder (save_to_disk or data files) / Parquet of image, question, answer",
          options={"answer_type": _ANSWER_TYPE_HELP})
@ids_from(_vqa_id)
def vqa_rad(spec: SourceSpec) -> RawStream:
    """VQA-RAD rows: image (HF Image), question, answer."""
    yield from _open_vqa(spec, None)


@register("pathvqa", task="open_vqa", hub_id="flaviagiammarino/path-vqa",
          description="PathVQA (pathology; open and yes/no questions, answer_type inferred)",
          needs="a HF dataset folder (save_to_disk or data files) / Parquet of image, question, answer",
          options={"answer_type": _ANSWER_TYPE_HELP})
@ids_from(_vqa_id)
def pathvqa(spec: SourceSpec) -> RawStream:
    """PathVQA rows: image (HF Image), question, answer; modality pathology."""
    yield from _open_vqa(spec, "pathology")


# --------------------------------------------------------------------------- SLAKE

_SLAKE_MODALITY = {"ct": "ct", "mri": "mri", "x-ray": "x-ray", "xray": "x-ray"}
_SLAKE_ANATOMY = {
    "brain": "brain", "brain_tissue": "brain", "brain_face": "brain", "head": "brain",
    "neck": "head and neck", "lung": "chest", "chest_lung": "chest", "chest": "chest",
    "chest_heart": "heart", "chest_mediastinal": "chest", "mediastinum": "chest",
    "abdomen": "abdomen", "liver": "liver", "kidney": "kidney", "pelvic cavity": "pelvis",
    "pelvic_cavity": "pelvis", "pelvis": "pelvis", "spine": "spine",
}


@register("slake", task="open_vqa", hub_id="BoKelvin/SLAKE",
          description="SLAKE (radiology VQA, English by default; modality/anatomy from its fields)",
          needs="a SLAKE JSON (train.json / validate.json / test.json) or HF folder, with image_root"
                " at the unzipped folder holding imgs/<img_name>",
          options={"lang": "en (default) | zh | all; other languages are skipped (counted)",
                   "answer_type": "all (default) | open | closed (SLAKE's answer_type)"})
@ids_from(lambda r: r.get("qid"))
def slake(spec: SourceSpec) -> RawStream:
    """SLAKE rows: img_name, question, answer, q_lang, location, modality, answer_type, qid."""
    check_options(spec, ["lang", "answer_type"])
    langs = choice_filter(spec.options.get("lang"), "en")
    kinds = choice_filter(spec.options.get("answer_type"), "all")
    for idx, rec in records(spec):
        if isinstance(rec, Reject):
            yield idx, rec
            continue
        if langs is not None and norm_key(rec.get("q_lang", "")) not in langs:
            yield idx, Skip("language_filtered")
            continue
        if kinds is not None and norm_key(rec.get("answer_type", "")) not in kinds:
            yield idx, Skip("answer_type_filtered")
            continue
        answer = rec.get("answer")
        if blank(answer):
            yield idx, Reject("missing_answer", "answer is empty", rec)
            continue
        img = rec.get("img_name")
        if blank(img):
            yield idx, Reject("image_missing", "img_name is empty", rec)
            continue
        location = str(rec.get("location") or "").strip().lower()
        yield idx, {
            "id": rec.get("qid"), "question": as_text(rec.get("question")), "options": [],
            "answer": str(answer).strip(), "images": [locate_image(str(img), spec, ("imgs",))],
            "modality": spec.modality or _SLAKE_MODALITY.get(str(rec.get("modality") or "").strip().lower()),
            "anatomy": spec.anatomy or _SLAKE_ANATOMY.get(location),
            "meta": clean_meta(rec, ["img_id", "img_name", "q_lang", "location", "modality",
                                     "answer_type", "base_type", "content_type", "triple"]),
        }


# --------------------------------------------------------------------------- MMMU-Pro

HEALTH_SUBJECTS = ("Basic Medical Science", "Clinical Medicine", "Diagnostics and Laboratory Medicine",
                   "Pharmacy", "Public Health")
_VISION_QUESTION = "Answer the multiple-choice question shown in the image."


def _literal_list(value: Any) -> list[Any] | None:
    """A list stored as Python-literal or JSON text (MMMU keeps `options` that way)."""
    if isinstance(value, list | tuple):
        return list(value)
    if not isinstance(value, str):
        return None
    for parse in (ast.literal_eval, json.loads):
        try:
            out = parse(value)
        except (ValueError, SyntaxError, TypeError):
            continue
        if isinstance(out, list | tuple):
            return list(out)
    return None


@register("mmmu_pro", task="mm_reasoning", hub_id="MMMU/MMMU_Pro",
          description="MMMU-Pro (configs 'standard (10 options)', 'standard (4 options)', vision),"
                      " health subjects by default",
          needs="a HF dataset folder / Parquet of an MMMU-Pro config (images in image_1..image_7,"
                " or `image` for the vision config)",
          options={"subjects": "health (default: " + ", ".join(HEALTH_SUBJECTS) + "), all, or a list"
                               " of subjects; other rows are skipped (counted)",
                   "subset": "alias of subjects (health | all)",
                   "vision_question": "question text for the vision config, whose question is"
                                      " inside the image"})
@ids_from(lambda r: r.get("id"))
def mmmu_pro(spec: SourceSpec) -> RawStream:
    """MMMU-Pro rows: question with <image N> tags, options literal list, image_1..7, answer letter."""
    check_options(spec, ["subjects", "subset", "vision_question"])
    chosen = spec.options.get("subjects", spec.options.get("subset"))
    if isinstance(chosen, str) and norm_key(chosen) == "health":
        chosen = list(HEALTH_SUBJECTS)
    wanted = choice_filter(chosen, list(HEALTH_SUBJECTS))
    vision_q = str(spec.options.get("vision_question", _VISION_QUESTION))
    for idx, rec in records(spec):
        if isinstance(rec, Reject):
            yield idx, rec
            continue
        if wanted is not None and norm_key(rec.get("subject", "")) not in wanted:
            yield idx, Skip("subject_filtered")
            continue
        raw_opts = _literal_list(rec.get("options"))
        if raw_opts is None:
            yield idx, Reject("bad_options", "options is not a list (or its literal text)", rec)
            continue
        options = positional_options(raw_opts)
        if isinstance(options, str):
            yield idx, Reject("bad_options", options, rec)
            continue
        letter = answer_to_letter(rec.get("answer"), options, "letter")
        if letter is None:
            yield idx, reject_answer(rec.get("answer"), len(options), rec, "answer")
            continue
        images = [rec[f"image_{k}"] for k in range(1, 8) if rec.get(f"image_{k}") is not None]
        if "question" not in rec and rec.get("image") is not None:  # the vision config
            images = [rec["image"]]
        if not images:
            yield idx, Reject("image_missing", "no image_1..image_7 (or image) value", rec)
            continue
        question = as_text(rec.get("question")) if "question" in rec else vision_q
        meta = clean_meta(rec, ["subject", "img_type", "topic_difficulty"])
        if not blank(rec.get("explanation")):
            meta["explanation"] = str(rec["explanation"])
        yield idx, {"id": rec.get("id"), "question": question, "options": options,
                    "answer": letter, "images": images, "meta": meta}


__all__ = ["locate_image", "HEALTH_SUBJECTS"]
