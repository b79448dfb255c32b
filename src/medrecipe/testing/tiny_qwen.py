"""A tiny randomly initialised Qwen2.5-VL (model + processor) built in code for tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on a short in-code corpus,
the configuration follows Qwen2.5-VL's structure at a few hundred thousand parameters, and
the chat template renders image parts the way Qwen2.5-VL's does (a vision-start token, one
image placeholder that the processor expands, a vision-end token).
"""

from __future__ import annotations

from pathlib import Path

# Special tokens used by Qwen2.5-VL's chat format and processor, plus the reasoning tags the
# recipe's prompts ask for (as single tokens so a tiny model can emit them cheaply).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# ChatML with Qwen2.5-VL's image placeholder. Assistant turns are wrapped in generation
# markers so `return_assistant_tokens_mask=True` works with this template.
CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_CORPUS = [
    "You are a helpful assistant.",
    "Question: Which finding on the chest X-ray suggests pneumonia?",
    "Options: A. consolidation B. pneumothorax C. cardiomegaly D. normal lungs",
    "The patient is a 54-year-old man with fever, cough and right lower lobe crackles.",
    "Look at the image and answer with the letter of the correct option.",
    "Let me think step by step about the imaging findings and the clinical history.",
    "The fundus photograph shows microaneurysms and hard exudates: moderate diabetic retinopathy.",
    "Dermoscopy reveals an atypical pigment network, so melanoma is the most likely diagnosis.",
    "The MRI shows a dural-based enhancing mass consistent with a meningioma.",
    "Histology: tumor, stroma, inflammatory cells and necrosis are visible in the patch.",
    "The final answer is \\boxed{A}. Answer: B. The answer is (C). yes no",
    "0 1 2 3 4 5 6 7 8 9 A B C D E F G H I J mild severe benign malignant normal",
]


def _train_tokenizer(vocab_size: int = 480):
    """Train a byte-level BPE on the in-code corpus and wrap it as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + TAG_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:] + TAG_TOKENS,
        model_max_length=4096,
        padding_side="right",
    )


def tiny_qwen25vl_config(tokenizer):
    """Qwen2.5-VL configuration with tiny sizes, wired to the given tokenizer's special ids."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        # head_dim 16 -> 8 rotary frequencies split over (time, height, width).
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [1],
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_qwen25vl(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random Qwen2.5-VL with processor, save both to out_dir and return it."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from medrecipe.vlm import OfflineQwen2_5_VLProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    config = tiny_qwen25vl_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end, pad], pad_token_id=pad, do_sample=False
    )
    model.save_pretrained(out_dir)

    # Small pixel limits keep images at 28x28..112x112 (1..16 merged visual tokens).
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 28 * 28, "longest_edge": 112 * 112},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    processor = OfflineQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    # The processor saves the layout of a hub checkpoint (stock processor_class, video
    # processor entry, preprocessor_config.json): loading this folder takes the same path as
    # loading Qwen/Qwen2.5-VL-*-Instruct.
    processor.save_pretrained(out_dir)
    return out_dir
