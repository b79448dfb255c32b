"""Export: LLaMA-Factory sharegpt layout, TRL / datasets DatasetDict, JSONL."""

from __future__ import annotations

import io
import json
import os
import shutil

import pyarrow as pa
import pytest
from PIL import Image

from medrecipe.config import ExportConfig, SelectConfig
from medrecipe.errors import UserError
from medrecipe.export import export, validate_llamafactory
from medrecipe.images import ImageStore
from medrecipe.schema import (
    GENERATION_SCHEMA,
    ITEM_SCHEMA,
    VERDICT_SCHEMA,
    Generation,
    Item,
    Verdict,
    to_table,
)
from medrecipe.select import select


def png(color, size=(40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def selection(tmp_path):
    """A selection with a one-image, a two-image and a text-only question, plus its store."""
    return make_selection(tmp_path / "images")


def make_selection(store_root):
    """The `selection` fixture's table, with its image store at `store_root`."""
    store = ImageStore(store_root)
    red, blue = store.put_bytes(png((200, 0, 0))), store.put_bytes(png((0, 0, 200), (28, 56)))
    items = [
        Item(id="img1", source="bcss", task="mm_classification", question="Which tissue is shown?",
             options=["Tumor", "Stroma", "Necrosis"], answer="B", images=[red]),
        Item(id="img2", source="nejm", task="mm_reasoning",
             question="Compare the two images. Note: the <image> tag in text must not count.",
             options=["Same", "Different"], answer="B", images=[red, blue]),
        Item(id="txt", source="medqa", task="text", question="Is aspirin an NSAID?", answer="yes"),
    ]
    gens, verdicts = [], []
    for it in items:
        for k in range(2):
            key = f"{it.id}-{k}"
            gens.append(Generation(key=key, item_id=it.id, source=it.source, teacher="t", model="m",
                                   sample_index=k,
                                   text=f"<think>Thinking about <script>alert(1)</script> {it.id}.</think>\\boxed{{{it.answer}}}"))
            verdicts.append(Verdict(key=key, item_id=it.id, source=it.source, teacher="t",
                                    sample_index=k, answer=it.answer, method="boxed", correct=True))
    res = select(to_table(items, ITEM_SCHEMA), to_table(gens, GENERATION_SCHEMA),
                 to_table(verdicts, VERDICT_SCHEMA), SelectConfig(cap_per_question=1))
    # force one question into validation so both splits are exercised
    all_rows = pa.concat_tables([res.train, res.val]).to_pylist()
    for r in all_rows:
        r["split"] = "val" if r["item_id"] == "txt" else "train"
    table = pa.Table.from_pylist(all_rows, schema=res.train.schema)
    return table, store


def test_llamafactory_export_matches_documented_layout(selection, tmp_path):
    table, store = selection
    out = tmp_path / "export"
    paths = export(table, out, store, ExportConfig(formats=["llamafactory"], dataset_name="med",
                                                  system_prompt="You are a careful clinician."))
    lf = paths["llamafactory"]
    assert validate_llamafactory(lf) == []
    info = json.loads((lf / "dataset_info.json").read_text())
    assert set(info) == {"med", "med_val"}
    assert info["med"] == {
        "file_name": "med_train.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"},
    }
    records = json.loads((lf / "med_train.json").read_text())
    by_images = {len(r["images"]): r for r in records}
    two = by_images[2]
    assert [m["role"] for m in two["messages"]] == ["system", "user", "assistant"]
    user = two["messages"][1]["content"]
    assert user.startswith("<image><image>Compare the two images.")
    assert user.count("<image>") == 2  # the literal tag in the question was defused
    assert "A. Same\nB. Different" in user
    assert two["messages"][2]["content"].endswith("\\boxed{B: Different}")
    # relative to the dataset folder (the default), as LLaMA-Factory resolves them
    assert all(p.startswith("../../images/") and p.endswith(".png") for p in two["images"])
    assert all((lf / p).is_file() for p in two["images"])
    val = json.loads((lf / "med_val.json").read_text())
    assert val[0]["images"] == [] and "<image>" not in val[0]["messages"][1]["content"]


def test_llamafactory_validator_reports_broken_records(selection, tmp_path):
    table, store = selection
    lf = export(table, tmp_path / "e", store, ExportConfig(formats=["llamafactory"]))["llamafactory"]
    f = lf / "medrecipe_train.json"
    records = json.loads(f.read_text())
    records[0]["images"].append(str(tmp_path / "missing.png"))  # token count and missing file
    records[1]["messages"].reverse()  # assistant first
    del records[1]["messages"][0]["content"]
    f.write_text(json.dumps(records))
    problems = validate_llamafactory(lf)
    assert any("record 0" in p and "tokens but" in p for p in problems)
    assert any("record 0" in p and "does not exist" in p for p in problems)
    assert any("record 1" in p and "needs keys" in p for p in problems)
    records = json.loads(f.read_text())
    records[1]["messages"] = [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    f.write_text(json.dumps(records))
    assert any("record 1" in p and "turn 0 has role 'assistant'" in p for p in validate_llamafactory(lf))
    assert validate_llamafactory(tmp_path) == [f"{tmp_path / 'dataset_info.json'}: missing"]


def test_llamafactory_export_keeps_existing_dataset_info_entries(selection, tmp_path):
    table, store = selection
    lf = tmp_path / "e" / "llamafactory"
    lf.mkdir(parents=True)
    (lf / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    export(table, tmp_path / "e", store, ExportConfig(formats=["llamafactory"]))
    assert set(json.loads((lf / "dataset_info.json").read_text())) == {"mine", "medrecipe", "medrecipe_val"}


def test_jsonl_export_has_chat_and_provenance(selection, tmp_path):
    table, store = selection
    paths = export(table, tmp_path / "e", store, ExportConfig(formats=["jsonl"], instruction="Think first."))
    rows = [json.loads(line) for line in paths["jsonl_train"].read_text().splitlines()]
    assert sorted(r["item_id"] for r in rows) == ["img1", "img2"]
    r = next(r for r in rows if r["item_id"] == "img1")
    assert r["messages"][0] == {"role": "user", "content": "Which tissue is shown?\n\nA. Tumor\nB. Stroma\nC. Necrosis\n\nThink first."}
    assert r["messages"][1]["content"].startswith("<think>\n")
    assert len(r["images"]) == len(r["image_refs"]) == 1
    assert r["teacher"] == "t" and r["key"] in ("img1-0", "img1-1")
    assert len(paths["jsonl_val"].read_text().splitlines()) == 1


def test_export_without_store_fails_when_images_are_needed(selection, tmp_path):
    table, _ = selection
    with pytest.raises(UserError, match="image store"):
        export(table, tmp_path / "e", None, ExportConfig(formats=["jsonl"]))
    with pytest.raises(UserError, match="not in the store"):
        export(table, tmp_path / "e", ImageStore(tmp_path / "empty"), ExportConfig(formats=["jsonl"]))


def test_trl_export_loads_renders_and_collates_with_tiny_model(selection, tmp_path, tiny_vlm):
    datasets = pytest.importorskip("datasets")
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from medrecipe.vlm import load_processor

    table, store = selection
    paths = export(table, tmp_path / "e", store, ExportConfig(formats=["trl"], system_prompt="Be precise."))
    dd = datasets.load_from_disk(str(paths["trl"]))
    assert set(dd) == {"train", "validation"}
    assert dd["train"].num_rows == 2 and dd["validation"].num_rows == 1
    # the Parquet copy loads with the same features
    pq_ds = datasets.load_dataset("parquet", data_files=str(paths["trl_parquet_train"]), split="train")
    assert pq_ds.features == dd["train"].features

    row = next(r for r in dd["train"] if r["item_id"] == "img2")
    assert [im.size for im in row["images"]] == [(40, 32), (28, 56)]
    user = row["messages"][1]
    assert [p["type"] for p in user["content"]] == ["image", "image", "text"]

    processor = load_processor(tiny_vlm)
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert "Be precise." in text and "\\boxed{B: Different}" in text
    assert text.index("Compare the two images") < text.index("<think>")
    enc = processor(text=[text], images=row["images"], return_tensors="pt")
    assert enc["pixel_values"].shape[0] > 0 and enc["image_grid_thw"].shape[0] == 2

    # TRL's vision-language collator accepts the rows as they load (incl. a text-only one)
    collator = DataCollatorForVisionLanguageModeling(processor)
    batch = collator([dd["train"][0], dd["train"][1]])
    assert batch["input_ids"].shape[0] == 2 and "pixel_values" in batch
    text_only = collator([dd["validation"][0]])
    assert "pixel_values" not in text_only and text_only["labels"].shape[0] == 1


def test_trl_export_overwrites_a_previous_export(selection, tmp_path):
    datasets = pytest.importorskip("datasets")
    table, store = selection
    export(table, tmp_path / "e", store, ExportConfig(formats=["trl"]))
    only_train = table.filter(pa.compute.equal(table.column("split"), "train"))
    paths = export(only_train, tmp_path / "e", store, ExportConfig(formats=["trl"], embed_images=False))
    dd = datasets.load_from_disk(str(paths["trl"]))
    assert set(dd) == {"train"}
    assert dd["train"][0]["images"][0].size in ((40, 32), (28, 56))  # decoded from the path


# --------------------------------------------------------------------------- moved exports


def _lf_resolve(dataset_dir, path):
    """LLaMA-Factory's rule: a media path is joined to media_dir (default: dataset_dir)."""
    return os.path.join(dataset_dir, path)


def _sizes_by_item(records, open_image):
    return {r["item"]: sorted(open_image(p).size for p in r["images"]) for r in records}


def _loads_everywhere(export_dir):
    """Image sizes per item, as the LLaMA-Factory, JSONL and TRL exports at `export_dir` give them."""
    datasets = pytest.importorskip("datasets")
    lf = export_dir / "llamafactory"
    assert validate_llamafactory(lf) == []
    lf_rows = []
    for r in json.loads((lf / "medrecipe_train.json").read_text()):
        assert all(not os.path.isabs(p) for p in r["images"])
        paths = [_lf_resolve(lf, p) for p in r["images"]]
        assert all(os.path.isfile(p) for p in paths)
        lf_rows.append({"item": r["messages"][0]["content"][:30], "images": paths})
    jl = export_dir / "jsonl" / "medrecipe_train.jsonl"
    jl_rows = []
    for line in jl.read_text().splitlines():
        r = json.loads(line)
        assert all(not os.path.isabs(p) for p in r["images"])
        jl_rows.append({"item": r["item_id"], "images": [jl.parent / p for p in r["images"]]})
    dd = datasets.load_from_disk(str(export_dir / "trl"))
    trl = {r["item_id"]: sorted(im.size for im in r["images"]) for r in dd["train"]}
    return (sorted(_sizes_by_item(lf_rows, Image.open).values()),
            _sizes_by_item(jl_rows, Image.open), trl)


EXPECTED_SIZES = {"img1": [(40, 32)], "img2": [(28, 56), (40, 32)]}


def test_relative_export_loads_after_the_run_folder_moves(tmp_path):
    run = tmp_path / "run"
    table, store = make_selection(run / "images")
    export(table, run / "export", store, ExportConfig())  # images: relative is the default
    moved = tmp_path / "elsewhere" / "run2"
    moved.parent.mkdir()
    shutil.move(str(run), str(moved))
    assert not run.exists()
    lf, jl, trl = _loads_everywhere(moved / "export")
    assert lf == sorted(EXPECTED_SIZES.values())
    assert jl == EXPECTED_SIZES and trl == EXPECTED_SIZES


def test_copy_export_folder_alone_moves_and_loads(tmp_path):
    run = tmp_path / "run"
    table, store = make_selection(run / "images")
    export(table, run / "export", store, ExportConfig(images="copy"))
    copies = sorted(p for p in (run / "export" / "images").rglob("*") if p.is_file())
    assert len(copies) == 2  # red and blue, each once although used by several rows
    moved = tmp_path / "elsewhere" / "export"
    moved.parent.mkdir()
    shutil.move(str(run / "export"), str(moved))
    shutil.rmtree(run)  # the run folder and its image store are gone
    lf, jl, trl = _loads_everywhere(moved)
    assert lf == sorted(EXPECTED_SIZES.values())
    assert jl == EXPECTED_SIZES and trl == EXPECTED_SIZES
    lf_rec = json.loads((moved / "llamafactory" / "medrecipe_train.json").read_text())
    assert all(p.startswith("../images/") for r in lf_rec for p in r["images"])


def test_absolute_export_writes_absolute_paths(selection, tmp_path):
    table, store = selection
    paths = export(table, tmp_path / "e", store,
                   ExportConfig(formats=["llamafactory", "jsonl"], images="absolute"))
    recs = json.loads(paths["llamafactory_train"].read_text())
    jl = [json.loads(line) for line in paths["jsonl_train"].read_text().splitlines()]
    for r in recs + jl:
        assert all(os.path.isabs(p) and os.path.isfile(p) for p in r["images"])
    assert any(r["images"] for r in recs)
