"""GRPO on the tiny Qwen2.5-VL: datasets with ground truth, rewards called on completions."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
peft = pytest.importorskip("peft")
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from medrecipe.errors import UserError  # noqa: E402
from medrecipe.schema import Item, to_table  # noqa: E402
from medrecipe.train.config import GRPOConfig  # noqa: E402
from medrecipe.train.grpo import build_grpo_dataset, build_grpo_trainer, run_grpo  # noqa: E402
from medrecipe.train.rewards import make_reward_functions  # noqa: E402


def _jsonl_export(root, n=4):
    """Rows shaped like medrecipe's JSONL export (chat, image paths, ground truth)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "medrecipe_train.jsonl"
    with open(path, "w") as fh:
        for i in range(n):
            img = root / f"{i}.png"
            Image.new("RGB", (28 * (1 + i % 2), 56), (60 * i, 90, 30)).save(img)
            prompt = f"Case {i}: which finding?\n\nA. effusion\nB. consolidation\nC. normal"
            rec = {
                "id": f"e{i}",
                "item_id": f"q{i}",
                "source": "demo",
                "task": "mm_reasoning",
                "question": f"Case {i}: which finding?",
                "options": ["effusion", "consolidation", "normal"],
                "answer": "ABC"[i % 3],
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": "<think>t</think><answer>A</answer>"},
                ],
                "images": [str(img)],
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def _cfg(model, dataset, out, **kw):
    base = dict(
        model=str(model),
        dataset=str(dataset),
        output_dir=str(out),
        finetuning="lora",
        lora={"r": 4, "alpha": 8},
        effective_batch_size=4,
        per_device_batch_size=4,
        num_generations=2,
        max_steps=2,
        max_completion_length=6,
        logging_steps=1,
        image_max_pixels=56 * 56,
        device="cpu",
    )
    base.update(kw)
    return GRPOConfig(**base)


def test_grpo_dataset_from_the_jsonl_export(tmp_path):
    path = _jsonl_export(tmp_path / "jsonl")
    ds, _ = build_grpo_dataset(_cfg("m", path, tmp_path / "o"))
    row = ds[1]
    assert [m["role"] for m in row["prompt"]] == ["user"]  # the assistant turn is dropped
    parts = row["prompt"][0]["content"]
    assert parts[0]["type"] == "image" and "B. consolidation" in parts[-1]["text"]
    assert len(row["images"]) == 1 and isinstance(row["images"][0], Image.Image)
    assert row["answer"] == "B" and row["options"] == ["effusion", "consolidation", "normal"]


def test_grpo_dataset_from_an_items_table(tmp_path):
    from medrecipe.images import ImageStore

    store = ImageStore(tmp_path / "images")
    png = tmp_path / "x.png"
    Image.new("RGB", (30, 30), (1, 2, 3)).save(png)
    ref = store.put_file(png)
    items = [
        Item(
            id="i1",
            source="s",
            task="mm_reasoning",
            question="What is shown?",
            options=["cyst", "tumour"],
            answer="B",
            images=[ref],
        ),
        Item(
            id="i2",
            source="s",
            task="text",
            question="Which vitamin?",
            options=[],
            answer="thiamine",
        ),
    ]
    table_path = tmp_path / "items.parquet"
    pq.write_table(to_table(items), table_path)
    cfg = _cfg(
        "m", table_path, tmp_path / "o", image_store=str(store.root), system_prompt="Be brief."
    )
    ds, _ = build_grpo_dataset(cfg)
    first, second = ds[0], ds[1]
    assert first["prompt"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "Be brief."}],
    }
    user = first["prompt"][1]["content"]
    assert user[0]["type"] == "image" and "B. tumour" in user[1]["text"]
    assert "<answer>" in user[1]["text"]  # the instruction asks for the tagged format
    assert len(first["images"]) == 1 and second["images"] == []
    assert second["answer"] == "thiamine" and second["options"] == []
    with pytest.raises(UserError, match="image_store"):
        build_grpo_dataset(_cfg("m", table_path, tmp_path / "o"))


def test_dataset_without_answers_is_a_user_error(tmp_path):
    import datasets

    path = tmp_path / "trl"
    datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]]}).save_to_disk(
        str(path)
    )
    with pytest.raises(UserError, match="ground-truth"):
        build_grpo_dataset(_cfg("m", path, tmp_path / "o"))


def test_grpo_steps_call_the_format_reward_on_completions(tiny_vlm, tmp_path):
    path = _jsonl_export(tmp_path / "jsonl")
    calls = []
    fmt = make_reward_functions()[0]

    def format_reward(completions, **columns):
        calls.append((completions, columns))
        return fmt(completions, **columns)

    cfg = _cfg(tiny_vlm, path, tmp_path / "grpo")
    trainer, _, _ = build_grpo_trainer(cfg, reward_funcs=[format_reward])
    trainer.train()
    assert len(calls) == 2  # one generation batch per step
    completions, columns = calls[0]
    assert len(completions) == 4  # 2 prompts x 2 generations
    assert all(isinstance(c[0]["content"], str) for c in completions)
    assert set(columns["answer"]) <= {"A", "B", "C"} and columns["options"][0] == [
        "effusion",
        "consolidation",
        "normal",
    ]
    # each prompt appears num_generations times in a row
    assert columns["item_id"][0] == columns["item_id"][1]
    logged = [row for row in trainer.state.log_history if "rewards/format_reward/mean" in row]
    assert len(logged) == 2


def test_run_grpo_from_an_sft_adapter(tiny_vlm, tmp_path):
    pytest.importorskip("medrecipe.answers")
    from transformers import AutoModelForImageTextToText

    from medrecipe.train.config import LoraSettings
    from medrecipe.train.sft import lora_config
    from medrecipe.vlm import load_processor

    adapter = tmp_path / "sft_adapter"
    base = AutoModelForImageTextToText.from_pretrained(str(tiny_vlm))
    peft.get_peft_model(base, lora_config(LoraSettings(r=4, alpha=8))).save_pretrained(str(adapter))
    load_processor(tiny_vlm).save_pretrained(str(adapter))

    path = _jsonl_export(tmp_path / "jsonl")
    run_dir = tmp_path / "run"
    final = run_grpo(_cfg(adapter, path, tmp_path / "grpo", max_steps=1, run_dir=str(run_dir)))
    assert (final / "adapter_config.json").is_file()
    log = [json.loads(x) for x in (tmp_path / "grpo" / "train_log.jsonl").read_text().splitlines()]
    keys = set().union(*log)
    assert {"rewards/format_reward/mean", "rewards/correctness_reward/mean"} <= keys
    record = json.loads((tmp_path / "grpo" / "dataset.json").read_text())
    assert record["start_model"] == str(adapter) and record["num_rows"] == 4
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train_grpo"]["inputs"]["dataset"] == record["fingerprint"]
