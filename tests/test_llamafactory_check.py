"""`medrecipe train llamafactory --check`: LLaMA-Factory's own loader on a moved export.

The real check needs a LLaMA-Factory environment (README, "Training with LLaMA-Factory"): its
python is taken from MEDRECIPE_LLAMAFACTORY_PYTHON, else from `llamafactory-cli` on PATH; the
test skips, saying so, where there is none (CI). The report parsing is also tested against
scripted stand-ins for that python, for the failures a real environment does not produce.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medrecipe.config import ExportConfig
from medrecipe.errors import UserError
from medrecipe.export import export
from medrecipe.train.llamafactory_check import (
    CheckReport,
    find_llamafactory_python,
    problems_of,
    run_check,
)
from test_export import make_selection


def medrecipe(*args, env=None):
    return subprocess.run([sys.executable, "-m", "medrecipe.cli", *map(str, args)],
                          capture_output=True, text=True, env=env)


def _lf_python() -> str | None:
    given = os.environ.get("MEDRECIPE_LLAMAFACTORY_PYTHON")
    if given:
        return given
    try:
        return str(find_llamafactory_python())
    except UserError:
        return None


def _lf_python_or_skip() -> str:
    python = _lf_python()
    if python is None:
        pytest.skip("no LLaMA-Factory environment: set MEDRECIPE_LLAMAFACTORY_PYTHON or put "
                    "llamafactory-cli on PATH (README: Training with LLaMA-Factory)")
    probe = subprocess.run([python, "-c", "import llamafactory.data"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import llamafactory.data: {probe.stderr.strip()[-300:]}")
    return python


def _moved_run(tmp_path):
    """A run folder with a relative LLaMA-Factory export, moved after the export."""
    run = tmp_path / "run"
    table, store = make_selection(run / "images")
    export(table, run / "export", store, ExportConfig(formats=["llamafactory"],
                                                      dataset_name="med_demo"))
    moved = tmp_path / "moved" / "run"
    moved.parent.mkdir()
    shutil.move(str(run), str(moved))
    return moved


def _lf_yaml(tmp_path, run, model):
    cfg = tmp_path / "lf.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(model), "dataset_dir": str(run / "export" / "llamafactory"),
        "output_dir": str(tmp_path / "out"), "config_path": str(tmp_path / "train.yaml"),
        "cutoff_len": 1024, "image_max_pixels": 12544}))
    return cfg


def test_check_runs_llamafactorys_loader_on_a_moved_export(tmp_path, tiny_vlm):
    python = _lf_python_or_skip()
    run = _moved_run(tmp_path)
    cfg = _lf_yaml(tmp_path, run, tiny_vlm)
    r = medrecipe("train", "llamafactory", cfg, "--check", "--llamafactory-python", python)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check passed" in r.stdout and "template: qwen2_vl" in r.stdout
    assert "dataset: med_demo (the export in" in r.stdout
    # the selection has 2 training rows: one with 1 image, one with 2
    assert "│ med_demo │    2 │           2 │            3 │       0 │              0 │" in r.stdout
    assert "preprocessed rows: 2 (2 with image tokens)" in r.stdout
    assert "run: " in r.stdout and "train.yaml" in r.stdout

    # break it: one image gone, one record with a tag too many
    lf = run / "export" / "llamafactory"
    records = json.loads((lf / "med_demo_train.json").read_text())
    one = next(r for r in records if len(r["images"]) == 1)
    two = next(r for r in records if len(r["images"]) == 2)
    one["messages"][0]["content"] = "<image>" + one["messages"][0]["content"]
    (lf / "med_demo_train.json").write_text(json.dumps(records))
    gone = lf / two["images"][1]
    gone.unlink()
    result = run_check(tmp_path / "train.yaml", python)
    counts = result.report.datasets["med_demo"]
    assert (counts.rows, counts.images, counts.images_found, counts.images_missing,
            counts.tag_mismatches) == (2, 3, 2, 1, 1)
    assert counts.missing_examples[0].path.endswith(gone.name)
    assert any("1 of 3 images missing" in p for p in result.problems)
    assert any("1 rows whose <image> tags do not match" in p for p in result.problems)
    assert result.report.tokenized_rows is None  # not preprocessed with data known broken
    r = medrecipe("train", "llamafactory", cfg, "--check", "--llamafactory-python", python)
    assert r.returncode == 2 and "check failed: 2 problem(s)" in r.stderr


# --------------------------------------------------------------------------- report parsing


def _fake_python(tmp_path, body: str) -> Path:
    """An executable standing in for a LLaMA-Factory python: runs `body` with the check's args."""
    p = tmp_path / "fakepython"
    p.write_text(f"#!{sys.executable}\nimport sys, json\nargs = sys.argv\n"
                 "out = args[args.index('--out') + 1]\n" + body)
    p.chmod(0o755)
    return p


GOOD = {
    "schema": "medrecipe-lf-check/1", "ok": True, "errors": [],
    "datasets": {"d": {"rows": 2, "rows_with_images": 1, "images": 1, "images_found": 1,
                       "images_missing": 0, "tag_mismatches": 0, "missing_examples": [],
                       "mismatch_examples": []}},
    "template": "qwen2_vl", "mm_plugin": "Qwen2VLPlugin", "image_token": "<|image_pad|>",
    "processor": "Qwen2_5_VLProcessor", "processor_offline": False, "processor_error": None,
    "torchvision": True, "offline_processor": [], "tokenized_rows": 2,
    "rows_with_image_tokens": 1, "versions": {"llamafactory": "0.9.5"},
}


def test_a_report_off_schema_or_a_crash_is_a_failed_check(tmp_path):
    (tmp_path / "t.yaml").write_text("{}")
    bad = dict(GOOD, tokenized_rows="many")
    py = _fake_python(tmp_path, f"open(out, 'w').write({json.dumps(json.dumps(bad))})\n")
    res = run_check(tmp_path / "t.yaml", py)
    assert res.report is None and "does not match schema" in res.problems[0]
    py = _fake_python(tmp_path, "print('Traceback: boom'); sys.exit(3)\n")
    res = run_check(tmp_path / "t.yaml", py)
    assert res.report is None and "exited 3 without a report" in res.problems[0]
    assert "boom" in res.problems[0] and res.log.read_text().strip() == "Traceback: boom"
    py = _fake_python(tmp_path, f"open(out, 'w').write({json.dumps(json.dumps(GOOD))})\n")
    assert run_check(tmp_path / "t.yaml", py).ok


def test_problems_are_counted_from_the_report():
    r = CheckReport.parse(json.dumps(GOOD))
    assert problems_of(r) == []
    d = dict(GOOD["datasets"]["d"], images_missing=1, images_found=0,
             missing_examples=[{"row": 1, "path": "x.png"}])
    r = CheckReport.parse(json.dumps(dict(GOOD, ok=False, datasets={"d": d}, processor=None,
                                          processor_error="OSError: no video processor",
                                          tokenized_rows=None)))
    probs = problems_of(r)
    assert probs[0] == "d: 1 of 1 images missing (row 1: x.png)"
    assert "processor did not load (OSError: no video processor)" in probs[1]
    # a script claiming ok with problems is not believed
    r = CheckReport.parse(json.dumps(dict(GOOD, datasets={"d": d})))
    assert problems_of(r)[-1] == "the check script reported ok despite the problems above"
    r = CheckReport.parse(json.dumps(dict(GOOD, rows_with_image_tokens=0)))
    assert "only 0 of 1 rows with images have image tokens" in problems_of(r)[0]


def test_the_lf_python_comes_from_llamafactory_cli_on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "llamafactory-cli"
    cli.write_text("#!/opt/lf/bin/python3.11\nimport sys\n")
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert find_llamafactory_python() == Path("/opt/lf/bin/python3.11")
    cli.write_text("#!/bin/sh\nexec something\n")
    with pytest.raises(UserError, match="--llamafactory-python"):
        find_llamafactory_python()
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="no llamafactory-cli on PATH"):
        find_llamafactory_python()
    with pytest.raises(UserError, match="not an executable"):
        find_llamafactory_python(tmp_path / "missing")


def test_the_printed_train_command_follows_torchvision(tmp_path):
    from medrecipe.train.lf_env import TRAIN_SCRIPT
    from medrecipe.train.llamafactory_check import torchvision_imports, train_command

    broken = _fake_python(tmp_path, "")  # stands in for `python -c 'import torchvision'`
    broken.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(1)\n")
    assert torchvision_imports(broken) is False
    assert train_command("t.yaml", broken, False) == f"{broken} {TRAIN_SCRIPT} train t.yaml"
    assert train_command("t.yaml", "/lf/bin/python", True) == "/lf/bin/llamafactory-cli train t.yaml"
    assert train_command("t.yaml", None, None) == "llamafactory-cli train t.yaml"
    assert torchvision_imports(sys.executable) == (
        subprocess.run([sys.executable, "-c", "import torchvision"],
                       capture_output=True).returncode == 0)


def test_offline_processor_lets_stock_autoprocessor_load_a_saved_qwen_folder(tiny_vlm):
    """What lf_train.py / lf_check.py do before LLaMA-Factory loads the processor (run in a
    fresh interpreter: the patch is process-wide)."""
    from medrecipe.train.lf_env import FOLDER

    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); import offline_processor as o\n"
        "patched = o.install()\n"
        "from transformers import AutoProcessor\n"
        "p = AutoProcessor.from_pretrained(sys.argv[2])\n"
        "enc = p(text=['<|vision_start|><|image_pad|><|vision_end|>x'], "
        "images=[__import__('PIL.Image').Image.new('RGB', (56, 56))])\n"
        "print(json.dumps({'torchvision': o.torchvision_works(), 'patched': patched, "
        "'cls': type(p).__name__, 'video': getattr(p, 'video_processor', None) is not None, "
        "'grid': enc['image_grid_thw'].tolist()}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(FOLDER), str(tiny_vlm)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["torchvision"]:
        assert out["patched"] == []  # nothing changed where torchvision works
    else:
        assert "Qwen2_5_VLProcessor" in out["patched"]
        assert out["cls"] == "Qwen2_5_VLProcessor" and out["video"] is False
    assert out["grid"] == [[1, 4, 4]]
