"""SFT throughput of a randomly initialised Qwen2.5-VL: padded vs padding-free, full vs LoRA.

Builds the published Qwen2.5-VL-3B (or -7B) configuration in code (no download), makes
synthetic SFT examples shaped like reasoning traces (one image of random size, a short
question, a long assistant response; only the response carries labels), and times
optimizer steps with medrecipe's own batching (``pad_examples`` / ``pack_examples``).

Reports, per mode: real (non-padding) tokens per second, the padding fraction, peak GPU
memory and model FLOPs utilisation (MFU): useful training FLOPs on real tokens divided by
time and the GPU's dense bf16 peak. FLOPs count matmuls of the language model (x3 for a
trained model, x2 under LoRA where frozen weights get no weight gradients), causal
attention, and the vision encoder forward (frozen, so no backward); recomputation from
gradient checkpointing is not counted (MFU, not hardware utilisation).

    python benchmarks/train_throughput.py --model 3b            # needs a CUDA GPU
    python benchmarks/train_throughput.py --tiny                # CPU smoke run of the code path
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from typing import Any

# Published Qwen2.5-VL sizes (config.json of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct).
VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}
TEXT = {
    "3b": {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
    "7b": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
    },
}
IDS = {
    "bos": 151643,
    "im_start": 151644,
    "im_end": 151645,
    "vstart": 151652,
    "vend": 151653,
    "image": 151655,
    "video": 151656,
}

PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def build_config(size: str):
    """Qwen2.5-VL config with the published sizes (or a tiny one for --tiny)."""
    from transformers import Qwen2_5_VLConfig

    if size == "tiny":
        text = {
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "tie_word_embeddings": False,
        }
        vision = dict(
            VISION,
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            fullatt_block_indexes=[1],
            window_size=56,
        )
        mrope = [2, 3, 3]
        ids = {"bos": 0, "im_start": 1, "im_end": 2, "vstart": 3, "vend": 4, "image": 5, "video": 6}
    else:
        text = dict(TEXT[size])
        vision = dict(VISION)
        mrope = [16, 24, 24]
        ids = IDS
    tie = text.pop("tie_word_embeddings")
    text.update(
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        bos_token_id=ids["bos"],
        eos_token_id=ids["im_end"],
        pad_token_id=ids["bos"],
    )
    vision["out_hidden_size"] = text["hidden_size"]
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vstart"],
        vision_end_token_id=ids["vend"],
        tie_word_embeddings=tie,
    )
    return cfg, ids


def synthetic_examples(
    n: int, ids: dict[str, int], vocab: int, max_pixels: int, seed: int, scale: float = 1.0
) -> list[dict[str, Any]]:
    """Encoded SFT examples: system + user(image, question) + assistant(long response)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    low = 1000 if vocab > 2000 else 10
    for _ in range(n):
        # image: random aspect, area up to max_pixels, sides multiples of 28
        area = float(torch.empty(1).uniform_(0.25, 1.0, generator=g)) * max_pixels
        aspect = float(torch.empty(1).uniform_(0.6, 1.6, generator=g))
        h = max(28, int(math.sqrt(area / aspect) // 28) * 28)
        w = max(28, int(math.sqrt(area * aspect) // 28) * 28)
        gh, gw = h // 14, w // 14
        n_img = gh * gw // 4
        q_len = int(torch.randint(int(40 * scale) + 2, int(200 * scale) + 3, (1,), generator=g))
        # reasoning traces: log-normal lengths, median ~600 tokens, capped at 3000
        r_len = int(min(3000, max(20, math.exp(float(torch.randn(1, generator=g)) * 0.6 + 6.4))))
        r_len = max(4, int(r_len * scale))

        def rand(k: int):
            return torch.randint(low, vocab, (k,), generator=g)

        head = torch.tensor([ids["im_start"]])
        end = torch.tensor([ids["im_end"]])
        parts = [
            head,
            rand(3),
            rand(6),
            end,
            head,
            rand(2),
            torch.tensor([ids["vstart"]]),
            torch.full((n_img,), ids["image"]),
            torch.tensor([ids["vend"]]),
            rand(q_len),
            end,
            head,
            rand(2),
        ]
        prompt = torch.cat(parts)
        response = torch.cat([rand(r_len), end])
        input_ids = torch.cat([prompt, response])
        labels = torch.cat([torch.full_like(prompt, -100), response])
        mm = (input_ids == ids["image"]).long()
        out.append(
            {
                "input_ids": input_ids,
                "labels": labels,
                "mm_token_type_ids": mm,
                "pixel_values": torch.randn(gh * gw, 3 * 2 * 14 * 14),
                "image_grid_thw": torch.tensor([[1, gh, gw]]),
            }
        )
    return out


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_flops(model, examples: list[dict[str, Any]], lora: bool) -> float:
    """Useful training FLOPs for one step over these examples (real tokens only)."""
    cfg = model.config
    tcfg, vcfg = cfg.text_config, cfg.vision_config
    lm = model.model.language_model
    n_layers_params = _numel(lm.layers)
    head = tcfg.hidden_size * tcfg.vocab_size
    vis_blocks = _numel(model.model.visual.blocks) + _numel(model.model.visual.patch_embed)
    merger = _numel(model.model.visual.merger)
    mult_lm = 2.0 if lora else 3.0
    mult_merger = 1.0 if lora else 3.0
    total = 0.0
    for e in examples:
        s = int(e["input_ids"].shape[0])
        patches = int(e["pixel_values"].shape[0])
        lm_fwd = (
            2 * (n_layers_params + head) * s + 2 * tcfg.num_hidden_layers * s * s * tcfg.hidden_size
        )
        full_layers = len(vcfg.fullatt_block_indexes)
        window = (vcfg.window_size // vcfg.patch_size) ** 2
        vis_attn = (
            4
            * vcfg.hidden_size
            * patches
            * (full_layers * patches + (vcfg.depth - full_layers) * min(window, patches))
        )
        vis_fwd = 2 * vis_blocks * patches + vis_attn
        merger_fwd = 2 * merger * patches / 4
        total += mult_lm * lm_fwd + mult_merger * merger_fwd + vis_fwd
    return total


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key in ("H100 PCIe", "H100", "H200", "A100"):
        if key in name:
            return PEAK_BF16[key]
    return None


def run_mode(args, cfg, ids, batches, mode: str, device: str, dtype, attn: str) -> dict[str, Any]:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from medrecipe.train.config import LoraSettings
    from medrecipe.train.sft import lora_config, pack_examples, pad_examples

    packed, lora = mode.startswith("padding-free"), mode.endswith("lora")
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            cfg, dtype=dtype, attn_implementation=attn
        )
    model.config.use_cache = False
    model.config.text_config.use_cache = False
    for p in model.model.visual.parameters():
        p.requires_grad_(False)  # vision encoder frozen (the default), projector trained
    if lora:
        import peft

        for p in model.parameters():
            p.requires_grad_(False)
        model = peft.get_peft_model(model, lora_config(LoraSettings(r=64, alpha=128)))
        inner = model.base_model.model
    else:
        for p in model.model.visual.merger.parameters():
            p.requires_grad_(True)
        inner = model
    if args.gradient_checkpointing:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            inner.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")
    rope = inner.model.get_rope_index

    def make(examples):
        if packed:
            return pack_examples(examples, rope)
        return pad_examples(examples, ids["bos"])

    def step(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(dtype)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for examples in batches[: args.warmup]:
        step(make(examples))
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed = batches[args.warmup : args.warmup + args.steps]
    real = slots = 0
    flops = 0.0
    elapsed = 0.0
    for examples in timed:
        batch = make(examples)  # batching runs in the data loader: not timed
        real += sum(int(e["input_ids"].shape[0]) for e in examples)
        slots += int(batch["input_ids"].numel())
        flops += model_flops(inner, examples, lora)
        sync()
        t0 = time.perf_counter()
        loss = step(batch)
        sync()
        elapsed += time.perf_counter() - t0
    result = {
        "mode": mode,
        "steps": len(timed),
        "tokens_per_s": real / elapsed,
        "padding_fraction": 1 - real / slots,
        "step_s": elapsed / len(timed),
        "model_tflops_per_s": flops / elapsed / 1e12,
        "trainable_params": sum(p.numel() for p in params),
        "final_loss": loss.item(),
        "peak_mem_gib": (torch.cuda.max_memory_allocated() / 2**30) if device == "cuda" else None,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["3b", "7b"], default="3b")
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (smoke run)")
    parser.add_argument(
        "--modes", default="padded-full,padding-free-full,padded-lora,padding-free-lora"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-pixels", type=int, default=262144)
    parser.add_argument("--attn", default="auto", help="sdpa, eager, flash_attention_2 (auto)")
    parser.add_argument(
        "--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    import torch

    if not args.tiny and not torch.cuda.is_available():
        print(
            "train_throughput: no CUDA GPU is visible. This benchmark measures GPU training "
            "throughput of Qwen2.5-VL-3B/7B and needs one; run it on a GPU machine, or pass "
            "--tiny for a CPU smoke run of the same code path (its figures mean nothing).",
            file=sys.stderr,
        )
        return 2
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    attn = args.attn
    if attn == "auto":
        try:
            import flash_attn  # noqa: F401

            attn = "flash_attention_2"
        except ImportError:
            attn = "sdpa"
    size = "tiny" if args.tiny else args.model
    cfg, ids = build_config(size)
    max_pixels = 112 * 112 if args.tiny else args.max_pixels
    n = args.batch_size * (args.warmup + args.steps)
    examples = synthetic_examples(
        n, ids, cfg.text_config.vocab_size, max_pixels, args.seed, scale=0.05 if args.tiny else 1.0
    )
    batches = [examples[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = None if args.tiny else peak_flops(name, args.peak_tflops)
    print(
        f"device: {name}; model: Qwen2.5-VL-{size} (random init, {dtype}); attention: {attn}; "
        f"gradient checkpointing: {args.gradient_checkpointing}; batch {args.batch_size} examples; "
        f"{args.warmup} warm-up + {args.steps} timed steps; torch {torch.__version__}"
    )
    results = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        try:
            r = run_mode(args, cfg, ids, batches, mode, device, dtype, attn)
        except torch.cuda.OutOfMemoryError:
            r = {"mode": mode, "error": "out of GPU memory"}
            torch.cuda.empty_cache()
        gc.collect()  # free this mode's model and optimizer before the next one
        if device == "cuda":
            torch.cuda.empty_cache()
        r["mfu"] = (r["model_tflops_per_s"] * 1e12 / peak) if peak and "error" not in r else None
        results.append(r)
    base = {
        r["mode"].split("-")[-1]: r
        for r in results
        if r["mode"].startswith("padded") and "error" not in r
    }
    print(
        f"{'mode':<20}{'tokens/s':>12}{'vs padded':>11}{'padding':>9}{'step s':>9}"
        f"{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['mode']:<20}  {r['error']}")
            continue
        ref = base.get(r["mode"].split("-")[-1])
        ratio = r["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "n/a"
        print(
            f"{r['mode']:<20}{r['tokens_per_s']:>12.0f}{ratio:>10.2f}x"
            f"{100 * r['padding_fraction']:>8.1f}%{r['step_s']:>9.3f}"
            f"{r['model_tflops_per_s']:>9.1f}{mfu:>7}{mem:>10}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"device": name, "model": size, "attn": attn, "results": results}, fh, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
