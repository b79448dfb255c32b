"""Folders medrecipe saves load in stock loaders, and `medrecipe serve` (transformers serve)
answers a recipe's generate stage and an evaluation end to end on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

FIX = Path(__file__).parent / "fixtures" / "eval"
SERVING = all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn"))
needs_serving = pytest.mark.skipif(
    not SERVING, reason="transformers' serving extras are not installed: "
    "pip install 'medrecipe[serve]'")


def _stock_load(folder: Path, *, hook: bool) -> subprocess.CompletedProcess:
    """AutoProcessor.from_pretrained in a fresh interpreter, with or without medrecipe's hook."""
    code = (
        ("import medrecipe.vlm\n" if hook else "")
        + "from transformers import AutoProcessor\n"
        f"p = AutoProcessor.from_pretrained({str(folder)!r})\n"
        "print(type(p).__name__, type(p.image_processor).__name__)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_saved_folder_has_the_hub_layout(tiny_vlm):
    proc = json.loads((tiny_vlm / "processor_config.json").read_text())
    assert proc["processor_class"] == "Qwen2_5_VLProcessor"
    assert proc["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert proc["video_processor"]["patch_size"] == proc["image_processor"]["patch_size"] == 14
    legacy = json.loads((tiny_vlm / "preprocessor_config.json").read_text())
    assert legacy["image_processor_type"] == "Qwen2VLImageProcessor"
    assert legacy["processor_class"] == "Qwen2_5_VLProcessor"
    assert legacy["max_pixels"] == proc["image_processor"]["size"]["longest_edge"]
    tok = json.loads((tiny_vlm / "tokenizer_config.json").read_text())
    assert tok["processor_class"] == "Qwen2_5_VLProcessor"


def test_stock_autoprocessor_loads_a_saved_folder(tiny_vlm):
    from medrecipe.vlm import torchvision_available

    if torchvision_available():  # the stock classes themselves, as for a hub checkpoint
        out = _stock_load(tiny_vlm, hook=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0] == "Qwen2_5_VLProcessor"
    else:  # without torchvision stock loading fails; the documented hook makes it work
        plain = _stock_load(tiny_vlm, hook=False)
        assert plain.returncode != 0 and "orchvision" in plain.stderr
        out = _stock_load(tiny_vlm, hook=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0] == "OfflineQwen2_5_VLProcessor"


def test_sft_style_resave_keeps_the_hub_layout(tiny_vlm, tmp_path):
    """A processor loaded by the hook and saved again (what TRL does at every checkpoint)."""
    from medrecipe.vlm import load_processor

    load_processor(tiny_vlm).save_pretrained(tmp_path / "ckpt")
    proc = json.loads((tmp_path / "ckpt" / "processor_config.json").read_text())
    assert proc["processor_class"] == "Qwen2_5_VLProcessor" and "video_processor" in proc
    assert (tmp_path / "ckpt" / "preprocessor_config.json").is_file()


def test_serve_completes_an_older_folder(tiny_vlm, tmp_path):
    import shutil

    from medrecipe.serve import prepare_folder

    old = tmp_path / "old"
    shutil.copytree(tiny_vlm, old)
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        (old / name).unlink()
    proc = json.loads((old / "processor_config.json").read_text())
    del proc["video_processor"]
    (old / "processor_config.json").write_text(json.dumps(proc))
    assert prepare_folder(str(old)) is not None
    assert "video_processor" in json.loads((old / "processor_config.json").read_text())
    assert (old / "preprocessor_config.json").is_file()
    assert prepare_folder(str(old)) is None  # nothing left to do


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_vlm, tmp_path_factory):
    """`medrecipe serve <tiny folder>` in a subprocess; yields its /v1 base URL."""
    if not SERVING:
        pytest.skip("transformers' serving extras are not installed: pip install 'medrecipe[serve]'")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medrecipe.cli", "serve", str(tiny_vlm), "--port", str(port),
             "--device", "cpu"],
            stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # readiness poll, not a timing assertion
            if proc.poll() is not None:
                pytest.fail(f"medrecipe serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"medrecipe serve did not come up:\n{log.read_text()}")
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@needs_serving
def test_served_folder_answers_chat_with_an_image(served, tiny_vlm):
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def ask(content):
        r = httpx.post(f"{served}/chat/completions", timeout=120, json={
            "model": str(tiny_vlm), "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 200, r.text
        return r.json()

    text_only = ask([{"type": "text", "text": "Which modality?"}])
    with_image = ask([{"type": "image_url", "image_url": {"url": url}},
                      {"type": "text", "text": "Which modality?"}])
    # the image reached the model: its visual tokens are in the prompt
    assert with_image["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"]
    assert with_image["choices"][0]["finish_reason"] in ("stop", "length")


@needs_serving
def test_recipe_generate_stage_against_transformers_serve(served, tiny_vlm, tmp_path):
    from medrecipe import pipeline
    from medrecipe.config import load_recipe

    Image.new("RGB", (64, 48), (30, 120, 200)).save(tmp_path / "scan.png")
    rows = [{"id": "t0", "question": "Which finding suggests pneumonia on a chest film?",
             "options": ["consolidation", "pneumothorax"], "answer": "A"},
            {"id": "i0", "question": "Which modality shows this picture?",
             "options": ["CT", "MRI"], "answer": "A", "images": ["scan.png"]}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "name": "served", "run_dir": str(tmp_path / "run"),
        "sources": [{"name": "q", "adapter": "generic", "path": "q.jsonl"}],
        "teachers": {"student": {"model": str(tiny_vlm), "base_url": served,
                                 "template": "long_reasoning", "max_retries": 1,
                                 "sampling": {"temperature": 0.7, "max_tokens": 8}}},
        "generate": {"n": 2, "routes": {"*": "student"}},
        "export": {"formats": ["jsonl"]},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    r, raw = load_recipe(tmp_path / "recipe.yaml")
    ctx = pipeline.open_context(r, raw, progress=False, echo=False)
    try:
        pipeline.run_recipe(ctx)
        gen = ctx.run.stage("generate")
    finally:
        ctx.close()
    assert gen is not None and gen.complete
    responses = _read_responses(tmp_path / "run", "generations")
    # 2 items x n=2: the server ignores `n`, so the engine asked once per sample
    assert len(responses) == 4
    assert sorted({r["item_id"] for r in responses}) == sorted(
        {r["id"] for r in _read_responses(tmp_path / "run", "items")})
    assert all(r["text"] for r in responses)
    assert {r["finish_reason"] for r in responses} <= {"stop", "length"}


def _read_responses(run_dir: Path, table: str = "responses") -> list[dict]:
    from medrecipe.shards import dataset_files

    out: list[dict] = []
    for f in dataset_files(run_dir / f"{table}.parquet"):
        out.extend(pq.read_table(f).to_pylist())
    return out


@needs_serving
def test_eval_against_transformers_serve_matches_the_local_backend(served, tiny_vlm, tmp_path):
    from medrecipe.evaluate import eval_config_from_data, load_results, run_eval

    benchmarks = [{"name": "medqa", "path": str(FIX / "medqa_test.jsonl")},
                  {"name": "pmc_vqa", "path": str(FIX / "pmc_vqa" / "test_clean.csv")}]
    common = {"seeds": [0], "sampling": {"max_tokens": 8, "temperature": 0},
              "forced_end": {"enabled": False}, "bootstrap": {"resamples": 50},
              "benchmarks": benchmarks}
    remote = eval_config_from_data({
        "name": "served", **common,
        "model": {"backend": "openai_compat", "model": str(tiny_vlm), "base_url": served,
                  "max_retries": 1, "max_in_flight": 2}})
    local = eval_config_from_data({
        "name": "local", **common,
        "model": {"backend": "transformers_local", "model": str(tiny_vlm), "device": "cpu"}})
    run_eval(remote, tmp_path / "remote")
    out = load_results(tmp_path / "remote")
    assert out["complete"] is True and out["samples"] == 4 + 3
    run_eval(local, tmp_path / "local")

    def texts(run):
        rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
        return {(r["benchmark"], r["item_id"]): r["text"] for r in rows}

    # Greedy decoding of the same weights, chat template and images: the server's answers are
    # the ones the model gives when medrecipe runs it in-process.
    assert texts(tmp_path / "remote") == texts(tmp_path / "local")


@needs_serving
def test_a_refusal_by_transformers_serve_keeps_its_reason(served, tiny_vlm):
    """FastAPI answers errors as {"detail": ...}; the reason reaches the user, not just 'HTTP 422'."""
    import asyncio

    from medrecipe.config import SamplingConfig, TeacherConfig
    from medrecipe.generate.backends import BackendError, ChatRequest, make_backend

    teacher = TeacherConfig(model=str(tiny_vlm), base_url=served)
    backend = make_backend(teacher)
    request = ChatRequest(
        messages=[{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "<think>so</think>The final answer is "}],
        model=str(tiny_vlm),
        sampling=SamplingConfig(max_tokens=4, extra={"continue_final_message": True,
                                                     "add_generation_prompt": False}))

    async def call():
        try:
            return await backend.complete(request)
        finally:
            await backend.aclose()

    with pytest.raises(BackendError) as err:
        asyncio.run(call())
    assert err.value.status == 422 and not err.value.retryable
    assert "continue_final_message" in str(err.value)
