"""Load a LLaMA-Factory training YAML's datasets with LLaMA-Factory's own loader; write a JSON report.

Run with the python of a LLaMA-Factory environment (medrecipe need not be installed there):

    python lf_check.py --config train.yaml --out report.json [--max-rows N]

It parses the YAML with LLaMA-Factory's argument parser, loads the model's tokenizer and
processor as LLaMA-Factory does, builds the template, converts each dataset with
LLaMA-Factory's sharegpt converter (which resolves image paths against ``media_dir``), counts
rows, images found / missing and ``<image>`` tags that do not match the number of images, then,
when nothing is missing, runs the full preprocessing (template + mm_plugin + processor) that
training runs. The report is one JSON object (schema ``medrecipe-lf-check/1``); the process
exits 0 whenever it wrote the report, whatever the report says.

Hardware settings of the YAML (bf16, fp16, DeepSpeed) are turned off and the output folder is
a temporary one, so the check runs on any machine; what it checks is the data path only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from typing import Any

SCHEMA = "medrecipe-lf-check/1"
EXAMPLES = 5  # problem examples kept per kind and dataset


def _error(report: dict[str, Any], step: str, exc: BaseException) -> None:
    report["errors"].append({"step": step, "error": f"{type(exc).__name__}: {exc}",
                             "trace": traceback.format_exc(limit=4)[-2000:]})


def _count_rows(dataset: Any, image_token: str, max_rows: int | None) -> dict[str, Any]:
    """Rows, images found / missing and tag mismatches of one converted (aligned) dataset."""
    out: dict[str, Any] = {"rows": 0, "rows_with_images": 0, "images": 0, "images_found": 0,
                           "images_missing": 0, "tag_mismatches": 0, "missing_examples": [],
                           "mismatch_examples": []}
    for i, row in enumerate(dataset):
        if max_rows is not None and i >= max_rows:
            break
        out["rows"] += 1
        images = [p for p in (row.get("_images") or []) if p is not None]
        out["images"] += len(images)
        out["rows_with_images"] += bool(images)
        for p in images:
            if isinstance(p, str) and not os.path.isfile(p):
                out["images_missing"] += 1
                if len(out["missing_examples"]) < EXAMPLES:
                    out["missing_examples"].append({"row": i, "path": p})
            else:
                out["images_found"] += 1
        turns = list(row.get("_prompt") or []) + list(row.get("_response") or [])
        tags = sum(str(t.get("content") or "").count(image_token) for t in turns)
        if tags != len(images):
            out["tag_mismatches"] += 1
            if len(out["mismatch_examples"]) < EXAMPLES:
                out["mismatch_examples"].append({"row": i, "tags": tags, "images": len(images)})
    return out


def check(config_path: str, max_rows: int | None) -> dict[str, Any]:
    """The report for one training YAML (see the module docstring)."""
    report: dict[str, Any] = {"schema": SCHEMA, "ok": False, "errors": [], "datasets": {},
                              "template": None, "mm_plugin": None, "image_token": None,
                              "processor": None, "processor_offline": False,
                              "processor_error": None,
                              "torchvision": None, "offline_processor": [],
                              "tokenized_rows": None, "rows_with_image_tokens": None,
                              "versions": {}}
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import offline_processor

    report["torchvision"] = offline_processor.torchvision_works()
    try:
        import llamafactory
        import transformers
        import yaml

        report["versions"] = {"llamafactory": llamafactory.__version__,
                              "transformers": transformers.__version__}
        report["offline_processor"] = offline_processor.install()
        from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
        from llamafactory.data.loader import _get_merged_dataset
        from llamafactory.hparams import get_train_args
        from llamafactory.model import load_tokenizer

        with open(config_path, encoding="utf-8") as f:
            args = yaml.safe_load(f)
        tmp = tempfile.mkdtemp(prefix="medrecipe-lf-check-")
        for key in ("deepspeed", "fsdp", "fsdp_config"):
            args.pop(key, None)
        args.update({"output_dir": tmp, "overwrite_output_dir": True, "bf16": False,
                     "fp16": False, "report_to": "none", "do_train": True,
                     "overwrite_cache": True, "tokenized_path": None})
        if max_rows is not None:
            args["max_samples"] = max_rows
        model_args, data_args, training_args, _, _ = get_train_args(args)
    except Exception as exc:
        _error(report, "parse the YAML with LLaMA-Factory", exc)
        return report
    try:
        tokenizer_module = load_tokenizer(model_args)
        processor = tokenizer_module.get("processor")
        report["processor"] = type(processor).__name__ if processor is not None else None
        report["processor_offline"] = type(processor).__module__ == offline_processor.__name__
        if processor is None:  # LLaMA-Factory only logs why; ask once more for the reason
            try:
                from transformers import AutoProcessor

                AutoProcessor.from_pretrained(model_args.model_name_or_path,
                                              trust_remote_code=model_args.trust_remote_code)
                report["processor_error"] = "loaded, but LLaMA-Factory dropped it"
            except Exception as exc:
                report["processor_error"] = f"{type(exc).__name__}: {exc}"[:1000]
        template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        report["template"] = data_args.template
        report["mm_plugin"] = type(template.mm_plugin).__name__
        report["image_token"] = template.mm_plugin.image_token
    except Exception as exc:
        _error(report, "load the tokenizer, processor and template", exc)
        return report
    from llamafactory.extras.constants import IMAGE_PLACEHOLDER

    names = list(data_args.dataset or []) + list(data_args.eval_dataset or [])
    for name in names:
        try:
            ds = _get_merged_dataset([name], model_args, data_args, training_args, "sft",
                                     return_dict=True)[name]
            report["datasets"][name] = _count_rows(ds, IMAGE_PLACEHOLDER, max_rows)
        except Exception as exc:
            _error(report, f"load dataset {name}", exc)
    counts = report["datasets"].values()
    clean = (len(report["datasets"]) == len(names) and names
             and not any(c["images_missing"] or c["tag_mismatches"] for c in counts))
    if clean:
        try:
            module = get_dataset(template, model_args, data_args, training_args, stage="sft",
                                 **tokenizer_module)
            train = module["train_dataset"]
            report["tokenized_rows"] = len(train)
            image_id = tokenizer_module["tokenizer"].convert_tokens_to_ids(
                report["image_token"]) if report["image_token"] else None
            report["rows_with_image_tokens"] = sum(
                1 for ids in train["input_ids"] if image_id is not None and image_id in ids)
        except Exception as exc:
            _error(report, "preprocess with the template and processor", exc)
    with_images = sum(c["rows_with_images"] for c in counts)
    report["ok"] = bool(
        clean and not report["errors"] and report["tokenized_rows"]
        and (with_images == 0 or report["processor"] is not None)
    )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="LLaMA-Factory training YAML")
    ap.add_argument("--out", required=True, help="where to write the JSON report")
    ap.add_argument("--max-rows", type=int, default=None, help="check only the first N rows")
    a = ap.parse_args(argv)
    report = check(a.config, a.max_rows)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f)
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
