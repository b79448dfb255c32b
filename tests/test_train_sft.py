"""SFT on the tiny Qwen2.5-VL: assistant-only labels, padding-free batches, checkpoints, adapters."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")
import datasets  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from medrecipe.errors import RecipeError, UserError  # noqa: E402
from medrecipe.train.config import SFTConfig, config_from_data  # noqa: E402
from medrecipe.train.sft import (  # noqa: E402
    VLMChatCollator,
    build_sft_trainer,
    choose_collator,
    run_sft,
)
from medrecipe.vlm import load_model_and_processor, load_processor  # noqa: E402

ANSWERS = [
    "<think>Consolidation in the right lower lobe.</think><answer>A</answer>",
    "<think>Hard exudates and microaneurysms.</think><answer>C</answer>",
    "First reply.",
    "<think>Dural-based mass.</think><answer>B</answer>",
]


def _make_export(root, n=4):
    """A TRL-format export as medrecipe writes it: typed parts + an images column."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    rows = {"id": [], "messages": [], "images": []}
    for i in range(n):
        path = img_dir / f"{i}.png"
        Image.new("RGB", (40 + 12 * i, 56), (40 * i, 120, 60)).save(path)
        user = [
            {"type": "image", "text": None},
            {"type": "text", "text": f"Case {i}: what is seen?"},
        ]
        messages = [
            {"role": "system", "content": [{"type": "text", "text": "You are a radiologist."}]},
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[i % len(ANSWERS)]}]},
        ]
        if i == 2:  # a two-turn conversation: both assistant turns are trained
            messages += [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "And the answer?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "<answer>D</answer>"}]},
            ]
        images = [str(path)]
        if i == 3:  # a text-only question (MedQA-style) in the same dataset
            messages[1]["content"] = user[1:]
            images = []
        rows["id"].append(f"ex{i}")
        rows["messages"].append(messages)
        rows["images"].append(images)
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "messages": [
                {
                    "role": datasets.Value("string"),
                    "content": [
                        {"type": datasets.Value("string"), "text": datasets.Value("string")}
                    ],
                }
            ],
            "images": datasets.Sequence(datasets.Image()),
        }
    )
    out = root / "trl"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows, features=features)}
    ).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return _make_export(tmp_path_factory.mktemp("export"))


def _cfg(tiny_vlm, export, out, **kw):
    base = dict(
        model=str(tiny_vlm),
        dataset=str(export),
        output_dir=str(out),
        effective_batch_size=2,
        per_device_batch_size=2,
        max_steps=3,
        logging_steps=1,
        image_max_pixels=56 * 56,
        device="cpu",
    )
    base.update(kw)
    return SFTConfig(**base)


def test_only_assistant_tokens_carry_labels(tiny_vlm, export):
    processor = load_processor(tiny_vlm, max_pixels=56 * 56)
    ds = datasets.load_from_disk(str(export))["train"]
    collator = VLMChatCollator(processor)
    rows = [ds[1], ds[2]]
    batch = collator(rows)
    tok = processor.tokenizer
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == image_pad).any()
    for row, example in enumerate(rows):
        labels = batch["labels"][row]
        ids = batch["input_ids"][row]
        trained = labels != -100
        # labels equal the inputs where they are kept
        assert torch.equal(labels[trained], ids[trained])
        expected = "".join(
            m["content"][0]["text"] + "<|im_end|>"
            for m in example["messages"]
            if m["role"] == "assistant"
        )
        assert tok.decode(ids[trained]) == expected
        # image placeholders, padding, system and user text never carry a label
        assert not trained[ids == image_pad].any()
        assert not trained[batch["attention_mask"][row] == 0].any()
        assert "radiologist" not in tok.decode(ids[trained])


def test_padding_free_batch_gives_the_padded_loss(tiny_vlm, export):
    model, processor = load_model_and_processor(tiny_vlm, device="cpu")
    processor = load_processor(tiny_vlm, max_pixels=56 * 56)
    ds = datasets.load_from_disk(str(export))["train"]
    rows = [ds[0], ds[2], ds[3]]
    padded = VLMChatCollator(processor)(rows)
    packed = VLMChatCollator(processor, padding_free=True, rope_index=model.model.get_rope_index)(
        rows
    )
    assert packed["input_ids"].shape[0] == 1
    assert "attention_mask" not in packed
    assert packed["input_ids"].shape[1] == int(padded["attention_mask"].sum())
    assert int((packed["labels"] != -100).sum()) == int((padded["labels"] != -100).sum())
    with torch.no_grad():  # training runs without a KV cache; a cache disables packed masking
        loss_padded = model(**padded, use_cache=False).loss
        loss_packed = model(**packed, use_cache=False).loss
    assert torch.isfinite(loss_padded)
    assert torch.allclose(loss_padded, loss_packed, atol=1e-5)


def test_full_sft_steps_save_a_reloadable_checkpoint(tiny_vlm, export, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(tiny_vlm, export, tmp_path / "sft", run_dir=str(run_dir), learning_rate=1e-3)
    final = run_sft(cfg)
    log = [
        json.loads(line) for line in (tmp_path / "sft" / "train_log.jsonl").read_text().splitlines()
    ]
    losses = [row["loss"] for row in log if "loss" in row]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(v)) for v in losses)

    before = load_file(str(tiny_vlm / "model.safetensors"))
    after = load_file(str(final / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # (checkpoints keep the published Qwen2.5-VL key names: model.layers.*, visual.*)
    assert any(k.startswith("model.layers.") for k in changed)
    # the vision encoder is frozen by default; its projector (merger) trains with full FT
    assert any(k.startswith("visual.blocks.") for k in before)
    assert not any(k.startswith("visual.blocks.") for k in changed)
    assert any(k.startswith("visual.merger.") for k in changed)

    model, processor = load_model_and_processor(final, device="cpu")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    # the checkpoint is a hub-layout folder that stock loaders open (see test_serve.py)
    proc_cfg = json.loads((final / "processor_config.json").read_text())
    assert proc_cfg["processor_class"] == "Qwen2_5_VLProcessor" and "video_processor" in proc_cfg
    assert (final / "preprocessor_config.json").is_file()
    summary = json.loads((tmp_path / "sft" / "train_summary.json").read_text())
    assert summary["collator"] == _expected_default_collator()
    record = json.loads((tmp_path / "sft" / "dataset.json").read_text())
    assert record["dataset_path"] == str(export.resolve()) and record["num_rows"] == 4
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train_sft"]["inputs"]["dataset"] == record["fingerprint"]


def test_padding_free_training_runs(tiny_vlm, export, tmp_path):
    cfg = _cfg(tiny_vlm, export, tmp_path / "pf", padding_free=True, max_steps=2)
    trainer, _ = build_sft_trainer(cfg)
    assert trainer.collator_choice.collator == "medrecipe"  # TRL refuses padding-free for VLMs
    assert isinstance(trainer.data_collator, VLMChatCollator)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["position_ids"].shape[0] == 4  # text positions + 3 M-RoPE rows
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_lora_adapter_targets_language_projections_and_reloads(tiny_vlm, export, tmp_path):
    cfg = _cfg(
        tiny_vlm,
        export,
        tmp_path / "lora",
        preset="openmedreason_lora",
        learning_rate=5e-2,
        effective_batch_size=2,
    )
    final = run_sft(cfg)
    adapter_cfg = json.loads((final / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 64 and adapter_cfg["lora_alpha"] == 128
    weights = load_file(str(final / "adapter_model.safetensors"))
    assert weights and all("language_model" in k for k in weights)
    assert not any("visual" in k for k in weights)
    assert {k.split(".")[-3] for k in weights if "lora_A" in k} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }

    base, processor = load_model_and_processor(tiny_vlm, device="cpu")
    tuned, _ = load_model_and_processor(final, device="cpu")  # base + adapter, merged
    ids = processor(text=["<|im_start|>user\nhello<|im_end|>\n"], return_tensors="pt")
    with torch.no_grad():
        a = base(**ids).logits
        b = tuned(**ids).logits
    assert not torch.allclose(a, b)


def test_lora_with_an_unfrozen_projector_saves_it_in_the_adapter(tiny_vlm, export, tmp_path):
    cfg = _cfg(
        tiny_vlm,
        export,
        tmp_path / "lp",
        finetuning="lora",
        lora={"r": 4, "alpha": 8},
        freeze_projector=False,
        max_steps=1,
    )
    weights = load_file(str(run_sft(cfg) / "adapter_model.safetensors"))
    visual = [k for k in weights if "visual" in k]
    assert visual and all("visual.merger" in k for k in visual)


# --------------------------------------------------------------------------- TRL's own collator


def _trl_version():
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version("trl"))


def _expected_default_collator():
    from importlib.metadata import version

    from packaging.version import Version

    new_enough = _trl_version() >= Version("1.15") and Version(version("transformers")) >= Version(
        "5.18.0.dev0"
    )
    return "trl" if new_enough else "medrecipe"


needs_trl_vision_loss = pytest.mark.skipif(
    _expected_default_collator() != "trl",
    reason="TRL < 1.15 (or transformers < 5.18) has no assistant-only loss for vision datasets",
)


@pytest.fixture(scope="module")
def hub_template_vlm(tiny_vlm, tmp_path_factory):
    """The tiny model with Qwen2.5-VL's published chat template (no generation markers)."""
    import shutil
    from pathlib import Path

    import trl

    src = Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja"
    if not src.is_file():
        pytest.skip(f"TRL {trl.__version__} ships no Qwen2.5-VL chat template")
    folder = tmp_path_factory.mktemp("hub_template") / "model"
    shutil.copytree(tiny_vlm, folder)
    (folder / "chat_template.jinja").write_text(src.read_text())
    return folder


@needs_trl_vision_loss
@pytest.mark.parametrize("template", ["generation_markers", "qwen25vl_published"])
def test_trl_and_medrecipe_collators_label_the_same_assistant_tokens(
    tiny_vlm, hub_template_vlm, export, tmp_path, template
):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    model = tiny_vlm if template == "generation_markers" else hub_template_vlm
    theirs, ds = build_sft_trainer(_cfg(model, export, tmp_path / "t", collator="auto"))
    ours, _ = build_sft_trainer(_cfg(model, export, tmp_path / "m", collator="medrecipe"))
    assert theirs.collator_choice.collator == "trl"
    assert isinstance(theirs.data_collator, DataCollatorForVisionLanguageModeling)
    assert theirs.data_collator.assistant_only_loss is True
    assert ours.collator_choice.collator == "medrecipe"
    assert isinstance(ours.data_collator, VLMChatCollator)
    # TRL swaps in its training template only where the model's has no generation markers
    assert (theirs.collator_choice.chat_template is None) == (template == "generation_markers")

    tok = ours.processing_class.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    newline = tok.convert_tokens_to_ids("\u010a")  # byte-level "\n"
    rows = list(range(len(ds)))  # images, a text-only row and a two-turn conversation
    a = theirs.data_collator([dict(ds[i]) for i in rows])
    b = ours.data_collator([dict(ds[i]) for i in rows])
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                "image_grid_thw"):
        assert torch.equal(a[key], b[key]), key
    ids = a["input_ids"]
    trl_trained, our_trained = a["labels"] != -100, b["labels"] != -100
    assert our_trained.any()
    assert torch.equal(a["labels"][trl_trained], ids[trl_trained])
    # The only difference: TRL's Qwen2.5-VL training template also trains the newline after
    # each assistant <|im_end|>; with the markers of the tiny template both are identical.
    extra = trl_trained & ~our_trained
    assert not (our_trained & ~trl_trained).any()
    if template == "generation_markers":
        assert not extra.any()
    else:
        after_end = torch.zeros_like(extra)
        after_end[:, 1:] = (ids[:, :-1] == im_end) & our_trained[:, :-1] & (ids[:, 1:] == newline)
        assert extra.any() and torch.equal(extra, after_end)
    for row, example in enumerate(ds.select(rows)):
        expected = "".join(m["content"][0]["text"] + "<|im_end|>"
                           for m in example["messages"] if m["role"] == "assistant")
        assert tok.decode(ids[row][our_trained[row]]) == expected


@needs_trl_vision_loss
def test_training_through_trls_collator_runs(tiny_vlm, export, tmp_path):
    trainer, _ = build_sft_trainer(_cfg(tiny_vlm, export, tmp_path / "t", max_steps=2))
    assert trainer.collator_choice.collator == "trl"
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_the_collator_chosen_for_each_config(tiny_vlm, export, tmp_path, request):
    from packaging.version import Version

    processor = load_processor(tiny_vlm, max_pixels=56 * 56)
    ds = datasets.load_from_disk(str(export))["train"]

    def pick(proc=processor, data=ds, trl="1.16.0", transformers="5.24.0", **kw):
        return choose_collator(_cfg(tiny_vlm, export, tmp_path, **kw), proc, data,
                               trl_version=trl, transformers_version=transformers)

    # TRL releases that refuse: decided from the version alone, whatever TRL is installed
    for old in ("0.29.0", "1.0.0", "1.9.2", "1.14.2"):
        choice = pick(trl=old)
        assert choice.collator == "medrecipe" and f"TRL {old} refuses assistant_only_loss" in (
            choice.reason
        )
    choice = pick(padding_free=True)
    assert choice.collator == "medrecipe" and "padding-free" in choice.reason
    choice = pick(transformers="5.17.0")
    assert choice.collator == "medrecipe" and "transformers>=5.18" in choice.reason
    assert pick(collator="medrecipe").collator == "medrecipe"
    with pytest.raises(UserError, match="collator: trl is not possible here: TRL 1.14.2"):
        pick(trl="1.14.2", collator="trl")
    with pytest.raises(RecipeError, match="padding_free"):
        config_from_data(SFTConfig, dict(model="m", dataset="d", collator="trl", padding_free=True))
    if _trl_version() < Version("1.15"):
        pytest.skip("the installed TRL cannot take the remaining (TRL-path) decisions")

    assert pick(trl="1.15.0").collator == "trl"
    choice = pick()
    assert choice.collator == "trl" and choice.chat_template is None
    hub = load_processor(request.getfixturevalue("hub_template_vlm"), max_pixels=56 * 56)
    choice = pick(proc=hub)
    assert choice.collator == "trl" and "{% generation %}" in choice.chat_template
    # a template without markers that TRL cannot patch: our ChatML mask still works
    plain = load_processor(tiny_vlm, max_pixels=56 * 56)
    plain.chat_template = plain.chat_template.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", ""
    )
    choice = pick(proc=plain)
    assert choice.collator == "medrecipe" and "no {% generation %} markers" in choice.reason
    # an export whose images are not datasets.Image features (paths as strings)
    strings = datasets.Dataset.from_dict({"messages": [ds[0]["messages"]],
                                          "images": [[str(export / "0.png")]]})
    choice = pick(data=strings)
    assert choice.collator == "medrecipe" and "not datasets.Image" in choice.reason
    assert pick(data=ds.remove_columns("images")).collator == "medrecipe"
