"""Stage outputs as Parquet datasets of shards, hash-partitioned by item id.

A sharded output `name` is a folder `<run>/<name>.parquet/` of files
`shard-00003-of-00016.parquet`; shard i holds exactly the rows whose item id hashes to i
(a stable 64-bit BLAKE2b of the id, modulo the shard count), so every sample, verdict and
selected trace of a question lives in the same shard as the question. A per-question step
(grading a question's samples, rejection sampling, votes) therefore reads one shard at a
time, and memory follows the shard size, not the run size.

`pyarrow.parquet.read_table(<run>/<name>.parquet)` reads a whole sharded output (files whose
names start with "." are temporary and ignored), so small runs can still be read at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ShardWriter", "dataset_files", "iter_batches", "num_rows", "shard_file", "shard_of", "shard_paths",
           "shards_of", "split_by_shard", "write_shard"]

SHARD_PATTERN = "shard-{i:05d}-of-{n:05d}.parquet"


def shard_of(item_id: str, n_shards: int) -> int:
    """The shard of one item id (stable across processes, machines and Python versions)."""
    if n_shards <= 1:
        return 0
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def shards_of(item_ids: Iterable[str], n_shards: int) -> np.ndarray:
    """Shard index per item id."""
    ids = list(item_ids)
    if n_shards <= 1:
        return np.zeros(len(ids), np.int64)
    return np.fromiter((shard_of(i, n_shards) for i in ids), np.int64, count=len(ids))


def shard_file(i: int, n: int) -> str:
    """File name of shard i of n."""
    return SHARD_PATTERN.format(i=i, n=n)


def shard_paths(folder: Path, n: int) -> list[Path]:
    """The n shard paths of a sharded output folder."""
    return [folder / shard_file(i, n) for i in range(n)]


def split_by_shard(table: pa.Table, n_shards: int, key: str = "item_id") -> dict[int, pa.Table]:
    """Rows of `table` grouped by the shard of their `key` column (input order kept)."""
    if n_shards <= 1 or table.num_rows == 0:
        return {0: table} if table.num_rows else {}
    idx = shards_of(table.column(key).to_pylist(), n_shards)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    bounds = np.flatnonzero(np.diff(sorted_idx)) + 1
    out = {}
    for part in np.split(order, bounds):
        out[int(idx[part[0]])] = table.take(pa.array(part))
    return out


def write_shard(path: Path, table: pa.Table, schema: pa.Schema | None = None) -> None:
    """Write one shard atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    schema = schema or table.schema
    try:
        pq.write_table(table.select(schema.names).cast(schema), tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ShardWriter:
    """Hash-partitions batches into n shard files; each file appears atomically on commit.

    Rows are buffered per shard and written as row groups of at most `rows_per_group`, so
    memory holds at most one row group per shard.
    """

    def __init__(self, folder: Path, n_shards: int, schema: pa.Schema, key: str = "id",
                 rows_per_group: int = 8192):
        self.folder = folder
        self.n = n_shards
        self.schema = schema
        self.key = key
        self.rows_per_group = rows_per_group
        self.rows = [0] * n_shards
        folder.mkdir(parents=True, exist_ok=True)
        self._tmp = [folder / f".{shard_file(i, n_shards)}.tmp-{os.getpid()}" for i in range(n_shards)]
        self._writers: list[pq.ParquetWriter | None] = [None] * n_shards
        self._buffers: list[list[pa.Table]] = [[] for _ in range(n_shards)]
        self._buffered = [0] * n_shards

    def write(self, table: pa.Table) -> None:
        """Add rows (any order); each goes to the shard of its key."""
        if table.num_rows == 0:
            return
        table = table.select(self.schema.names).cast(self.schema)
        for i, part in split_by_shard(table, self.n, self.key).items():
            self._buffers[i].append(part)
            self._buffered[i] += part.num_rows
            self.rows[i] += part.num_rows
            if self._buffered[i] >= self.rows_per_group:
                self._flush(i)

    def _flush(self, i: int) -> None:
        if not self._buffers[i]:
            return
        if self._writers[i] is None:
            self._writers[i] = pq.ParquetWriter(self._tmp[i], self.schema, compression="zstd")
        self._writers[i].write_table(pa.concat_tables(self._buffers[i]))  # type: ignore[union-attr]
        self._buffers[i] = []
        self._buffered[i] = 0

    def commit(self) -> list[Path]:
        """Close every shard (empty ones included) and move them into place."""
        paths = shard_paths(self.folder, self.n)
        for i in range(self.n):
            self._flush(i)
            w = self._writers[i]
            if w is None:
                pq.write_table(self.schema.empty_table(), self._tmp[i], compression="zstd")
            else:
                w.close()
            os.replace(self._tmp[i], paths[i])
        return paths

    def abort(self) -> None:
        for i in range(self.n):
            w = self._writers[i]
            if w is not None:
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - the temporary file goes anyway
                    pass
            self._tmp[i].unlink(missing_ok=True)


def dataset_files(path: Path) -> list[Path]:
    """The Parquet files of an output: the file itself, or a folder's shards in order."""
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_")))
    return [path] if path.exists() else []


def num_rows(path: Path) -> int:
    """Rows of a Parquet file or of a sharded output folder (from the footers)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in dataset_files(path))


def iter_batches(path: Path, batch_size: int = 8192,
                 columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Batches of a Parquet file or of every shard of a folder, in shard order."""
    for p in dataset_files(path):
        pf = pq.ParquetFile(p)
        cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            yield pa.Table.from_batches([batch])
