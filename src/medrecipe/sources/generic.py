"""Generic adapter: JSONL / JSON / CSV / Parquet / Hugging Face datasets with a field mapping.

The recipe maps Item fields to source columns:

    mapping: {id: qid, question: stem, options: "opa,opb,opc,opd", answer: cop, images: img}
    options: {answer_format: index0}   # letter | index0 | index1 | text | auto

`options` may name one column (a list, a letter-keyed dict, or a list literal) or several
comma-separated columns. Columns not mapped can be kept in `meta` with `mapping.meta: a,b`.
Without a mapping, records already in Item shape (id, question, options, answer, ...) load as is.
"""

from __future__ import annotations

from typing import Any

from medrecipe.config import SourceSpec
from medrecipe.sources import register
from medrecipe.sources.base import (
    RawStream,
    Reject,
    answer_to_letter,
    clean_meta,
    enumerate_records,
    options_from,
)

_ITEM_FIELDS = ("id", "question", "options", "answer", "images", "task", "split", "modality",
                "anatomy")


def _get(rec: dict[str, Any], column: str) -> Any:
    """Value of a column, allowing dotted paths into nested dicts (`meta.answer`)."""
    cur: Any = rec
    for part in column.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def map_record(rec: dict[str, Any], spec: SourceSpec) -> dict[str, Any] | Reject:
    """One raw record -> Item fields, using the spec's mapping and answer format."""
    mapping = spec.mapping
    fmt = str(spec.options.get("answer_format", "auto"))
    out: dict[str, Any] = {}
    for field in _ITEM_FIELDS:
        col = mapping.get(field, field)
        if field == "options" and "," in col:
            out["options"] = options_from([_get(rec, c.strip()) for c in col.split(",")])
            continue
        val = _get(rec, col)
        if val is not None:
            out[field] = val
    out["options"] = options_from(out.get("options"))
    imgs = out.get("images")
    if imgs is not None and not isinstance(imgs, list):
        out["images"] = [imgs] if imgs != "" else []
    question = out.get("question")
    out["question"] = "" if question is None else str(question)
    ans = out.get("answer")
    if ans is None or str(ans).strip() == "":
        return Reject("missing_answer", "the answer field is empty", rec)
    if out["options"]:
        letter = answer_to_letter(ans, out["options"], fmt)
        if letter is None:
            return Reject("answer_not_in_options",
                          f"answer {ans!r} is not a letter, index or text of the "
                          f"{len(out['options'])} options", rec)
        out["answer"] = letter
    else:
        out["answer"] = str(ans)
    meta_cols = mapping.get("meta")
    meta = dict(rec.get("meta") or {}) if isinstance(rec.get("meta"), dict) and not meta_cols else {}
    if meta_cols:
        meta.update(clean_meta(rec, [c.strip() for c in meta_cols.split(",")]))
    out["meta"] = meta
    return out


@register("generic", description="Any JSONL / JSON / CSV / Parquet / HF dataset with a field mapping",
          needs="a file (jsonl, json, csv, parquet), a save_to_disk folder, or a hub id",
          options={"answer_format": "letter | index0 | index1 | text | auto (default)"})
def generic(spec: SourceSpec) -> RawStream:
    """Raw rows of a generic source."""
    for idx, rec in enumerate_records(spec):
        if "__reject__" in rec:
            yield idx, rec["__reject__"]
            continue
        yield idx, map_record(rec, spec)
