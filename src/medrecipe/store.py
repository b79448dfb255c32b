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
                                                          "report", "logs", "cache")]
        folders += [p for p in self.root.glob("*.parquet") if p.is_dir()]  # sharded outputs
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
        """Batches of an output (a file, or every shard in shard order)."""
        from medrecipe.shards import iter_batches

        yield from iter_batches(self.path(name), batch_size, columns)

    def num_rows(self, name: str) -> int:
        """Rows of an output (a Parquet file or a folder of shards), from the footers."""
        from medrecipe.shards import num_rows

        return num_rows(self.path(name)) if self.has(name) else 0

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


# --------------------------------------------------------------------------- sharded stages


def merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-shard stats merged: numbers add up, dicts merge key by key, other values keep the
    first one that is set (a stop reason, a config echo)."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, bool) or v is None or isinstance(v, str):
                if out.get(k) is None:
                    out[k] = v
            elif isinstance(v, int | float):
                out[k] = out.get(k, 0) + v
            elif isinstance(v, dict):
                out[k] = merge_stats([out.get(k) or {}, v])
            elif isinstance(v, list):
                out[k] = list(out.get(k) or []) + list(v)
            else:
                out.setdefault(k, v)
    return out


def _progress_path(run: Run, name: str) -> Path:
    return run.root / "progress" / f"{name}.jsonl"


def _read_progress(run: Run, name: str, fp: str) -> dict[int, dict[str, Any]]:
    """Shards of stage `name` already finished with fingerprint `fp` (last line wins)."""
    path = _progress_path(run, name)
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if rec.get("fingerprint") == fp:
            done[int(rec["shard"])] = rec
    return done


def _append_progress(run: Run, name: str, rec: dict[str, Any]) -> None:
    path = _progress_path(run, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_sharded_stage(run: Run, name: str, config_hash: str, inputs: dict[str, str],
                      outputs: Sequence[str], fn: Callable[[Any], Any], n_shards: int,
                      executor: Any, payload: Any = None, *, force: bool = False,
                      summarize: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
                      ) -> tuple[bool, StageRecord]:
    """Run a stage shard by shard on `executor`, resuming from its last complete shard.

    `fn(ShardJob) -> ShardOutcome` reads shard i of the stage's inputs and writes shard i of
    each of `outputs` (`shards.shard_file(i, n)` inside `run.path(output)`). Each finished
    shard is appended to `<run>/progress/<stage>.jsonl` with the stage fingerprint; a re-run
    with the same fingerprint skips those shards (a shard that came back incomplete, e.g.
    stopped by the budget or with failed requests, is done again). A different fingerprint
    starts over and first removes the old shards. `summarize` turns the per-shard stats
    into the stage record's `extra` (default: `merge_stats`).
    """
    from medrecipe.executors import ShardJob
    from medrecipe.shards import shard_file

    fp = fingerprint(name, config_hash, {**inputs, "_shards": str(n_shards)})
    rec = run.stage(name)
    if not force and rec is not None and rec.complete and rec.fingerprint == fp \
            and all(run.path(o).is_dir() for o in outputs):
        return False, rec
    done = {} if force else _read_progress(run, name, fp)
    done = {i: d for i, d in done.items() if d.get("complete")
            and all((run.path(o) / shard_file(i, n_shards)).exists() for o in outputs)}
    if not done:
        for o in outputs:  # shards of another fingerprint (or shard count) must not mix in
            p = run.path(o)
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        _progress_path(run, name).unlink(missing_ok=True)
    # The record says "running" before any shard changes: a kill leaves a stage that is
    # not up to date, and the progress file says which shards are already done.
    running = StageRecord(name=name, fingerprint=fp, config_hash=config_hash, inputs=dict(inputs),
                          complete=False, extra={"n_shards": n_shards, "running": True,
                                                 "resumed_shards": len(done)})
    run.record_stage(running)
    resumed = len(done)
    jobs = [ShardJob(name, i, n_shards, str(run.root), payload)
            for i in range(n_shards) if i not in done]
    t0 = time.perf_counter()
    run.active = name  # left set when a shard fails: it names what was interrupted
    for out in executor.map(fn, jobs):
        entry = {"fingerprint": fp, "shard": out.shard, "rows": out.rows,
                 "complete": out.complete, "stats": out.stats}
        _append_progress(run, name, entry)
        done[out.shard] = entry
    run.active = None
    parts = [done[i] for i in sorted(done)]
    rows: dict[str, int] = {}
    for p in parts:
        for k, v in p["rows"].items():
            rows[k] = rows.get(k, 0) + int(v)
    stats = [p["stats"] for p in parts]
    extra = (summarize or merge_stats)(stats)
    extra["n_shards"] = n_shards
    extra["resumed_shards"] = resumed  # shards kept from an interrupted earlier run
    final = StageRecord(name=name, fingerprint=fp, config_hash=config_hash, inputs=dict(inputs),
                        rows=rows, seconds=round(time.perf_counter() - t0, 3),
                        finished_at=time.time(),
                        complete=all(p["complete"] for p in parts) and len(parts) == n_shards,
                        extra=extra)
    run.record_stage(final)
    return True, final
