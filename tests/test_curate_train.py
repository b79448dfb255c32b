"""`medrecipe train sft` on the curated SFT export, then `medrecipe train grpo` on the GRPO set.

The packaged curation demo is run in-process, and both trainers run a few steps of the tiny
Qwen2.5-VL through the CLI commands users call, reading exactly the files curation wrote.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")
import yaml  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from medrecipe.cli import app, packaged_recipe  # noqa: E402
from medrecipe.curate.config import load_curate_recipe  # noqa: E402
from medrecipe.curate.stage import open_curate_context, run_curation  # noqa: E402


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate_train")
    recipe, raw = load_curate_recipe(packaged_recipe("curate_demo"), [
        f"run_dir={root / 'run'}", "report.enabled=false"])
    outcome = run_curation(open_curate_context(recipe, raw, progress=False, echo=False))
    assert outcome.complete
    return root, outcome


def _train(kind: str, config: dict, path):
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", kind, str(path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_sft_then_grpo_on_what_curation_exported(curated, tiny_vlm):
    root, outcome = curated
    trl_export = outcome.exports["trl"]
    common = {"model": str(tiny_vlm), "image_max_pixels": 56 * 56, "device": "cpu",
              "logging_steps": 1}
    result = _train("sft", {**common, "dataset": trl_export, "output_dir": str(root / "sft"),
                            "finetuning": "full", "effective_batch_size": 2,
                            "per_device_batch_size": 2, "max_steps": 2, "max_length": 1024},
                    root / "sft.yaml")
    summary = json.loads((root / "sft" / "train_summary.json").read_text())
    who = "TRL's collator" if summary["collator"] == "trl" else "medrecipe's collator"
    assert f"assistant-only labels by {who}: {summary['collator_reason']}" in " ".join(
        result.output.split())
    sft_record = json.loads((root / "sft" / "dataset.json").read_text())
    assert sft_record["num_rows"] == 30  # 7 curated traces + 23 auxiliary ones
    assert (root / "sft" / "final" / "config.json").is_file()
    log = [json.loads(x) for x in (root / "sft" / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in log)

    grpo_set = outcome.grpo["jsonl_train"]
    _train("grpo", {**common, "model": str(root / "sft" / "final"), "dataset": grpo_set,
                    "output_dir": str(root / "grpo"), "finetuning": "lora",
                    "lora": {"r": 4, "alpha": 8}, "effective_batch_size": 4,
                    "per_device_batch_size": 4, "num_generations": 2, "max_steps": 1,
                    "max_completion_length": 6}, root / "grpo.yaml")
    grpo_record = json.loads((root / "grpo" / "dataset.json").read_text())
    assert grpo_record["num_rows"] == 6 and grpo_record["start_model"] == str(root / "sft" /
                                                                               "final")
    keys = set().union(*[json.loads(x) for x in
                         (root / "grpo" / "train_log.jsonl").read_text().splitlines()])
    assert {"rewards/format_reward/mean", "rewards/correctness_reward/mean"} <= keys
