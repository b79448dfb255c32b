"""Model-assisted steps built on the engine: difficulty ratings, open-answer judging, labelling.

Each sends one request per item through the same cached, rate-limited engine as the
teachers, so re-running a recipe never pays for a judgement twice. Replies are parsed
strictly: a rating, verdict or label that cannot be read is recorded as missing and
counted, never guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from medrecipe.config import SamplingConfig, TeacherConfig
from medrecipe.images import ImageStore
from medrecipe.schema import ITEM_SCHEMA, Item, items_from_table, to_table

MODALITIES = ("ct", "mri", "x-ray", "ultrasound", "pathology", "dermoscopy", "fundus",
              "endoscopy", "mammography", "nuclear medicine", "ecg", "clinical photo",
              "microscopy", "diagram", "other")
ANATOMIES = ("brain", "head and neck", "chest", "heart", "breast", "abdomen", "liver", "kidney",
             "pelvis", "spine", "musculoskeletal", "skin", "eye", "gastrointestinal", "blood",
             "whole body", "other")

_RATING = re.compile(r"<rating>\s*(\d{1,2})\s*</rating>", re.IGNORECASE)
_VERDICT = re.compile(r"<verdict>\s*(correct|incorrect)\s*</verdict>", re.IGNORECASE)
_JSON_OBJ = re.compile(r"\{.*\}", re.DOTALL)
_CHOICE = re.compile(r"<choice>\s*([^<]*?)\s*</choice>", re.IGNORECASE)

# Judgements should be reproducible: greedy decoding, short replies.
JUDGE_SAMPLING = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=512, seed=0)


def parse_rating(text: str | None) -> int | None:
    """The last <rating>N</rating> with 1 <= N <= 10, else None."""
    found = _RATING.findall(text or "")
    if not found:
        return None
    value = int(found[-1])
    return value if 1 <= value <= 10 else None


def parse_verdict(text: str | None) -> bool | None:
    """True / False from the last <verdict> tag, None when there is none."""
    found = _VERDICT.findall(text or "")
    return None if not found else found[-1].lower() == "correct"


def parse_choice(text: str | None, n_options: int) -> str | None:
    """The option letter or "NONE" a reading reply gives, else None (unparseable).

    Strict: exactly one <choice>...</choice> tag (or a reply that is nothing but the
    token) holding one letter among the item's options, or NONE.
    """
    from medrecipe.answers import CHOICE_NONE
    from medrecipe.schema import LETTERS

    t = (text or "").strip()
    tags = _CHOICE.findall(t)
    if len(tags) > 1:
        return None
    token = (tags[0] if tags else t).strip().strip("*").strip()
    if token.upper() == CHOICE_NONE:
        return CHOICE_NONE
    if len(token) == 1 and token.upper() in LETTERS[:n_options]:
        return token.upper()
    return None


def parse_labels(text: str | None, modalities=MODALITIES, anatomies=ANATOMIES) -> dict[str, str | None]:
    """{"modality", "anatomy"} from a JSON reply; values outside the vocabulary become None."""
    out: dict[str, str | None] = {"modality": None, "anatomy": None}
    m = _JSON_OBJ.search(text or "")
    if not m:
        return out
    try:
        data = json.loads(m.group(0))
    except json.JSONDecodeError:
        return out
    if not isinstance(data, dict):
        return out
    for key, vocab in (("modality", modalities), ("anatomy", anatomies)):
        v = str(data.get(key, "")).strip().lower()
        out[key] = v if v in vocab else None
    return out


@dataclass
class JudgeRun:
    """Results of one batch of judge requests, with what could not be parsed."""

    values: dict[str, object] = field(default_factory=dict)
    unparsed: int = 0
    failed: int = 0
    spend_usd: float = 0.0
    complete: bool = True


def _ask(items: list[Item], judge: str, teachers: Mapping[str, TeacherConfig], template: str,
         cache_dir: str | Path, images: ImageStore | None, *, progress: bool | None,
         backends=None, extra_for=None, sampling: SamplingConfig | None = None,
         description: str = "judge", budget_usd: float | None = None):
    from medrecipe.generate import Engine, GenRequest
    from medrecipe.prompts import load_template

    tpl = load_template(template)
    reqs = [GenRequest(item_id=it.id, teacher=judge, n=1, source=it.source, template=tpl.name,
                       template_hash=tpl.hash, sampling=sampling or JUDGE_SAMPLING,
                       messages=tpl.render(it, **(extra_for(it) if extra_for else {})))
            for it in items]
    engine = Engine(teachers, cache_dir, images=images, progress=progress, backends=backends,
                    description=description, budget_usd=budget_usd)
    return engine.run(reqs)


def rate_difficulty(items: pa.Table, judge: str, teachers: Mapping[str, TeacherConfig],
                    template: str, cache_dir: str | Path, images: ImageStore | None = None,
                    *, progress: bool | None = None, backends=None) -> JudgeRun:
    """Difficulty 1-10 per item id from a judge teacher (unparsed replies are left out)."""
    its = items_from_table(items)
    res = _ask(its, judge, teachers, template, cache_dir, images, progress=progress,
               backends=backends, description="difficulty")
    out = JudgeRun(spend_usd=res.spend_usd, complete=res.complete)
    for g in res.generations:
        if g.error:
            out.failed += 1
            continue
        r = parse_rating(g.text)
        if r is None:
            out.unparsed += 1
        else:
            out.values[g.item_id] = r
    return out


def make_open_judge(judge: str, teachers: Mapping[str, TeacherConfig], template: str,
                    cache_dir: str | Path, images: ImageStore | None = None, *,
                    progress: bool | None = None, backends=None):
    """A callable grading (item, extracted answer) pairs with a judge teacher."""

    def judge_pairs(pairs: list[tuple[Item, str]]) -> list[bool | None]:
        if not pairs:
            return []
        answers = {it.id: ans for it, ans in pairs}
        # One request per distinct (item, answer): the answer goes into the item id used for
        # routing results back, and into the rendered prompt (hence into the cache key).
        keyed = []
        for i, (it, ans) in enumerate(pairs):
            keyed.append(it.model_copy(update={"id": f"{it.id}#judge{i}"}))
            answers[keyed[-1].id] = ans
        res = _ask(keyed, judge, teachers, template, cache_dir, images, progress=progress,
                   backends=backends, extra_for=lambda it: {"response": answers[it.id]},
                   description="judge answers")
        by_id = {g.item_id: (None if g.error else parse_verdict(g.text)) for g in res.generations}
        return [by_id.get(k.id) for k in keyed]

    return judge_pairs


class ChoiceReader:
    """Reads the option a multiple-choice reply commits to with a judge teacher (the `judge` method).

    Called by the grade stage with (item, reply) pairs that no extraction rule read and none
    refused; one cached request per distinct pair. Returns a letter, "NONE", or None for a
    reply that could not be read (unparseable judge reply, failed request); the counts of
    each outcome accumulate on the reader for the stage record.
    """

    def __init__(self, judge: str, teachers: Mapping[str, TeacherConfig], template: str,
                 cache_dir: str | Path, images: ImageStore | None = None, *,
                 progress: bool | None = None, backends=None, budget_usd: float | None = None):
        self.judge, self.teachers, self.template = judge, teachers, template
        self.cache_dir, self.images, self.progress = cache_dir, images, progress
        self.backends, self.budget_usd = backends, budget_usd
        self.run = JudgeRun()
        self.asked = self.answered = self.declined = 0

    def counts(self) -> dict[str, object]:
        """Outcome counts so far: asked, answered (a letter), declined (NONE), unparsed, failed, spend."""
        return {"asked": self.asked, "answered": self.answered, "declined": self.declined,
                "unparsed": self.run.unparsed, "failed": self.run.failed,
                "spend_usd": round(self.run.spend_usd, 6), "complete": self.run.complete}

    def __call__(self, pairs: list[tuple[Item, str]]) -> list[str | None]:
        if not pairs:
            return []
        replies: dict[str, str] = {}
        keyed: list[Item] = []
        for i, (it, reply) in enumerate(pairs):
            keyed.append(it.model_copy(update={"id": f"{it.id}#read{i}"}))
            replies[keyed[-1].id] = reply
        res = _ask(keyed, self.judge, self.teachers, self.template, self.cache_dir, self.images,
                   progress=self.progress, backends=self.backends, budget_usd=self.budget_usd,
                   extra_for=lambda it: {"response": replies[it.id]}, description="read replies")
        self.run.spend_usd += res.spend_usd
        self.run.complete = self.run.complete and res.complete
        by_id = {g.item_id: g for g in res.generations}
        out: list[str | None] = []
        for k in keyed:
            self.asked += 1
            g = by_id.get(k.id)
            if g is None or g.error:
                self.run.failed += 1  # failed, or not sent (budget stop)
                out.append(None)
                continue
            letter = parse_choice(g.text, len(k.options))
            if letter is None:
                self.run.unparsed += 1
            elif letter == "NONE":
                self.declined += 1
            else:
                self.answered += 1
            out.append(letter)
        return out


def annotate_items(items: pa.Table, labeller: str, teachers: Mapping[str, TeacherConfig],
                   template: str, cache_dir: str | Path, images: ImageStore | None = None, *,
                   progress: bool | None = None, backends=None) -> tuple[pa.Table, JudgeRun]:
    """Fill missing modality / anatomy with a labeller model (fixed vocabulary, JSON output)."""
    its = items_from_table(items)
    todo = [it for it in its if not it.modality or not it.anatomy]
    schema = {"type": "json_schema", "json_schema": {"name": "labels", "schema": {
        "type": "object", "additionalProperties": False, "required": ["modality", "anatomy"],
        "properties": {"modality": {"type": "string", "enum": list(MODALITIES)},
                       "anatomy": {"type": "string", "enum": list(ANATOMIES)}}}}}
    sampling = JUDGE_SAMPLING.model_copy(update={"extra": {"response_format": schema}})
    res = _ask(todo, labeller, teachers, template, cache_dir, images, progress=progress,
               backends=backends, sampling=sampling, description="annotate",
               extra_for=lambda it: {"modalities": MODALITIES, "anatomies": ANATOMIES})
    out = JudgeRun(spend_usd=res.spend_usd, complete=res.complete)
    labels = {}
    for g in res.generations:
        if g.error:
            out.failed += 1
            continue
        lab = parse_labels(g.text)
        if lab["modality"] is None and lab["anatomy"] is None:
            out.unparsed += 1
        labels[g.item_id] = lab
    filled = []
    for it in its:
        lab = labels.get(it.id)
        if lab:
            upd = {}
            if not it.modality and lab["modality"]:
                upd["modality"] = lab["modality"]
            if not it.anatomy and lab["anatomy"]:
                upd["anatomy"] = lab["anatomy"]
            if upd:
                it = it.model_copy(update={**upd, "meta": {**it.meta, "labelled_by": labeller}})
                out.values[it.id] = upd
        filled.append(it)
    return to_table(filled, ITEM_SCHEMA), out
