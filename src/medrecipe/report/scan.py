"""Where a run's tables are, and reading them in bounded pieces.

The report and `medrecipe inspect` never hold a whole table: they read batches of only the
columns they need, and fetch the few full rows they show by key. Sharded outputs (folders of
`shard-i-of-n.parquet`, hash-partitioned by item id) are read shard by shard: when every
table of a run has the same shard count, shard i of items, generations, verdicts and
selected traces hold the same questions, so joins (a generation's item source, a verdict's
failed request, traces per question) are done one shard at a time. Runs written as single
files (before sharding) are read as one "shard" holding everything.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medrecipe.select import SELECTED_TRAIN, SELECTED_VAL
from medrecipe.shards import dataset_files, shard_of
from medrecipe.store import Run

BATCH_ROWS = 32_768  # rows per batch of light columns
TEXT_BATCH_ROWS = 4_096  # rows per batch when texts are read (~1,500 characters each)
_SHARD_NAME = re.compile(r"^shard-(\d+)-of-(\d+)\.parquet$")

TABLES = ("items", "generations", "verdicts", "train", "val")


def shard_layout(files: Iterable[Path]) -> dict[int, Path] | None:
    """{shard index: file} when every file is named `shard-i-of-n` with one n; else None."""
    out: dict[int, Path] = {}
    counts: set[int] = set()
    for f in files:
        m = _SHARD_NAME.match(f.name)
        if not m or int(m.group(1)) in out:  # not shards, or shards of two outputs
            return None
        out[int(m.group(1))] = f
        counts.add(int(m.group(2)))
    return out if len(counts) == 1 else None


def shard_count(files: Iterable[Path]) -> int | None:
    """n of a sharded output's `shard-i-of-n` files (None: not sharded)."""
    files = list(files)
    if shard_layout(files) is None:
        return None
    return int(_SHARD_NAME.match(files[0].name).group(2))  # type: ignore[union-attr]


@dataclass
class RunFiles:
    """The Parquet files of each table of a run; None where a stage has not written it."""

    root: Path
    manifest: dict[str, Any]
    items: list[Path] | None = None
    generations: list[Path] | None = None
    verdicts: list[Path] | None = None
    train: list[Path] | None = None
    val: list[Path] | None = None
    quarantine: list[Path] | None = None

    def groups(self) -> list[dict[str, list[Path]]]:
        """The run as groups of files that hold the same questions (one group per shard
        when every table has the same shard count, else one group with every file)."""
        present = {n: getattr(self, n) for n in TABLES if getattr(self, n)}
        layouts = {n: shard_layout(f) for n, f in present.items()}
        counts = {shard_count(f) for f in present.values()}
        if present and None not in layouts.values() and len(counts) == 1:
            n = counts.pop() or 1
            return [{name: [lay[i]] if i in lay else [] for name, lay in layouts.items()
                     if lay is not None}
                    for i in range(n)]
        return [present]


def locate(run: Run | str | Path) -> RunFiles:
    """The tables present in a run directory (items fall back to ingest/*.parquet)."""
    if not isinstance(run, Run):
        run = Run(run, create=False)
    root = run.root

    def files(name: str) -> list[Path] | None:
        return dataset_files(run.path(name)) or None

    items = files("items_labelled") or files("items")
    if items is None:
        items = [f for p in sorted((root / "ingest").glob("*.parquet"))
                 for f in dataset_files(p)] or None
    qdir = root / "quarantine"
    return RunFiles(root=root, manifest=dict(run.manifest) if run.manifest_path.exists() else {},
                    items=items, generations=files("generations"), verdicts=files("verdicts"),
                    train=files(SELECTED_TRAIN), val=files(SELECTED_VAL),
                    quarantine=sorted(qdir.glob("*.parquet")) if qdir.exists() else None)


def batches(files: Iterable[Path], columns: Mapping[str, pa.DataType] | list[str] | None,
            batch_size: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """Batches of the named columns over several files, in file order.

    With a {name: type} mapping, every batch has exactly those columns and types: a column
    a file lacks (older outputs) comes back as nulls, so callers never test for columns.
    A list names columns to read as they are; None reads every column.
    """
    for f in files:
        pf = pq.ParquetFile(f)
        have = pf.schema_arrow.names
        if columns is None:
            wanted = None
        else:
            wanted = [c for c in columns if c in have]
        empty = True
        for b in pf.iter_batches(batch_size=batch_size, columns=wanted, use_threads=False):
            empty = False
            yield _complete(pa.Table.from_batches([b]), columns)
        if empty and isinstance(columns, Mapping):
            yield _complete(pf.schema_arrow.empty_table().select(wanted or []), columns)


def _complete(t: pa.Table, columns: Mapping[str, pa.DataType] | list[str] | None) -> pa.Table:
    if not isinstance(columns, Mapping):
        return t
    for name, typ in columns.items():
        if name not in t.column_names:
            t = t.append_column(name, pa.nulls(t.num_rows, typ))
        elif t.schema.field(name).type != typ:  # e.g. an all-null column written as null
            t = t.set_column(t.schema.get_field_index(name), name, t.column(name).cast(typ))
    return t.select(list(columns))


def value_counts(arr: pa.Array | pa.ChunkedArray) -> Counter:
    """{value: count} of one column (None for nulls)."""
    vc = pc.value_counts(arr)
    return Counter(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(),
                            strict=True)))


def relabel(counts: Counter, none_label: str) -> Counter:
    """Counts with None (and empty strings) under `none_label`, other values as strings."""
    out: Counter = Counter()
    for v, n in counts.items():
        out[none_label if v in (None, "") else str(v)] += n
    return out


def count_columns(files: Iterable[Path], columns: list[str]) -> dict[str, Counter]:
    """Raw {value: count} per column over every file, streamed."""
    out = {c: Counter() for c in columns}
    for t in batches(files, {c: pa.string() for c in columns}):
        for c in columns:
            out[c].update(value_counts(t.column(c)))
    return out


def head_rows(files: Iterable[Path], n: int, columns: list[str] | None = None) -> list[dict]:
    """The first n rows of a table."""
    out: list[dict] = []
    for t in batches(files, columns, batch_size=max(1, n)):
        out.extend(t.slice(0, n - len(out)).to_pylist())
        if len(out) >= n:
            break
    return out


@dataclass
class SourceIndex:
    """Item id -> source for the items of one group of shards (the last row wins)."""

    ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    sources: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))

    @classmethod
    def of(cls, parts: list[tuple[pa.Array, pa.Array]]) -> SourceIndex:
        if not parts:
            return cls()
        ids = pa.concat_arrays([p[0] for p in parts])[::-1]
        sources = pa.concat_arrays([p[1] for p in parts])[::-1]
        # index_in finds the first match, so reversed arrays give the last row per id.
        return cls(ids, sources)

    def resolve(self, item_ids: pa.Array, own: pa.Array) -> pa.Array:
        """The item's source, else the row's own, else "" (empty strings count as missing)."""
        mapped = pc.take(self.sources, pc.index_in(item_ids, value_set=self.ids))
        return pc.coalesce(_blank_to_null(mapped), _blank_to_null(own), pa.scalar(""))


def _blank_to_null(a: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(a, ""), pa.scalar(None, a.type), a)


def truthy(a: pa.Array) -> pa.Array:
    """Python truthiness of a string column: not null and not empty."""
    return pc.fill_null(pc.not_equal(a, ""), False)


def fetch_rows(files: list[Path] | None, column: str, wanted: Mapping[str, str],
               columns: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """{value: row} of the rows whose `column` is one of `wanted` ({value: its item id}).

    In a sharded output only the shards of those item ids are opened; each is read in
    batches, so memory is one batch whatever the table's size. Later rows win on duplicates.
    """
    if not files or not wanted:
        return {}
    layout = shard_layout(files)
    n = shard_count(files)
    plan: list[tuple[Path, list[str]]]
    if layout is not None and n:
        by_shard: dict[int, list[str]] = {}
        for value, item_id in wanted.items():
            by_shard.setdefault(shard_of(item_id, n), []).append(value)
        plan = [(layout[i], vals) for i, vals in sorted(by_shard.items()) if i in layout]
    else:
        plan = [(f, list(wanted)) for f in files]
    cols = None if columns is None else list(dict.fromkeys([column, *columns]))
    out: dict[str, dict[str, Any]] = {}
    for f, values in plan:
        value_set = pa.array(sorted(values), pa.string())
        for t in batches([f], cols, batch_size=TEXT_BATCH_ROWS):
            if column not in t.column_names:
                break
            hit = t.filter(pc.is_in(t.column(column), value_set=value_set))
            for row in hit.to_pylist():
                out[row[column]] = row
    return out
