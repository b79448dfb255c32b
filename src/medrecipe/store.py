"""A run is a directory: stage outputs as Parquet (atomic writes), a manifest, quarantine.

Layout of a run directory:

    manifest.json            package version, recipe hash, source revisions, stages
    <stage>.parquet          a stage's main output (e.g. items.parquet, generations.parquet)
    quarantine/<stage>.parquet   rows a stage could not use, with reasons
    cache/                   request cache (teacher responses), see generate/
    images/                  content-addressed image store (unless the recipe shares one)
    logs/                    log files
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import medrecipe
from medrecipe.locks import PathLock
from medrecipe.schema import QUARANTINE_SCHEMA, QuarantineRow, to_table

MANIFEST = "manifest.json"
# Temporary names used while writing: `.<name>.tmp-<pid>`, `.<name>.cache-<pid>`.
_TEMP_NAME = re.compile(r"^\..+\.(tmp|cache|old)-\d+$")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to a temporary name in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class ParquetSink:
    """Streams record batches into a Parquet file that appears only when closed cleanly."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.schema = schema
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_name(path)
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if table.num_rows == 0:
            return
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        self._writer.write_table(table.select(self.schema.names).cast(self.schema))
        self.rows += table.num_rows

    def commit(self) -> None:
        self._writer.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


@dataclass
class StageRecord:
    """What the manifest keeps about one finished stage."""

    name: str
    fingerprint: str
    config_hash: str
    inputs: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    finished_at: float = 0.0
    complete: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def fingerprint(name: str, config_hash: str, inputs: dict[str, str]) -> str:
    """Fingerprint of a stage run: its name, config hash and the fingerprints of its inputs."""
    blob = json.dumps([name, config_hash, sorted(inputs.items())], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Run:
    """A run directory with atomic Parquet outputs, a manifest and a quarantine area."""

    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / MANIFEST
        self.manifest: dict[str, Any] = self._load_manifest()
        self._lock: PathLock | None = None
        self.active: str | None = None  # the stage whose body is running, for messages

    # ------------------------------------------------------------------ manifest
    def _load_manifest(self) -> dict[str, Any]:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text())
        return {"medrecipe_version": medrecipe.__version__, "created_at": time.time(),
                "stages": {}, "sources": {}}

    def save_manifest(self) -> None:
        self.manifest["medrecipe_version"] = medrecipe.__version__
        self.manifest["updated_at"] = time.time()
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2, default=str))

    def set_meta(self, **values: Any) -> None:
        """Record top-level manifest values (recipe hash, prompt-template hashes, ...)."""
        self.manifest.update(values)
        self.save_manifest()

    def stage(self, name: str) -> StageRecord | None:
        rec = self.manifest.get("stages", {}).get(name)
        return StageRecord(**rec) if rec else None

    def stage_fingerprint(self, name: str) -> str | None:
        rec = self.stage(name)
        return rec.fingerprint if rec and rec.complete else None

    def is_fresh(self, name: str, fp: str, outputs: Sequence[str] = ()) -> bool:
        """True when `name` finished with fingerprint `fp` and its outputs still exist."""
        rec = self.stage(name)
        if rec is None or not rec.complete or rec.fingerprint != fp:
            return False
        return all(self.path(o).exists() for o in outputs)

    def record_stage(self, rec: StageRecord) -> None:
        self.manifest.setdefault("stages", {})[rec.name] = rec.__dict__
        self.save_manifest()

    def invalidate(self, name: str) -> None:
        self.manifest.get("stages", {}).pop(name, None)
        self.save_manifest()

    # ------------------------------------------------------------------ ownership
    def lock(self) -> PathLock:
        """Take the run directory for this process (LockHeld names the process that has it)."""
        if self._lock is None:
            self._lock = PathLock(self.root / ".lock", f"run directory {self.root}").acquire()
            self.remove_stale_temp_files()
        return self._lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete what killed runs left behind (`.<name>.tmp-<pid>`, `.trl.cache-<pid>`, ...).

        Called with the run directory locked, so no other process can be writing them. The
        image store is left alone: it may be shared, and a stray temporary file there is
        never read (images are found by their exact names).
        """
        removed: list[Path] = []
        folders = [self.root] + [self.root / d for d in ("ingest", "quarantine", "export",
                                                          "report", "logs")]
        folders += [self.root / "export" / d for d in ("llamafactory", "jsonl", "trl_parquet")]
        for folder in folders:
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                if not _TEMP_NAME.match(p.name):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    # ------------------------------------------------------------------ tables
    def path(self, name: str) -> Path:
        """Path of a named Parquet output (`items` -> <run>/items.parquet)."""
        return self.root / (name if name.endswith(".parquet") else f"{name}.parquet")

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    def sink(self, name: str, schema: pa.Schema) -> ParquetSink:
        return ParquetSink(self.path(name), schema)

    @contextlib.contextmanager
    def writer(self, name: str, schema: pa.Schema) -> Iterator[ParquetSink]:
        """Context manager: batches written inside appear atomically on clean exit."""
        sink = self.sink(name, schema)
        try:
            yield sink
        except BaseException:
            sink.abort()
            raise
        sink.commit()

    def write_table(self, name: str, table: pa.Table) -> Path:
        with self.writer(name, table.schema) as w:  # no rows still makes a valid empty file
            w.write(table)
        return self.path(name)

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(name), columns=columns)

    def iter_batches(self, name: str, batch_size: int = 8192,
                     columns: list[str] | None = None) -> Iterator[pa.Table]:
        pf = pq.ParquetFile(self.path(name))
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield pa.Table.from_batches([batch])

    def num_rows(self, name: str) -> int:
        return pq.ParquetFile(self.path(name)).metadata.num_rows if self.has(name) else 0

    # ------------------------------------------------------------------ quarantine
    def quarantine_path(self, stage: str) -> Path:
        return self.root / "quarantine" / f"{stage}.parquet"

    def write_quarantine(self, stage: str, rows: Sequence[QuarantineRow]) -> None:
        """Replace the quarantine table of one stage (a stage re-run rewrites its own)."""
        table = to_table(list(rows), QUARANTINE_SCHEMA) if rows else QUARANTINE_SCHEMA.empty_table()
        path = self.quarantine_path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = ParquetSink(path, QUARANTINE_SCHEMA)
        sink.write(table)
        sink.commit()

    def read_quarantine(self) -> pa.Table:
        """All stages' quarantined rows in one table."""
        qdir = self.root / "quarantine"
        tables = [pq.read_table(p) for p in sorted(qdir.glob("*.parquet"))] if qdir.exists() else []
        return pa.concat_tables(tables) if tables else QUARANTINE_SCHEMA.empty_table()

    # ------------------------------------------------------------------ helpers
    def subdir(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p


@dataclass
class StageResult:
    """What a stage body returns: output row counts and anything worth keeping in the manifest."""

    rows: dict[str, int] = field(default_factory=dict)
    complete: bool = True  # False: stopped early (e.g. budget); the next run resumes it
    extra: dict[str, Any] = field(default_factory=dict)


def run_stage(run: Run, name: str, config_hash: str, inputs: dict[str, str],
              outputs: Sequence[str], body: Callable[[], StageResult], *,
              force: bool = False, log: Callable[[str], None] | None = None) -> tuple[bool, StageRecord]:
    """Run `body` unless the stage is up to date; returns (ran, record).

    `inputs` maps input names to their fingerprints (an upstream stage's fingerprint, a
    source file's revision, ...). A stage is up to date when its fingerprint over
    (name, config hash, inputs) equals the recorded one and its outputs exist.
    """
    fp = fingerprint(name, config_hash, inputs)
    if not force and run.is_fresh(name, fp, outputs):
        if log:
            log(f"[dim]{name}: up to date, skipped[/dim]")
        rec = run.stage(name)
        assert rec is not None
        return False, rec
    if run.stage(name) is not None:
        # Forget the old record before any output changes: a run killed while the body
        # writes must not find the stage "up to date" next time, over half-new outputs.
        run.invalidate(name)
    t0 = time.perf_counter()
    run.active = name  # left set when the body fails: it names what was interrupted
    result = body()
    run.active = None
    rec = StageRecord(name=name, fingerprint=fp, config_hash=config_hash, inputs=dict(inputs),
                      rows=result.rows, seconds=round(time.perf_counter() - t0, 3),
                      finished_at=time.time(), complete=result.complete, extra=result.extra)
    run.record_stage(rec)
    return True, rec
