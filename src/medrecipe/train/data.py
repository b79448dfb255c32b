"""Reading medrecipe's TRL export for training, and recording what a model was trained on."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from medrecipe.errors import UserError


def load_export(path: str | Path, split: str = "train"):
    """Load a TRL export: a ``save_to_disk`` folder (Dataset or DatasetDict) or Parquet file(s)."""
    import datasets

    p = Path(path)
    if not p.exists():
        raise UserError(f"dataset {p} does not exist; point `dataset` at medrecipe's TRL export")
    if p.is_file() and p.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(p))
    if p.is_dir() and not (p / "state.json").exists() and not (p / "dataset_dict.json").exists():
        parquet = sorted(p.glob("*.parquet"))
        if parquet:
            return datasets.Dataset.from_parquet([str(f) for f in parquet])
    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError as exc:
        raise UserError(
            f"{p} is not a datasets.save_to_disk folder or Parquet export: {exc}"
        ) from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{p} has splits {sorted(ds)}; set `split` to one of them")
        ds = ds[split]
    return ds


def check_columns(ds, required: list[str], path: str | Path) -> None:
    """Raise a UserError naming the missing columns."""
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise UserError(
            f"dataset {path} lacks column(s) {missing} (has {ds.column_names}); "
            "export it with medrecipe's TRL exporter"
        )


def resolve_image(value: Any, base: Path):
    """Open one image entry of the export (a path, relative to the export folder, or an image)."""
    from medrecipe.vlm import _image_from_ref

    if isinstance(value, str) and not value.startswith("data:"):
        candidate = Path(value)
        if not candidate.is_absolute():
            for root in (base, base.parent):
                if (root / candidate).is_file():
                    candidate = root / candidate
                    break
        return _image_from_ref(candidate)
    return _image_from_ref(value)


def export_fingerprint(path: str | Path) -> str:
    """SHA-256 over the export's data files (names and bytes), stable across reloads."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for f in files:
        if f.name == "state.json":  # holds a per-save fingerprint, not content
            continue
        digest.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def write_dataset_record(
    out_dir: Path, dataset_path: str | Path, ds, config_hash: str, stage: str
) -> dict[str, Any]:
    """Write <out_dir>/dataset.json: which export (path + fingerprint) this training read."""
    import medrecipe

    record = {
        "stage": stage,
        "dataset_path": str(Path(dataset_path).resolve()),
        "fingerprint": export_fingerprint(dataset_path),
        "datasets_fingerprint": getattr(ds, "_fingerprint", None),
        "num_rows": len(ds),
        "columns": list(ds.column_names),
        "config_hash": config_hash,
        "medrecipe_version": getattr(medrecipe, "__version__", "unknown"),
        "written_at": time.time(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset.json").write_text(json.dumps(record, indent=2))
    return record


def record_in_manifest(
    run_dir: str | Path, stage: str, record: dict[str, Any], output: Path, seconds: float
) -> None:
    """Record a finished training stage (and the export it read) in the run manifest."""
    from medrecipe.store import Run, StageRecord, fingerprint

    run = Run(run_dir)
    inputs = {"dataset": record["fingerprint"]}
    run.record_stage(
        StageRecord(
            name=stage,
            fingerprint=fingerprint(stage, record["config_hash"], inputs),
            config_hash=record["config_hash"],
            inputs=inputs,
            rows={"train_examples": int(record["num_rows"])},
            seconds=seconds,
            finished_at=time.time(),
            extra={"dataset_path": record["dataset_path"], "output": str(output)},
        )
    )
