"""The tiny Qwen2.5-VL fixture loads offline and runs through the processor, forward and generate."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from medrecipe.errors import UserError  # noqa: E402
from medrecipe.vlm import (  # noqa: E402
    OfflineQwen2_5_VLProcessor,
    generate_chat,
    load_model_and_processor,
    load_processor,
    normalize_messages,
)


def _chat():
    return [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "Which finding is shown?"},
            ],
        }
    ]


def test_fixture_is_a_small_qwen25vl(tiny_vlm):
    cfg = json.loads((tiny_vlm / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl"
    model, _ = load_model_and_processor(tiny_vlm, device="cpu")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_processor_expands_image_placeholder_and_round_trips_text(tiny_vlm):
    processor = load_processor(tiny_vlm)
    assert isinstance(processor, OfflineQwen2_5_VLProcessor)
    text = processor.apply_chat_template(_chat(), tokenize=False, add_generation_prompt=True)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert text.endswith("<|im_start|>assistant\n")
    image = Image.new("RGB", (100, 60), (10, 200, 30))
    batch = processor(text=[text], images=[image], return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    t, h, w = batch["image_grid_thw"][0].tolist()
    # one placeholder per 2x2 group of 14-pixel patches
    assert ids.count(image_pad) == t * h * w // 4
    assert batch["pixel_values"].shape[0] == t * h * w
    decoded = processor.tokenizer.decode(ids, skip_special_tokens=False)
    assert "Which finding is shown?" in decoded


def test_pixel_limit_caps_visual_tokens(tiny_vlm):
    small = load_processor(tiny_vlm, max_pixels=56 * 56)
    big_image = Image.new("RGB", (400, 400))
    grid = small.image_processor(images=[big_image], return_tensors="pt")["image_grid_thw"][0]
    assert int(grid[1]) * 14 * int(grid[2]) * 14 <= 56 * 56


def test_forward_gives_finite_logits(tiny_vlm):
    model, processor = load_model_and_processor(tiny_vlm, device="cpu")
    text = processor.apply_chat_template(_chat(), tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[Image.new("RGB", (56, 84))], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.logits).all()


def test_generate_returns_text_for_each_conversation(tiny_vlm):
    model, processor = load_model_and_processor(tiny_vlm, device="cpu")
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    text_only = [{"role": "user", "content": "Name a bone."}]
    out = generate_chat(
        model,
        processor,
        [_chat(), text_only],
        images=[[red], []],
        max_new_tokens=6,
        temperature=0.8,
        num_return_sequences=2,
        seed=0,
    )
    assert len(out) == 2 and all(len(row) == 2 for row in out)
    for row in out:
        for completion in row:
            assert isinstance(completion.text, str)
            assert 1 <= completion.completion_tokens <= 6
            assert completion.finish_reason in ("stop", "length")
            assert "<|im_end|>" not in completion.text


def test_images_inline_and_missing(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path)
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": str(path)}, {"type": "text", "text": "q"}],
        }
    ]
    norm, images = normalize_messages(msgs)
    assert norm[0]["content"][0] == {"type": "image"} and len(images) == 1
    with pytest.raises(UserError):
        normalize_messages(_chat())  # an image part with no image


def test_generate_chat_continues_a_final_assistant_message(tiny_vlm):
    """A forced end of thinking resumes the truncated assistant text instead of a new turn."""
    from medrecipe.vlm import generate_chat, load_model_and_processor, normalize_messages

    model, processor = load_model_and_processor(tiny_vlm)
    conv = [{"role": "user", "content": [{"type": "text", "text": "Which option?"}]},
            {"role": "assistant", "content": [{"type": "text",
                                               "text": "<think>cut short</think>\nThe answer is"}]}]
    msgs, _ = normalize_messages(conv, None)
    continued = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False,
                                              continue_final_message=True)
    assert continued.endswith("The answer is")
    out = generate_chat(model, processor, [conv], max_new_tokens=3)[0][0]
    assert out.prompt_tokens == len(processor.tokenizer(continued)["input_ids"])
    fresh = generate_chat(model, processor, [conv], max_new_tokens=3,
                          continue_final_message=False)[0][0]
    assert fresh.prompt_tokens > out.prompt_tokens  # a new turn adds end/start markers
