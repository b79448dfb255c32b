"""LLaMA-Factory export: the training YAML and the dataset_info.json entry for the export."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from PIL import Image

from medrecipe.errors import UserError
from medrecipe.train.config import LlamaFactoryConfig, load_llamafactory_config
from medrecipe.train.llamafactory import (
    Hardware,
    detect_hardware,
    plan_llamafactory,
    resolve_settings,
    write_llamafactory,
)


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
        bf16=True,
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
    assert "lora_rank" not in args and "trust_remote_code" not in args

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


def _real_export(root, names):
    """LLaMA-Factory exports written by medrecipe's exporter, one per name, into `root`."""
    from medrecipe.config import ExportConfig
    from medrecipe.export import export
    from test_export import make_selection

    table, store = make_selection(root / "images")
    for name in names:
        export(table, root / f"export_{name}", store,
               ExportConfig(formats=["llamafactory"], dataset_name=name))
    return [root / f"export_{name}" / "llamafactory" for name in names]


def test_dataset_name_is_read_from_the_exports_dataset_info(tmp_path):
    (lf,) = _real_export(tmp_path, ["medrecipe_demo"])
    before = (lf / "dataset_info.json").read_text()
    yaml_path, info_path = write_llamafactory(
        LlamaFactoryConfig(model="m", dataset_dir=str(lf), output_dir="o", num_gpus=1))
    args = yaml.safe_load(yaml_path.read_text())
    assert args["dataset"] == "medrecipe_demo"  # not the old default "medrecipe"
    assert info_path.read_text() == before  # the export's own entry is already right
    assert "#   dataset: medrecipe_demo (the export in" in yaml_path.read_text()
    from medrecipe.export import validate_llamafactory

    assert validate_llamafactory(lf, [args["dataset"]]) == []


def test_several_or_no_exports_need_a_dataset_name(tmp_path):
    a, b = _real_export(tmp_path, ["first", "second"])
    (b / "first_train.json").write_text((a / "first_train.json").read_text())
    info = json.loads((b / "dataset_info.json").read_text())
    info["first"] = dict(info["second"], file_name="first_train.json")
    (b / "dataset_info.json").write_text(json.dumps(info))
    cfg = LlamaFactoryConfig(model="m", dataset_dir=str(b), output_dir="o", num_gpus=1)
    with pytest.raises(UserError, match="several exports.*first, second.*set dataset_name"):
        plan_llamafactory(cfg)
    assert plan_llamafactory(cfg.model_copy(update={"dataset_name": "first"})).dataset_name == "first"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "o.json"}}))
    with pytest.raises(UserError, match=r"no export in .*\['other'\].*set dataset_name"):
        plan_llamafactory(cfg.model_copy(update={"dataset_dir": str(empty)}))


def test_hardware_settings_are_derived_and_said(tmp_path):
    cfg = LlamaFactoryConfig(model="m", dataset_dir=str(tmp_path), output_dir="o")
    big = resolve_settings(cfg, Hardware(gpus=4, bf16=True, cpus=64))
    assert (big.num_gpus, big.bf16, big.workers) == (4, True, 16)
    assert "num_gpus: 4 (torch.cuda.device_count() on this machine)" in big.notes
    cpu = resolve_settings(cfg, Hardware(gpus=0, bf16=False, cpus=2))
    assert (cpu.num_gpus, cpu.bf16, cpu.workers) == (1, False, 2)
    assert any(n.startswith("num_gpus: 1 (no CUDA device here") for n in cpu.notes)
    unknown = resolve_settings(cfg, Hardware(gpus=None, bf16=None, cpus=8))
    assert (unknown.num_gpus, unknown.bf16, unknown.workers) == (1, False, 8)
    assert any("torch is not installed" in n for n in unknown.notes)
    given = resolve_settings(cfg.model_copy(update={"num_gpus": 8, "bf16": True,
                                                    "preprocessing_workers": 3}),
                             Hardware(gpus=0, bf16=False, cpus=2))
    assert (given.num_gpus, given.bf16, given.workers) == (8, True, 3)
    assert all("from the config" in n for n in given.notes[:3])

    ddir = _sharegpt_export(tmp_path / "lf")
    cfg = LlamaFactoryConfig(model="m", dataset_dir=str(ddir), output_dir="o",
                             trust_remote_code=True)
    plan = plan_llamafactory(cfg, Hardware(gpus=2, bf16=False, cpus=4))
    assert plan.args["bf16"] is False and plan.args["preprocessing_num_workers"] == 4
    assert plan.args["trust_remote_code"] is True
    # the octomed preset's effective batch 128 over 2 GPUs
    assert plan.args["per_device_train_batch_size"] * plan.args["gradient_accumulation_steps"] == 64
    yaml_path, _ = write_llamafactory(cfg, plan)
    text = yaml_path.read_text()
    assert "#   num_gpus: 2 (torch.cuda.device_count() on this machine)" in text
    assert "#   bf16: false (not supported by this machine's GPU)" in text
    with pytest.raises(UserError, match=r"num_gpus = 3 \(num_gpus: 3 \(torch.cuda"):
        plan_llamafactory(cfg, Hardware(gpus=3, bf16=True, cpus=4))


def test_this_machines_hardware_is_read_from_torch():
    torch = pytest.importorskip("torch")
    hw = detect_hardware()
    assert hw.gpus == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert hw.cpus == (os.cpu_count() or 1)
    assert hw.bf16 == (bool(hw.gpus) and torch.cuda.is_bf16_supported())
