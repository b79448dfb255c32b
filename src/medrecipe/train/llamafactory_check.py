"""`medrecipe train llamafactory --check`: LLaMA-Factory's own loader on the export, in its environment.

LLaMA-Factory pins older transformers / datasets / TRL than medrecipe's training extra, so it
lives in a second environment. The check runs ``lf_env/lf_check.py`` with that environment's
python on the YAML medrecipe wrote, reads the JSON report it writes (validated against the
schema below: a report that does not parse is a failed check, not a pass) and turns it into
counted problems.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from medrecipe.errors import UserError
from medrecipe.train.lf_env import CHECK_SCRIPT, TRAIN_SCRIPT


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RowExample(_Strict):
    row: int
    path: str | None = None
    tags: int | None = None
    images: int | None = None


class DatasetCounts(_Strict):
    """What the check counted in one dataset, as LLaMA-Factory's converter gave its rows."""

    rows: int
    rows_with_images: int
    images: int
    images_found: int
    images_missing: int
    tag_mismatches: int  # rows whose <image> tags are not as many as their images
    missing_examples: list[RowExample]
    mismatch_examples: list[RowExample]


class StepError(_Strict):
    step: str
    error: str
    trace: str


class CheckReport(_Strict):
    """The JSON object lf_check.py writes (schema medrecipe-lf-check/1)."""

    schema_: Literal["medrecipe-lf-check/1"]
    ok: bool
    errors: list[StepError]
    datasets: dict[str, DatasetCounts]
    template: str | None
    mm_plugin: str | None
    image_token: str | None
    processor: str | None
    processor_offline: bool
    processor_error: str | None
    torchvision: bool | None
    offline_processor: list[str]
    tokenized_rows: int | None
    rows_with_image_tokens: int | None
    versions: dict[str, str]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @classmethod
    def parse(cls, text: str) -> CheckReport:
        import json

        data = json.loads(text)
        if isinstance(data, dict) and "schema" in data:
            data["schema_"] = data.pop("schema")
        return cls.model_validate(data)


class CheckResult(BaseModel):
    """A parsed report (None when the check itself failed) and every problem, counted."""

    report: CheckReport | None
    problems: list[str]
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def find_llamafactory_python(given: str | Path | None = None) -> Path:
    """The LLaMA-Factory environment's python: `given`, else the one `llamafactory-cli` on PATH runs."""
    if given is not None:
        p = Path(given)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise UserError(f"--llamafactory-python {p} is not an executable file")
        return p
    cli = shutil.which("llamafactory-cli")
    if cli is None:
        raise UserError(
            "no llamafactory-cli on PATH; pass --llamafactory-python /path/to/lf-venv/bin/python "
            "(see 'Training with LLaMA-Factory' in the README)"
        )
    with open(cli, "rb") as f:
        first = f.readline().decode(errors="replace").strip()
    python = first[2:].strip().split()[0] if first.startswith("#!") else ""
    if not python or "python" not in Path(python).name:
        raise UserError(
            f"cannot tell which python {cli} runs (first line {first!r}); pass --llamafactory-python"
        )
    return Path(python)


def problems_of(report: CheckReport) -> list[str]:
    """Every reason the check fails, one line each, with counts."""
    out = [f"{e.step}: {e.error}" for e in report.errors]
    train_rows = 0
    for name, c in report.datasets.items():
        train_rows += c.rows
        if c.images_missing:
            shown = ", ".join(f"row {e.row}: {e.path}" for e in c.missing_examples)
            out.append(f"{name}: {c.images_missing} of {c.images} images missing ({shown})")
        if c.tag_mismatches:
            shown = ", ".join(f"row {e.row}: {e.tags} tags, {e.images} images"
                              for e in c.mismatch_examples)
            out.append(f"{name}: {c.tag_mismatches} rows whose <image> tags do not match their "
                       f"images ({shown})")
    with_images = sum(c.rows_with_images for c in report.datasets.values())
    if with_images and report.processor is None:
        out.append(f"the model's processor did not load ({report.processor_error}); "
                   f"{with_images} rows have images")
    if not report.errors and not out:
        if not report.tokenized_rows:
            out.append("LLaMA-Factory's preprocessing kept no rows")
        elif report.rows_with_image_tokens is not None and report.rows_with_image_tokens < min(
                with_images, report.tokenized_rows):
            out.append(f"only {report.rows_with_image_tokens} of {with_images} rows with images "
                       "have image tokens after preprocessing (cutoff_len too small?)")
    if report.ok and out:
        out.append("the check script reported ok despite the problems above")
    if not report.ok and not out:
        out.append("the check script reported a failure without a reason")
    return out


def run_check(yaml_path: str | Path, python: str | Path, max_rows: int | None = None,
              timeout: float | None = None) -> CheckResult:
    """Run lf_check.py with `python` on a training YAML; its log goes next to the YAML."""
    yaml_path = Path(yaml_path)
    log = yaml_path.with_name(yaml_path.name + ".check.log")
    with tempfile.TemporaryDirectory(prefix="medrecipe-lf-check-") as d:
        out = Path(d) / "report.json"
        cmd = [str(python), str(CHECK_SCRIPT), "--config", str(yaml_path), "--out", str(out)]
        if max_rows is not None:
            cmd += ["--max-rows", str(max_rows)]
        try:
            with open(log, "w", encoding="utf-8") as f:
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                      cwd=d)
        except subprocess.TimeoutExpired:
            return CheckResult(report=None, log=log,
                               problems=[f"the check did not finish in {timeout:g}s (log: {log})"])
        except OSError as exc:
            return CheckResult(report=None, log=log,
                               problems=[f"cannot run {python}: {exc}"])
        text = out.read_text(encoding="utf-8") if out.is_file() else None
    if proc.returncode != 0 or text is None:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        return CheckResult(report=None, log=log, problems=[
            f"the check script exited {proc.returncode} without a report (log: {log}): "
            + " | ".join(tail)])
    try:
        report = CheckReport.parse(text)
    except (ValueError, ValidationError) as exc:
        return CheckResult(report=None, log=log, problems=[
            f"the check script's report does not match schema medrecipe-lf-check/1: "
            f"{str(exc).splitlines()[0]}"])
    return CheckResult(report=report, problems=problems_of(report), log=log)


def torchvision_imports(python: str | Path) -> bool:
    """Whether torchvision imports in that environment (an installed, broken one does not)."""
    try:
        return subprocess.run([str(python), "-c", "import torchvision"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def train_command(yaml_path: str | Path, python: str | Path | None,
                  torchvision: bool | None) -> str:
    """The command that trains on `yaml_path` in the LLaMA-Factory environment."""
    if torchvision is False and python is not None:
        return f"{python} {TRAIN_SCRIPT} train {yaml_path}"
    cli = Path(python).with_name("llamafactory-cli") if python else "llamafactory-cli"
    return f"{cli} train {yaml_path}"
