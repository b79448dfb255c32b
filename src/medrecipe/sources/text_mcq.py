"""Text-only multiple-choice exams: MedQA, MedMCQA, HeadQA, MMLU-Pro (health), MedXpertQA.

Field names follow the public Hugging Face copies (see shared/datasets.md).
"""

from __future__ import annotations

from medrecipe.config import SourceSpec
from medrecipe.sources import register
from medrecipe.sources.base import (
    RawStream,
    Reject,
    answer_to_letter,
    as_text,
    clean_meta,
    enumerate_records,
    options_from,
)


@register("medqa", task="text", hub_id="GBaker/MedQA-USMLE-4-options",
          description="MedQA (USMLE) 4- or 5-option; also the `-hf` mirror (sent1, ending0..3, label)",
          needs="a JSONL/Parquet file or HF dataset folder of MedQA rows")
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
            options = options_from(rec.get("options"))
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
