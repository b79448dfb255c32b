"""Text-only multiple-choice exams: MedQA, MedMCQA, HeadQA, MMLU-Pro (health), MedXpertQA.

Field names follow the public Hugging Face copies (see shared/datasets.md).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from medrecipe.config import SourceSpec
from medrecipe.errors import SourceError
from medrecipe.schema import LETTERS
from medrecipe.sources import register
from medrecipe.sources.base import (
    RawStream,
    Reject,
    Skip,
    answer_to_letter,
    as_text,
    clean_meta,
    enumerate_records,
    is_blank,
    keep_positions,
    norm_text,
    options_from,
)

blank = is_blank  # the adapters' short name

# --------------------------------------------------------------------------- shared helpers
# (also used by the multimodal adapters in vqa.py and imagefolder.py)


def records(spec: SourceSpec) -> Iterator[tuple[int, dict[str, Any] | Reject]]:
    """(row_index, record) pairs; a malformed line comes back as its Reject."""
    for idx, rec in enumerate_records(spec):
        yield idx, rec["__reject__"] if "__reject__" in rec else rec


def check_options(spec: SourceSpec, allowed: Iterable[str]) -> None:
    """Raise SourceError naming any adapter option the adapter does not know."""
    allowed = set(allowed)
    unknown = sorted(set(spec.options) - allowed)
    if unknown:
        raise SourceError(
            f"source {spec.name!r}: adapter {spec.adapter!r} has no option(s) {', '.join(unknown)};"
            f" it takes: {', '.join(sorted(allowed)) or 'none'}")


def choice_filter(value: Any, default: Any) -> set[str] | None:
    """A filter option as a set of lower-case values; None (no filter) for 'all' / '*'."""
    if value is None:
        value = default
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    out = {" ".join(str(v).replace("_", " ").lower().split()) for v in values}
    return None if out & {"all", "*"} else out


def flag(value: Any) -> bool:
    """A yes/no option given as a bool or as text such as "false" / "no" / "0"."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "0", "off", "")
    return bool(value)


def norm_key(value: Any) -> str:
    """Lower-case text with underscores read as spaces, for comparing category names."""
    return " ".join(str(value).replace("_", " ").lower().split())


def positional_options(values: list[Any], *, drop_trailing_blank: bool = False) -> list[str] | str:
    """Option texts kept in position (answers are positional); an error message when none.

    A blank option in the middle stays as "" so the row is quarantined as `blank_option`
    (dropping it would shift the letters of every later option); trailing blanks are
    dropped only with `drop_trailing_blank`, which moves no letter.
    """
    vals = keep_positions(list(values)) if drop_trailing_blank else [
        "" if blank(v) else str(v) for v in values]
    if not vals:
        return "no options"
    return [v.strip() for v in vals]


def lettered_options(value: Any) -> list[str] | str:
    """Options from a dict keyed A, B, C, ... (or its JSON text); an error message if malformed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return "options is not a JSON object"
    if not isinstance(value, dict) or not value:
        return "options is not a dict keyed by letters"
    keys = sorted(str(k).strip().upper() for k in value)
    by_key = {str(k).strip().upper(): v for k, v in value.items()}
    if keys != list(LETTERS[:len(keys)]):
        return f"option keys {keys} are not consecutive letters from A"
    return positional_options([by_key[k] for k in keys], drop_trailing_blank=True)


def reject_answer(value: Any, n_options: int, rec: Any, field: str) -> Reject:
    """missing_answer or answer_not_in_options for an answer value that gave no letter."""
    if blank(value):
        return Reject("missing_answer", f"{field} is empty", rec)
    return Reject("answer_not_in_options",
                  f"{field}={value!r} does not name one of the {n_options} options", rec)


def ids_from(native_id: Callable[[dict[str, Any]], Any]):
    """Decorator: give an adapter's rejected rows their item id (when the row has one)."""

    def deco(fn: Callable[[SourceSpec], RawStream]) -> Callable[[SourceSpec], RawStream]:
        @functools.wraps(fn)
        def wrapper(spec: SourceSpec) -> RawStream:
            for idx, raw in fn(spec):
                if isinstance(raw, Reject) and raw.item_id is None and isinstance(raw.raw, dict):
                    try:
                        nid = native_id(raw.raw)
                    except (TypeError, ValueError, KeyError):
                        nid = None
                    if not blank(nid):
                        raw.item_id = f"{spec.name}/{nid}"
                yield idx, raw

        return wrapper

    return deco


def _headqa_id(rec: dict[str, Any]) -> Any:
    # qid numbers restart in every exam, so the exam name is part of the id.
    return f"{rec.get('name')}-{rec.get('qid')}" if not blank(rec.get("name")) else rec.get("qid")


# --------------------------------------------------------------------------- MedQA


@register("medqa", task="text", hub_id="GBaker/MedQA-USMLE-4-options",
          description="MedQA (USMLE) 4- or 5-option; also the `-hf` mirror (sent1, ending0..3, label)",
          needs="a JSONL/Parquet file or HF dataset folder of MedQA rows")
@ids_from(lambda r: r.get("id"))
def medqa(spec: SourceSpec) -> RawStream:
    """MedQA rows: question, options dict A-E, answer_idx letter (or the -hf mirror layout)."""
    for idx, rec in enumerate_records(spec):
        if "__reject__" in rec:
            yield idx, rec["__reject__"]
            continue
        if "sent1" in rec:  # the "-4-options-hf" mirror
            options = options_from([rec.get(f"ending{i}") for i in range(5) if f"ending{i}" in rec])
            letter = answer_to_letter(rec.get("label"), options, "index0")
            question = as_text(rec.get("sent1"))
            native_id = rec.get("id")
        else:
            raw_opts = rec.get("options")
            if isinstance(raw_opts, list) and raw_opts and \
                    all(isinstance(o, dict) and "key" in o for o in raw_opts):
                raw_opts = {o["key"]: o.get("value") for o in raw_opts}  # [{key, value}] copies
            # Letter-keyed options keep their positions: a blank one is an error, not a shift.
            options = lettered_options(raw_opts) if isinstance(raw_opts, dict) else options_from(raw_opts)
            if isinstance(options, str):
                yield idx, Reject("bad_options", options, rec)
                continue
            letter = answer_to_letter(rec.get("answer_idx"), options, "letter")
            if letter is None and rec.get("answer") is not None:
                letter = answer_to_letter(rec.get("answer"), options, "text")
            question = as_text(rec.get("question"))
            native_id = rec.get("id")
        if letter is None:
            reason = "missing_answer" if rec.get("answer_idx") in (None, "") and rec.get("label") in (None, "") \
                and not rec.get("answer") else "answer_not_in_options"
            yield idx, Reject(reason, f"answer_idx={rec.get('answer_idx')!r} "
                                      f"answer={rec.get('answer')!r}", rec)
            continue
        yield idx, {"id": native_id, "question": question, "options": options, "answer": letter,
                    "meta": clean_meta(rec, ["meta_info", "metamap_phrases"])}


# --------------------------------------------------------------------------- MedMCQA

_MEDMCQA_OPTS = ("opa", "opb", "opc", "opd")


@register("medmcqa", task="text", hub_id="openlifescienceai/medmcqa",
          description="MedMCQA (Indian medical entrance exams), 4 options opa..opd, cop 0-3",
          needs="a HF dataset folder / Parquet / JSONL of MedMCQA rows (test answers are hidden:"
                " use the validation split)",
          options={"answer_base": "0 (default: cop is 0-3, the HF copies) or 1 (cop 1-4, the"
                                  " original JSON release)"})
@ids_from(lambda r: r.get("id"))
def medmcqa(spec: SourceSpec) -> RawStream:
    """MedMCQA rows: question, opa..opd, cop (correct option index); cop -1 means no answer."""
    check_options(spec, ["answer_base"])
    base = int(spec.options.get("answer_base", 0))
    if base not in (0, 1):
        raise SourceError(f"source {spec.name!r}: answer_base must be 0 or 1, not {base}")
    for idx, rec in records(spec):
        if isinstance(rec, Reject):
            yield idx, rec
            continue
        options = positional_options([rec.get(k) for k in _MEDMCQA_OPTS])
        if isinstance(options, str):
            yield idx, Reject("bad_options", options, rec)
            continue
        cop = rec.get("cop")
        try:
            cop_int = None if blank(cop) else int(cop)
        except (TypeError, ValueError):
            cop_int = None
        if blank(cop) or (cop_int is not None and cop_int < 0):
            # The public test split carries cop = -1: there is no answer to learn from.
            yield idx, Reject("missing_answer", f"cop={cop!r} (no answer given)", rec)
            continue
        letter = answer_to_letter(cop_int, options, "index1" if base else "index0")
        if letter is None:
            yield idx, reject_answer(cop, len(options), rec, "cop")
            continue
        yield idx, {"id": rec.get("id"), "question": as_text(rec.get("question")),
                    "options": options, "answer": letter,
                    "meta": clean_meta(rec, ["choice_type", "subject_name", "topic_name", "exp"])}


# --------------------------------------------------------------------------- HeadQA


def _headqa_answers(value: Any) -> list[dict[str, Any]]:
    """`answers` as a list of {aid, atext}, whether stored as a list of structs or a struct of lists."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return []
    if isinstance(value, dict):  # datasets' Sequence({...}) gives a dict of lists
        return [{"aid": a, "atext": t} for a, t in zip(value.get("aid") or [], value.get("atext") or [],
                                                   strict=False)]
    return [a for a in (value or []) if isinstance(a, dict)]


def _has_image(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value.get("bytes") or value.get("path"))
    return not blank(value) if isinstance(value, str) else value is not None


@register("headqa", hub_id="EleutherAI/headqa",
          description="HEAD-QA (Spanish healthcare specialisation exams; configs en / es); text,"
                      " or mm_reasoning for the few questions that carry an image",
          needs="a HF dataset folder / Parquet / JSONL of HEAD-QA rows (name, qid, qtext, ra, answers)",
          options={"images": "keep (default: image questions become mm_reasoning) | skip (leave"
                             " them out, counted as skipped)"})
@ids_from(_headqa_id)
def headqa(spec: SourceSpec) -> RawStream:
    """HEAD-QA rows: qtext, answers [{aid, atext}], ra = the aid of the correct answer (1-based)."""
    from medrecipe.sources.vqa import locate_image

    check_options(spec, ["images"])
    keep_images = str(spec.options.get("images", "keep")).lower()
    if keep_images not in ("keep", "skip"):
        raise SourceError(f"source {spec.name!r}: option images must be keep or skip")
    for idx, rec in records(spec):
        if isinstance(rec, Reject):
            yield idx, rec
            continue
        answers = _headqa_answers(rec.get("answers"))
        try:
            answers = sorted(answers, key=lambda a: int(a.get("aid")))
        except (TypeError, ValueError):
            yield idx, Reject("bad_options", "an answer has no integer aid", rec)
            continue
        options = positional_options([a.get("atext") for a in answers])
        if isinstance(options, str):
            yield idx, Reject("bad_options", options, rec)
            continue
        ra = rec.get("ra")
        hits = [i for i, a in enumerate(answers) if not blank(ra) and str(a.get("aid")) == str(ra).strip()]
        if len(hits) != 1:
            yield idx, reject_answer(ra, len(options), rec, "ra")
            continue
        image = rec.get("image")
        has_image = _has_image(image)
        if has_image and keep_images == "skip":
            yield idx, Skip("has_image")
            continue
        yield idx, {"id": _headqa_id(rec), "question": as_text(rec.get("qtext")), "options": options,
                    "answer": LETTERS[hits[0]],
                    "images": [locate_image(image, spec)] if has_image else [],
                    "task": "mm_reasoning" if has_image else "text",
                    "meta": clean_meta(rec, ["name", "year", "category", "qid"])}


# --------------------------------------------------------------------------- MMLU-Pro


@register("mmlu_pro", task="text", hub_id="TIGER-Lab/MMLU-Pro",
          description="MMLU-Pro (up to 10 options), filtered to one or more categories (default health)",
          needs="a HF dataset folder / Parquet / JSONL of MMLU-Pro rows",
          options={"category": "a category or list of them (default health); all keeps every row."
                               " Other rows are skipped (counted), not quarantined"})
@ids_from(lambda r: r.get("question_id"))
def mmlu_pro(spec: SourceSpec) -> RawStream:
    """MMLU-Pro rows: question, options list, answer letter (answer_index as a fallback)."""
    check_options(spec, ["category"])
    wanted = choice_filter(spec.options.get("category"), "health")
    for idx, rec in records(spec):
        if isinstance(rec, Reject):
            yield idx, rec
            continue
        if wanted is not None and norm_key(rec.get("category", "")) not in wanted:
            yield idx, Skip("category_filtered")
            continue
        raw_opts = rec.get("options")
        if isinstance(raw_opts, str):
            raw_opts = options_from(raw_opts)
        raw_opts = list(raw_opts or [])
        options = positional_options(raw_opts)
        if isinstance(options, str):
            yield idx, Reject("bad_options", options, rec)
            continue
        by_letter = answer_to_letter(rec.get("answer"), options, "letter")
        by_index = answer_to_letter(rec.get("answer_index"), options, "index0")
        if by_letter and by_index and by_letter != by_index:
            yield idx, Reject("conflicting_answer", f"answer={rec.get('answer')!r} but "
                                                    f"answer_index={rec.get('answer_index')!r}", rec)
            continue
        letter = by_letter or by_index
        if letter is None:
            value = rec.get("answer") if not blank(rec.get("answer")) else rec.get("answer_index")
            yield idx, reject_answer(value, len(options), rec, "answer")
            continue
        meta = clean_meta(rec, ["category", "src"])
        if not blank(rec.get("cot_content")):
            meta["cot_content"] = str(rec["cot_content"])
        yield idx, {"id": rec.get("question_id"), "question": as_text(rec.get("question")),
                    "options": options, "answer": letter, "meta": meta}


# --------------------------------------------------------------------------- MedXpertQA

_CHOICES_MARK = re.compile(r"Answer Choices:\s*", re.IGNORECASE)
_CHOICE_TAG = re.compile(r"\(([A-Z])\)\s*")


def strip_embedded_choices(question: str, options: list[str]) -> str | None:
    """The question without its trailing "Answer Choices: (A) .. (B) .." block, or None.

    Only a block that repeats exactly the given options, in order, is removed; anything
    else leaves the question untouched (None).
    """
    marks = list(_CHOICES_MARK.finditer(question))
    if not marks or not options:
        return None
    start, tail = marks[-1].start(), question[marks[-1].end():]
    stem = question[:start].rstrip()
    if not stem:
        return None
    expected = " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    if " ".join(tail.split()) == " ".join(expected.split()):
        return stem
    # Tolerate differences in spacing, case or final full stops, but nothing more.
    parts = _CHOICE_TAG.split(tail)
    if parts[0].strip() or len(parts) != 1 + 2 * len(options):
        return None
    letters, texts = parts[1::2], parts[2::2]
    if letters != list(LETTERS[:len(options)]):
        return None
    if all(norm_text(t) == norm_text(o) for t, o in zip(texts, options, strict=True)):
        return stem
    return None


@register("medxpertqa", hub_id="TsinghuaC3I/MedXpertQA",
          description="MedXpertQA: config Text (10 options, task text) or MM (5 options + images,"
                      " task mm_reasoning)",
          needs="a JSONL / HF folder of MedXpertQA rows; for MM set image_root to the unzipped"
                " images folder",
          options={"strip_choices": "true (default): remove the 'Answer Choices: (A) ...' block"
                                    " from the question when it repeats the options"})
@ids_from(lambda r: r.get("id"))
def medxpertqa(spec: SourceSpec) -> RawStream:
    """MedXpertQA rows: question (choices embedded), options dict, label letter, images (MM)."""
    from medrecipe.sources.vqa import locate_image

    check_options(spec, ["strip_choices"])
    strip = flag(spec.options.get("strip_choices", True))
    for idx, rec in records(spec):
        if isinstance(rec, Reject):
            yield idx, rec
            continue
        options = lettered_options(rec.get("options"))
        if isinstance(options, str):
            yield idx, Reject("bad_options", options, rec)
            continue
        letter = answer_to_letter(rec.get("label"), options, "letter")
        if letter is None:
            yield idx, reject_answer(rec.get("label"), len(options), rec, "label")
            continue
        names = rec.get("images") or []
        if isinstance(names, str):
            names = [names]
        if any(blank(n) for n in names):
            yield idx, Reject("image_missing", "an entry of images is empty", rec)
            continue
        question = as_text(rec.get("question"))
        meta = clean_meta(rec, ["medical_task", "body_system", "question_type"])
        stripped = strip_embedded_choices(question, options) if strip else None
        if stripped is not None:
            question = stripped
        elif _CHOICES_MARK.search(question):
            meta["choices_in_question"] = True  # prompt builders should not list them twice
        yield idx, {"id": rec.get("id"), "question": question, "options": options, "answer": letter,
                    "images": [locate_image(n, spec, ("images",)) for n in names],
                    "task": "mm_reasoning" if names else "text", "meta": meta}
