"""The bundled demo data and the packaged recipes: they load, and show what the demo promises.

`medrecipe demo` relies on these files: every good row must ingest, the deliberate defects must
be quarantined, every question needs replayed answers for every sample, and the responses must
include the wrong, unparseable and unterminated cases that rejection and the report display.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path

import pydicom
import pytest

from medrecipe.config import Recipe, load_recipe
from medrecipe.generate.backends.replay import load_replay
from medrecipe.images import ImageStore, is_dicom
from medrecipe.schema import LETTERS, QuarantineRow, items_from_table
from medrecipe.sources import load

PKG = Path(str(files("medrecipe")))
DEMO_DIR = PKG / "data" / "demo"
DEMO_RECIPE = PKG / "recipes" / "demo.yaml"
OCTOMED_RECIPE = PKG / "recipes" / "octomed.yaml"

# The deliberate defects documented in data/demo/README.md.
EXPECTED_QUARANTINE = {
    "demo_text/t17": "empty_question",
    "demo_image_mcq/m13": "image_missing",
}
CONTAMINATED = ("demo_text/t09", "b03")


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe(DEMO_RECIPE)[0]


@pytest.fixture(scope="module")
def loaded(recipe: Recipe, tmp_path_factory) -> dict:
    """Every demo source loaded through the real adapters, with an image store in a tmp folder."""
    store = ImageStore(tmp_path_factory.mktemp("images"))
    items, quarantine = {}, []
    for spec in recipe.sources:
        q: list[QuarantineRow] = []
        tables = list(load(spec, images=store, quarantine=q))
        items[spec.name] = [it for t in tables for it in items_from_table(t)]
        quarantine.extend(q)
    return {"items": items, "quarantine": quarantine, "store": store}


def _raw_rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _responses() -> list[dict]:
    return _raw_rows(str(DEMO_DIR / "responses.jsonl"))


def _final_part(rec: dict) -> str:
    """Text after the last closed thinking block (the whole text when there is none)."""
    text = rec["text"] or ""
    return text[text.rfind("</think>") + len("</think>"):] if "</think>" in text else text


_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
_BOX = re.compile(r"\\boxed\{([^}]*)\}")
_PHRASE = re.compile(r"Final answer:\s*(\S+)")


def _stated_answer(rec: dict) -> str | None:
    """The answer a finished response states after its reasoning (tag, box or phrase), if any."""
    final = _final_part(rec)
    for pattern in (_BOX, _TAG, _PHRASE):
        found = pattern.findall(final)
        if found and found[-1].strip():
            value = found[-1].strip()
            return value.split(":")[0].strip() if pattern is _BOX else value
    return None


def _is_unterminated(rec: dict) -> bool:
    text = rec["text"] or ""
    return "<think>" in text and "</think>" not in text and rec.get("finish_reason") == "length"


# --------------------------------------------------------------------------- recipes


def test_demo_recipe_validates_and_resolves_packaged_paths(recipe: Recipe):
    for spec in recipe.sources:
        assert Path(spec.path).is_file(), spec.name
    assert [s.name for s in recipe.sources_by_role("benchmark")] == ["demo_benchmark"]
    assert recipe.prepare.decontaminate.against == ["demo_benchmark"]
    assert recipe.generate.n == 4
    for teacher in recipe.teachers.values():
        assert teacher.backend == "replay"
        assert Path(teacher.replay_path).is_file()
    tasks = {it_task for spec in recipe.sources_by_role("train") for it_task in
             {r.get("task") for r in _raw_rows(spec.path)}}
    assert tasks == {"text", "mm_reasoning", "mm_classification", "open_vqa"}
    assert tasks <= set(recipe.generate.routes)
    assert recipe.select.cap_per_question == 2
    assert set(recipe.export.formats) == {"llamafactory", "trl", "jsonl"}


def test_octomed_recipe_validates_with_placeholders():
    r, _ = load_recipe(OCTOMED_RECIPE)
    assert r.generate.n == 16
    assert r.select.cap_per_question == 16
    assert r.select.pass_rate is None and r.select.difficulty is None
    assert r.select.target_format == "cot"
    bench = {s.name for s in r.sources_by_role("benchmark")}
    assert set(r.prepare.decontaminate.against) == bench
    train_tasks = {s.adapter for s in r.sources_by_role("train")}
    assert {"medqa", "medmcqa", "pmc_vqa", "imagefolder"} <= train_tasks
    assert r.teachers[r.generate.routes["text"]].template == "reasoning_minimal"
    assert r.teachers[r.generate.routes["mm_reasoning"]].template == "long_reasoning"
    for t in r.teachers.values():
        assert t.backend == "openai_compat" and t.api_key_env and "example" in (t.base_url or "")


# --------------------------------------------------------------------------- ingest


def test_every_good_row_loads_and_only_the_defects_are_quarantined(recipe: Recipe, loaded: dict):
    got = {q.item_id: q.reason for q in loaded["quarantine"]}
    assert got == EXPECTED_QUARANTINE
    for spec in recipe.sources:
        raw_ids = {f"{spec.name}/{r['id']}" for r in _raw_rows(spec.path)}
        loaded_ids = {it.id for it in loaded["items"][spec.name]}
        assert loaded_ids == raw_ids - set(EXPECTED_QUARANTINE), spec.name


def test_demo_covers_every_task_with_about_forty_questions(loaded: dict):
    counts: dict[str, int] = {}
    for name, items in loaded["items"].items():
        if name == "demo_benchmark":
            continue
        for it in items:
            counts[it.task] = counts.get(it.task, 0) + 1
    assert counts["text"] >= 12 and counts["mm_reasoning"] >= 10
    assert counts["mm_classification"] >= 6 and counts["open_vqa"] >= 3
    assert 36 <= sum(counts.values()) <= 48
    train = [it for n, its in loaded["items"].items() if n != "demo_benchmark" for it in its]
    image_items = [it for it in train if it.images]
    assert all(it.options for it in train if it.task != "open_vqa")
    assert any(not it.modality or not it.anatomy for it in image_items)  # left for annotate
    assert sum(bool(it.modality and it.anatomy) for it in image_items) > len(image_items) // 2


def test_training_questions_are_distinct(loaded: dict):
    """No exact duplicates, so prepare's duplicate collapsing does not hide demo rows."""
    seen = [" ".join(it.question.lower().split()) for n, its in loaded["items"].items()
            if n != "demo_benchmark" for it in its]
    assert len(seen) == len(set(seen))


def test_dicom_images_are_real_ct_mr_and_nm_slices(loaded: dict):
    modalities = {}
    for path in sorted((DEMO_DIR / "images").glob("*.dcm")):
        data = path.read_bytes()
        assert is_dicom(data)
        modalities[path.name] = str(pydicom.dcmread(path, stop_before_pixels=True).Modality)
        img = loaded["store"].open(loaded["store"].put_file(path))
        assert min(img.size) >= 56
    assert {"CT", "MR"} <= set(modalities.values())


def test_demo_folder_stays_small():
    sizes = [p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file()
             and "__pycache__" not in p.parts]
    assert sum(sizes) < 1_000_000
    drawn = [p for p in (DEMO_DIR / "images").iterdir() if p.suffix in (".png", ".jpg")]
    assert drawn and all(p.stat().st_size < 60_000 for p in drawn)


def test_exactly_one_training_question_shares_a_16_word_span_with_the_benchmark(loaded: dict):
    def grams(text: str, n: int = 16) -> set[tuple[str, ...]]:
        words = text.lower().split()
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    bench = {it.id.split("/")[-1]: grams(it.question) for it in loaded["items"]["demo_benchmark"]}
    hits = [(it.id, b) for n, its in loaded["items"].items() if n != "demo_benchmark"
            for it in its for b, g in bench.items() if grams(it.question) & g]
    assert hits == [CONTAMINATED]


# --------------------------------------------------------------------------- replay responses


def test_every_item_has_replay_responses_for_every_sample(recipe: Recipe, loaded: dict):
    n = recipe.generate.n
    for spec in recipe.sources_by_role("train"):
        for it in loaded["items"][spec.name]:
            teacher = recipe.teachers[recipe.generate.routes[it.task]]
            records = load_replay(teacher.replay_path, teacher.model)
            missing = [i for i in range(n) if (it.id, i) not in records]
            assert not missing, f"{it.id} ({teacher.model}) lacks samples {missing}"


def test_responses_refer_only_to_demo_items(loaded: dict):
    ids = {it.id for n, its in loaded["items"].items() if n != "demo_benchmark" for it in its}
    recs = _responses()
    assert {r["item_id"] for r in recs} <= ids
    assert {r["model"] for r in recs} == {"demo-reasoner", "demo-vision"}
    keys = [(r["item_id"], r["sample_index"]) for r in recs]
    assert len(keys) == len(set(keys))


def test_responses_include_wrong_unparseable_and_unterminated_cases(loaded: dict):
    items = {it.id: it for its in loaded["items"].values() for it in its}
    recs = _responses()
    wrong = unparseable = unterminated = 0
    outcome: dict[str, list[bool | None]] = {}
    for rec in recs:
        item = items[rec["item_id"]]
        if _is_unterminated(rec):
            unterminated += 1
            outcome.setdefault(item.id, []).append(None)
            continue
        assert rec.get("finish_reason") == "stop"
        stated = _stated_answer(rec)
        if stated is None:
            unparseable += 1
            outcome.setdefault(item.id, []).append(None)
            continue
        if item.options:
            assert stated in LETTERS[: len(item.options)], (rec["item_id"], stated)
            right = stated == item.answer
        else:
            right = stated.lower() == item.answer.lower()
        wrong += not right
        outcome.setdefault(item.id, []).append(right)
    assert wrong >= 10 and unparseable >= 3 and unterminated >= 3
    assert any(all(o is True for o in v) for v in outcome.values())    # pass-rate: too easy
    assert any(all(o is False for o in v) for v in outcome.values())   # pass-rate: too hard
    # Mixed questions, which rejection sampling and the cap act on, are the majority.
    mixed = [v for v in outcome.values() if any(o is True for o in v) and not all(o is True for o in v)]
    assert len(mixed) > len(outcome) // 2


def test_responses_use_the_documented_answer_formats():
    recs = _responses()
    texts = [r["text"] for r in recs]
    assert any("<answer>" in t for t in texts)
    assert any(re.search(r"\\boxed\{[A-E]: ", t) for t in texts)
    assert any(r.get("reasoning") and "<think>" not in r["text"] for r in recs)
    finished = [r for r in recs if r.get("finish_reason") == "stop" and "<think>" in r["text"]]
    assert all(r["text"].index("<think>") < r["text"].index("</think>") for r in finished)
