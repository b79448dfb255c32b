"""LLaMA-Factory export: the training YAML and the dataset_info.json entry for the export."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from medrecipe.errors import UserError
from medrecipe.train.config import LlamaFactoryConfig, load_llamafactory_config
from medrecipe.train.llamafactory import write_llamafactory


def _sharegpt_export(root):
    root.mkdir(parents=True)
    img = root / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    records = [
        {
            "messages": [
                {"role": "user", "content": "<image>Which finding?\n\nA. x\nB. y"},
                {"role": "assistant", "content": "<think>t</think><answer>A</answer>"},
            ],
            "images": [str(img)],
        }
    ]
    (root / "medrecipe_train.json").write_text(json.dumps(records))
    # an entry the user already had must survive
    (root / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    return root


def test_octomed_yaml_has_the_papers_hyper_parameters(tmp_path):
    ddir = _sharegpt_export(tmp_path / "lf")
    cfg = LlamaFactoryConfig(
        model="Qwen/Qwen2.5-VL-7B-Instruct",
        dataset_dir=str(ddir),
        output_dir="out/octomed",
        num_gpus=8,
        per_device_batch_size=2,
    )
    yaml_path, info_path = write_llamafactory(cfg)
    args = yaml.safe_load(yaml_path.read_text())
    assert args["stage"] == "sft" and args["do_train"] is True
    assert args["finetuning_type"] == "full"
    assert args["template"] == "qwen2_vl"
    assert args["dataset"] == "medrecipe" and args["dataset_dir"] == str(ddir.resolve())
    assert args["learning_rate"] == 5e-5 and args["lr_scheduler_type"] == "cosine"
    assert args["warmup_ratio"] > 0 and args["num_train_epochs"] == 3
    # effective batch 128 = per-device batch x accumulation x GPUs
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * 8 == 128
    assert args["bf16"] is True and args["image_max_pixels"] == 262144
    assert args["cutoff_len"] > 0 and args["output_dir"] == "out/octomed"
    assert "lora_rank" not in args

    info = json.loads(info_path.read_text())
    assert info["mine"] == {"file_name": "mine.json"}
    entry = info["medrecipe"]
    assert entry["file_name"] == "medrecipe_train.json" and entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "messages", "images": "images"}
    assert entry["tags"]["user_tag"] == "user" and entry["tags"]["assistant_tag"] == "assistant"
    assert entry["tags"]["role_tag"] == "role" and entry["tags"]["content_tag"] == "content"


def test_entry_passes_the_exporters_layout_check(tmp_path):
    export = pytest.importorskip("medrecipe.export")
    ddir = _sharegpt_export(tmp_path / "lf")
    write_llamafactory(LlamaFactoryConfig(model="m", dataset_dir=str(ddir), output_dir="o"))
    assert export.validate_llamafactory(ddir, ["medrecipe"]) == []


def test_lora_preset_freezes_vision_and_targets_language_projections(tmp_path):
    ddir = _sharegpt_export(tmp_path / "lf")
    path = tmp_path / "lf.yaml"
    path.write_text(
        f"preset: openmedreason_lora\nmodel: m\ndataset_dir: {ddir}\noutput_dir: o\nnum_gpus: 4\n"
    )
    cfg = load_llamafactory_config(path, [f"config_path={tmp_path / 'train.yaml'}"])
    yaml_path, _ = write_llamafactory(cfg)
    assert yaml_path == tmp_path / "train.yaml"
    args = yaml.safe_load(yaml_path.read_text())
    assert args["finetuning_type"] == "lora" and args["freeze_vision_tower"] is True
    assert args["lora_rank"] == 64 and args["lora_alpha"] == 128
    assert set(args["lora_target"].split(",")) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * 4 == 64


def test_missing_export_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="export"):
        write_llamafactory(LlamaFactoryConfig(model="m", dataset_dir=str(tmp_path), output_dir="o"))
    ddir = _sharegpt_export(tmp_path / "lf")
    with pytest.raises(UserError, match="num_gpus"):
        write_llamafactory(
            LlamaFactoryConfig(model="m", dataset_dir=str(ddir), output_dir="o", num_gpus=3)
        )
