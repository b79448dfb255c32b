"""Checklists for OpenMedReason-Bench: atomic units written by a judge from the reference trace.

Input: an item's question, options, answer and reference trace
(``meta.reference_trace``). The reference trace is either a mapping of named sections
(``perception``, ``interpretation`` / ``knowledge``, ``justification``, shown to the judge
in that order, other names after them) or one string used whole.

Output: a checklist, units on exactly one axis each (perception, knowledge, rationale),
every unit with a ``topic`` (what it is about, without its conclusion: the presence
probe asks about it) and a ``claim`` (one sentence: the correctness probe checks it).
The reply is validated against the schema; on top of the prompt's rules, code drops
units that repeat another unit or only restate the stem or an option (counted).

Every model must be scored on the same checklist, so a checklist is built once per
(item content, judge model, template) and kept in a checklist store shared by runs
(append-only JSONL, fsync per line); a later run, with any model under test, reads it
from there without a request. An item that already carries ``meta.checklist`` uses it.
The checklist used is written into the run's item table (``meta.checklist``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medrecipe.evaluate.judging import JudgeClient, parse_json_reply, reply_text, without_images
from medrecipe.schema import Item, QuarantineRow

SECTION_ORDER = ("perception", "interpretation", "knowledge", "clinical_interpretation",
                 "justification", "answer_justification", "rationale")


class ChecklistUnit(BaseModel):
    """One atomic unit of a checklist."""

    model_config = ConfigDict(extra="forbid")

    axis: Literal["perception", "knowledge", "rationale"]
    topic: str = Field(min_length=1, max_length=300)
    claim: str = Field(min_length=1, max_length=1000)


class Checklist(BaseModel):
    """The judge's reply: the units of one item's checklist."""

    model_config = ConfigDict(extra="forbid")

    units: list[ChecklistUnit] = Field(min_length=1, max_length=80)


def reference_sections(item: Item) -> list[tuple[str, str]]:
    """The item's reference trace as (section name, text) pairs; empty when it has none."""
    ref = (item.meta or {}).get("reference_trace")
    if isinstance(ref, str):
        return [("reference", ref.strip())] if ref.strip() else []
    if not isinstance(ref, dict):
        return []
    rank = {name: i for i, name in enumerate(SECTION_ORDER)}
    names = sorted((k for k, v in ref.items() if isinstance(v, str) and v.strip()),
                   key=lambda k: (rank.get(k, len(rank)), list(ref).index(k)))
    return [(k, ref[k].strip()) for k in names]


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def clean_units(units: Sequence[ChecklistUnit], item: Item) -> tuple[list[ChecklistUnit], Counter]:
    """Units without repeats or restatements of the stem / an option, and why the others went."""
    stem = _norm(item.question)
    options = {_norm(o) for o in item.options}
    kept: list[ChecklistUnit] = []
    seen: set[str] = set()
    dropped: Counter = Counter()
    for u in units:
        claim = _norm(u.claim)
        if not claim:
            dropped["empty"] += 1
        elif claim in seen:
            dropped["duplicate"] += 1
        elif claim in options or (len(claim) >= 12 and claim in stem):
            dropped["restates_stem_or_option"] += 1
        else:
            seen.add(claim)
            kept.append(u)
    return kept, dropped


def item_key(item: Item) -> str:
    """Content key of what a checklist is built from (question, options, answer, reference trace)."""
    blob = json.dumps([item.id, item.question, list(item.options), item.answer,
                       reference_sections(item)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def units_hash(units: Sequence[ChecklistUnit]) -> str:
    """Hash of a checklist's units (equal hashes: the same checklist)."""
    blob = json.dumps([u.model_dump() for u in units], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class ItemChecklist:
    """The checklist one item is scored on, and where it came from."""

    item_id: str
    units: list[ChecklistUnit]
    origin: str  # "item" (meta.checklist), "store" or "judge"
    judge: str | None = None
    template_hash: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return units_hash(self.units)

    def meta(self) -> dict[str, Any]:
        """What is stored in the item's ``meta.checklist``."""
        return {"units": [u.model_dump() for u in self.units], "judge": self.judge,
                "template_hash": self.template_hash, "hash": self.hash}


class ChecklistStore:
    """Checklists shared between runs: one JSONL line per (item content, judge model, template)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._entries: dict[tuple[str, str, str], dict[str, Any]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash; the next build rewrites it
                    self._entries[(rec["key"], rec["judge"], rec["template_hash"])] = rec

    def get(self, key: str, judge: str, template_hash: str) -> list[ChecklistUnit] | None:
        """The stored units, or None."""
        rec = self._entries.get((key, judge, template_hash))
        if rec is None:
            return None
        try:
            return Checklist.model_validate({"units": rec["units"]}).units
        except ValidationError:
            return None

    def put(self, key: str, judge: str, template_hash: str, item_id: str,
            units: Sequence[ChecklistUnit]) -> None:
        """Append one checklist and flush it to disk before returning."""
        rec = {"key": key, "judge": judge, "template_hash": template_hash, "item_id": item_id,
               "units": [u.model_dump() for u in units], "at": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._entries[(key, judge, template_hash)] = rec


def store_path(folder: str | Path, judge_model: str) -> Path:
    """The store file of one judge model inside a checklist folder."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", judge_model).strip("_") or "judge"
    return Path(folder) / f"{slug}.jsonl"


@dataclass
class ChecklistBuild:
    """Checklists of a benchmark's items, with what could not be built."""

    checklists: dict[str, ItemChecklist]
    quarantine: list[QuarantineRow]
    counts: Counter


def _from_item(item: Item) -> ItemChecklist | None:
    given = (item.meta or {}).get("checklist")
    if not isinstance(given, dict):
        return None
    try:
        units = Checklist.model_validate({"units": given.get("units")}).units
    except ValidationError:
        return None
    return ItemChecklist(item.id, units, "item", judge=given.get("judge"),
                         template_hash=given.get("template_hash"))


def build_checklists(items: Sequence[Item], judge: JudgeClient, template: Any,
                     store: ChecklistStore, *, stage: str = "trace_checklist",
                     max_tokens: int = 2048) -> ChecklistBuild:
    """One checklist per item: from the item, the shared store, or the judge (then stored)."""
    counts: Counter = Counter()
    out: dict[str, ItemChecklist] = {}
    quarantine: list[QuarantineRow] = []
    todo: list[tuple[Item, str]] = []
    model = judge.cfg.model
    for item in items:
        given = _from_item(item)
        if given is not None:
            out[item.id] = given
            counts["from_item"] += 1
            continue
        if "checklist" in (item.meta or {}):
            counts["invalid_item_checklist"] += 1  # not trusted: rebuilt from the reference trace
        if not reference_sections(item):
            counts["no_reference_trace"] += 1
            quarantine.append(QuarantineRow(stage=stage, source=item.source, item_id=item.id,
                                            reason="no_reference_trace",
                                            detail="meta.reference_trace is missing or empty"))
            continue
        key = item_key(item)
        stored = store.get(key, model, template.hash)
        if stored is not None:
            out[item.id] = ItemChecklist(item.id, stored, "store", judge=model,
                                         template_hash=template.hash)
            counts["from_store"] += 1
            continue
        todo.append((item, key))
    if todo:
        sampling = judge.sampling(max_tokens=max_tokens, schema=("checklist", Checklist))
        prompts = [(f"{it.id}#checklist", template.render(without_images(it),
                                                          sections=reference_sections(it),
                                                          answer_text=it.answer_text))
                   for it, _ in todo]
        gens = judge.ask(prompts, template=template, sampling=sampling)
        for (item, key), gen in zip(todo, gens, strict=True):
            text = reply_text(gen)
            if text is None:
                counts["judge_failed"] += 1
                quarantine.append(QuarantineRow(
                    stage=stage, source=item.source, item_id=item.id, reason="checklist_failed",
                    detail=(gen.error if gen is not None else "not launched (budget)") or ""))
                continue
            parsed = parse_json_reply(text, Checklist)
            if parsed is None:
                counts["unparsed"] += 1
                quarantine.append(QuarantineRow(stage=stage, source=item.source, item_id=item.id,
                                                reason="checklist_unparsed", raw=text[:2000],
                                                detail="the judge's reply is not a valid checklist"))
                continue
            units, dropped = clean_units(parsed.units, item)
            counts.update({f"dropped_{k}": v for k, v in dropped.items()})
            if not units:
                counts["empty"] += 1
                quarantine.append(QuarantineRow(stage=stage, source=item.source, item_id=item.id,
                                                reason="checklist_empty", raw=text[:2000],
                                                detail="no unit left after dropping restatements"))
                continue
            store.put(key, model, template.hash, item.id, units)
            out[item.id] = ItemChecklist(item.id, units, "judge", judge=model,
                                         template_hash=template.hash, dropped=dict(dropped))
            counts["from_judge"] += 1
    return ChecklistBuild(out, quarantine, counts)


def checklists_hash(checklists: dict[str, ItemChecklist]) -> str:
    """One hash over a benchmark's checklists: two runs with equal hashes used the same ones."""
    blob = json.dumps(sorted((k, c.hash) for k, c in checklists.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


__all__ = ["Checklist", "ChecklistBuild", "ChecklistStore", "ChecklistUnit", "ItemChecklist",
           "build_checklists", "checklists_hash", "clean_units", "item_key",
           "reference_sections", "store_path", "units_hash"]
