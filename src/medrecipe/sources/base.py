"""Shared machinery of source adapters: reading records, answers to letters, images, batching.

An adapter is a generator of `(row_index, raw)` pairs where `raw` is a dict of Item fields
(with `images` holding image payloads: paths, bytes, HF image dicts or PIL images) or a
`Reject` saying why the row cannot be used. `build_items` turns that stream into Arrow
tables of validated Items and quarantine rows.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from medrecipe.config import SourceSpec
from medrecipe.errors import ImageError, SourceError
from medrecipe.images import ImageStore
from medrecipe.schema import (
    ITEM_SCHEMA,
    LETTERS,
    Item,
    QuarantineRow,
    raw_json,
    to_table,
    validate_items,
)


@dataclass
class Reject:
    """A row an adapter could not use: a stable reason and a human-readable detail."""

    reason: str
    detail: str = ""
    raw: Any = None
    item_id: str | None = None


@dataclass
class Skip:
    """A row an adapter leaves out on purpose (a filter such as a category): counted, not quarantined."""

    reason: str


RawStream = Iterator[tuple[int, "dict[str, Any] | Reject | Skip"]]


# --------------------------------------------------------------------------- reading


def detect_format(spec: SourceSpec) -> str:
    """The reader to use for a spec: explicit `format`, else guessed from the path."""
    if spec.format != "auto":
        return spec.format
    if not spec.path:
        raise SourceError(f"source {spec.name!r}: set `path` (a file, folder or hub id)")
    p = Path(spec.path)
    name = p.name.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".jsonl.gz", "jsonl"), (".ndjson", "jsonl"),
                        (".json", "json"), (".csv", "csv"), (".tsv", "csv"),
                        (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() \
                or (p / "state.json").exists():
            return "hf_disk"
        return "hf"
    if p.exists():
        raise SourceError(f"source {spec.name!r}: cannot tell the format of {p}; set `format`")
    return "hf"  # not a local path: a Hugging Face hub id


def _require_path(spec: SourceSpec) -> Path:
    if not spec.path:
        raise SourceError(f"source {spec.name!r}: set `path`")
    p = Path(spec.path)
    if not p.exists():
        raise SourceError(f"source {spec.name!r}: {p} does not exist")
    return p


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield {"__reject__": Reject("malformed_json", f"line {lineno}: {e}", line[:500])}
                continue
            yield rec if isinstance(rec, dict) else {"__reject__": Reject(
                "malformed_row", f"line {lineno}: expected a JSON object", line[:500])}


def _read_json(path: Path) -> Iterator[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        # Either {"data": [...]}-style wrappers or a mapping id -> record.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
        else:
            data = [dict(v, **({"id": k} if "id" not in v else {})) for k, v in data.items()
                    if isinstance(v, dict)]
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a JSON list of records")
    yield from data


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        sample = f.read(4096)
        f.seek(0)
        delimiter = "\t" if path.suffix.lower() == ".tsv" or sample.count("\t") > sample.count(",") else ","
        yield from csv.DictReader(f, delimiter=delimiter)


def _read_parquet(path: Path, batch_size: int) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size):
        yield from batch.to_pylist()


def _undecoded_images(ds):
    """Keep HF image columns as {bytes, path} so we hash original bytes, not re-encodings."""
    from datasets import Image as HFImage
    from datasets import Sequence

    for col, feat in list(ds.features.items()):
        if isinstance(feat, HFImage):
            ds = ds.cast_column(col, HFImage(decode=False))
        elif isinstance(feat, Sequence) and isinstance(feat.feature, HFImage):
            ds = ds.cast_column(col, Sequence(HFImage(decode=False)))
        elif isinstance(feat, list) and feat and isinstance(feat[0], HFImage):
            ds = ds.cast_column(col, [HFImage(decode=False)])
    return ds


def _read_hf(spec: SourceSpec, fmt: str, batch_size: int) -> Iterator[dict[str, Any]]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - core dependency
        raise SourceError("the `datasets` package is required for Hugging Face sources") from e
    datasets.logging.set_verbosity_error()
    try:
        if fmt == "hf_disk":
            ds = datasets.load_from_disk(str(_require_path(spec)))
            if isinstance(ds, datasets.DatasetDict):
                key = spec.hf_split or ("train" if "train" in ds else next(iter(ds)))
                if key not in ds:
                    raise SourceError(f"source {spec.name!r}: split {key!r} not in {list(ds)}")
                ds = ds[key]
        else:
            ds = datasets.load_dataset(spec.path, name=spec.hf_config,
                                       split=spec.hf_split or "train", revision=spec.revision)
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the message matters
        raise SourceError(
            f"source {spec.name!r}: cannot load Hugging Face dataset {spec.path!r}"
            f" (config={spec.hf_config!r}, split={spec.hf_split!r}): {type(e).__name__}: {e}."
            " Offline, point `path` at a local copy (a folder from save_to_disk or of data files)."
        ) from None
    ds = _undecoded_images(ds)
    for batch in ds.iter(batch_size=batch_size):
        cols = list(batch)
        n = len(batch[cols[0]]) if cols else 0
        for i in range(n):
            yield {c: batch[c][i] for c in cols}


def read_records(spec: SourceSpec, batch_size: int = 4096) -> Iterator[dict[str, Any]]:
    """Raw records (dicts) of a source in its own field names, streamed."""
    fmt = detect_format(spec)
    if fmt in ("hf", "hf_disk"):
        yield from _read_hf(spec, fmt, batch_size)
        return
    path = _require_path(spec)
    if path.is_dir():
        raise SourceError(f"source {spec.name!r}: {path} is a folder; name a {fmt} file")
    if fmt == "jsonl":
        yield from _read_jsonl(path)
    elif fmt == "json":
        yield from _read_json(path)
    elif fmt == "csv":
        yield from _read_csv(path)
    elif fmt == "parquet":
        yield from _read_parquet(path, batch_size)
    else:  # pragma: no cover - guarded by the Literal in SourceSpec
        raise SourceError(f"source {spec.name!r}: unknown format {fmt!r}")


def enumerate_records(spec: SourceSpec, batch_size: int = 4096) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row_index, record) pairs, honouring `limit`."""
    for i, rec in enumerate(read_records(spec, batch_size)):
        if spec.limit is not None and i >= spec.limit:
            return
        yield i, rec


# --------------------------------------------------------------------------- answers

_LETTER_RE = re.compile(r"^\s*[\(\[]?\s*([A-Za-z])\s*[\)\]\.:]?\s*$")
_LETTER_PREFIX_RE = re.compile(r"^\s*[\(\[]?([A-Z])[\)\]\.:]\s+\S")


def strip_option_prefix(text: str) -> str:
    """'A: Glioma' / '(A) Glioma' / 'A. Glioma' -> 'Glioma' (only a leading capital letter tag)."""
    m = _LETTER_PREFIX_RE.match(text)
    return text[m.end() - 1:].strip() if m else text.strip()


def norm_text(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(" .")


def answer_to_letter(value: Any, options: list[str], fmt: str = "auto") -> str | None:
    """Map an answer given as a letter, 0/1-based index or option text to a letter; None if not."""
    if value is None or not options:
        return None
    n = len(options)
    if fmt in ("index0", "index1"):
        try:
            idx = int(value) - (1 if fmt == "index1" else 0)
        except (TypeError, ValueError):
            return None
        return LETTERS[idx] if 0 <= idx < n else None
    s = str(value).strip()
    if fmt in ("auto", "letter"):
        m = _LETTER_RE.match(s)
        if m and m.group(1).upper() in LETTERS[:n]:
            return m.group(1).upper()
        if fmt == "letter":
            return None
    if fmt in ("auto", "text"):
        target = norm_text(strip_option_prefix(s))
        hits = [i for i, o in enumerate(options) if norm_text(o) == target]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    return None


def is_blank(value: Any) -> bool:
    """True for None, NaN and strings that are empty after stripping."""
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return isinstance(value, str) and not value.strip()


def keep_positions(values: list[Any]) -> list[str]:
    """Option texts in position: a blank one stays as "" (Item validation quarantines the
    row as `blank_option`), since dropping it would shift every later letter. Trailing
    blanks are dropped (fixed-width tables pad short option lists); no letter moves."""
    out = ["" if is_blank(v) else str(v) for v in values]
    while out and out[-1] == "":
        out.pop()
    return out


def literal(text: str) -> Any:
    """A JSON or Python literal (list, dict, ...) written as a string; None when it is not one."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        import ast

        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None


def options_from(value: Any) -> list[str]:
    """Options from a list, a dict keyed by letters, or a Python/JSON literal string of a list."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        parsed = literal(s) if s.startswith(("[", "{")) else None
        if parsed is None:
            return [value]
        value = parsed
    if isinstance(value, dict):
        return keep_positions([value[k] for k in sorted(value, key=lambda k: (len(str(k)), str(k)))])
    return keep_positions(list(value))


# --------------------------------------------------------------------------- images


def resolve_image(payload: Any, store: ImageStore, roots: Iterable[Path],
                  allow_outside: bool = True) -> str:
    """Put one image payload into the store and return its ref; raises ImageError.

    A path payload is looked up under `roots`; unless `allow_outside`, a path that leads
    outside every root (absolute, with "..", or through a symlink) is refused, so a data
    file cannot make the loader read arbitrary files of the machine.
    """
    roots = list(roots)
    if payload is None:
        raise ImageError("image missing (empty value)")
    label = None
    if isinstance(payload, dict):  # Hugging Face Image feature, undecoded
        label = payload.get("path") or None
        if payload.get("bytes"):
            return store.put_bytes(payload["bytes"], name=label)
        payload = payload.get("path")
        if not payload:
            raise ImageError("image missing (no bytes and no path)")
    if isinstance(payload, bytes | bytearray):
        return store.put_bytes(bytes(payload))
    if hasattr(payload, "save") and hasattr(payload, "size"):  # PIL image
        return store.put_image(payload)
    p = Path(str(payload))
    if not p.is_absolute():
        for root in roots:
            if (root / p).exists():
                p = root / p
                break
    if not p.exists():
        raise ImageError(f"image file not found: {payload}")
    if not allow_outside and not _inside_any(p, roots):
        raise ImageError(f"image path {payload} leads outside the source's folders "
                         f"({', '.join(str(r) for r in roots) or 'none'}); set "
                         "allow_images_outside_root: true on the source to allow it")
    return store.put_file(p)


def _inside_any(path: Path, roots: Iterable[Path]) -> bool:
    """True when `path`, with symlinks and '..' resolved, lies under one of `roots`."""
    real = path.resolve()
    for root in roots:
        try:
            real.relative_to(root.resolve())
            return True
        except ValueError:
            continue
    return False


def image_roots(spec: SourceSpec) -> list[Path]:
    roots = []
    if spec.image_root:
        roots.append(Path(spec.image_root))
    if spec.path and Path(spec.path).exists():
        p = Path(spec.path)
        roots.append(p if p.is_dir() else p.parent)
    return roots


# --------------------------------------------------------------------------- building


def infer_task(options: list[str], images: list[Any]) -> str:
    if options:
        return "mm_reasoning" if images else "text"
    return "open_vqa" if images else "text"


@dataclass
class BuildStats:
    rows: int = 0
    items: int = 0
    quarantined: int = 0
    skipped: int = 0  # rows an adapter filtered out on purpose (not quarantined)
    skip_reasons: dict[str, int] = field(default_factory=dict)


def build_items(
    spec: SourceSpec,
    stream: RawStream,
    *,
    store: ImageStore | None,
    quarantine: list[QuarantineRow] | None,
    batch_size: int = 4096,
    stats: BuildStats | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[pa.Table]:
    """Validate a raw stream into Arrow tables of Items; bad rows go to `quarantine`."""
    seen: set[str] = set()
    stats = stats if stats is not None else BuildStats()
    sink = quarantine if quarantine is not None else []
    roots = image_roots(spec)
    pending: list[Item] = []
    rows_of: dict[str, int] = {}  # item id -> row index, for rows that fail late

    def reject(idx: int, reason: str, detail: str, raw: Any, item_id: str | None = None) -> None:
        if item_id is None:  # every quarantined row can be found again: native id or row
            native = raw.get("id") if isinstance(raw, dict) else None
            item_id = f"{spec.name}/{native if native not in (None, '') else idx}"
        sink.append(QuarantineRow(stage="ingest", source=spec.name, row=idx, item_id=item_id,
                                  reason=reason, detail=detail, raw=raw_json(raw)))
        stats.quarantined += 1

    def emit(batch: list[Item]) -> pa.Table | None:
        try:
            return to_table(batch, ITEM_SCHEMA)
        except (UnicodeEncodeError, pa.ArrowException):
            pass
        # Some row cannot become Arrow (a lone surrogate such as "\ud800" is valid JSON
        # but not UTF-8): convert one by one and quarantine the rows that fail.
        good = []
        for it in batch:
            try:
                to_table([it], ITEM_SCHEMA)
            except (UnicodeEncodeError, pa.ArrowException) as e:
                field = _unencodable_field(it)
                reject(rows_of.get(it.id, -1), "invalid_text",
                       f"field {field or '?'} cannot be stored as UTF-8 text: {e}",
                       it.model_dump(mode="json"), _utf8(it.id))
                stats.items -= 1
                continue
            good.append(it)
        return to_table(good, ITEM_SCHEMA) if good else None

    for idx, raw in stream:
        stats.rows += 1
        if on_rows is not None:
            on_rows(1)
        if isinstance(raw, Skip):
            stats.skipped += 1
            stats.skip_reasons[raw.reason] = stats.skip_reasons.get(raw.reason, 0) + 1
            continue
        if isinstance(raw, Reject):
            reject(idx, raw.reason, raw.detail, raw.raw, raw.item_id)
            continue
        row = dict(raw)
        native_id = row.get("id")
        row["id"] = f"{spec.name}/{native_id if native_id not in (None, '') else idx}"
        row["source"] = spec.name
        row.setdefault("split", spec.split)
        row["split"] = row["split"] or spec.split
        payloads = row.get("images") or []
        if spec.task:
            row["task"] = spec.task
        elif not row.get("task"):
            row["task"] = infer_task(row.get("options") or [], payloads)
        if spec.modality and not row.get("modality"):
            row["modality"] = spec.modality
        if spec.anatomy and not row.get("anatomy"):
            row["anatomy"] = spec.anatomy
        if row["id"] in seen:
            reject(idx, "duplicate_id", f"id {row['id']!r} already seen in this source", raw, row["id"])
            continue
        refs = []
        if payloads:
            if store is None:
                reject(idx, "image_missing", "no image store given to the loader", raw, row["id"])
                continue
            try:
                refs = [resolve_image(p, store, roots, spec.allow_images_outside_root)
                        for p in payloads]
            except ImageError as e:
                reject(idx, _image_reason(str(e)), str(e), _display_raw(raw), row["id"])
                continue
        row["images"] = refs
        items, bad = validate_items([(idx, row)], source=spec.name)
        if bad:
            bad[0].raw = raw_json(_display_raw(raw))
            sink.extend(bad)
            stats.quarantined += 1
            continue
        seen.add(row["id"])
        pending.append(items[0])
        rows_of[row["id"]] = idx
        stats.items += 1
        if len(pending) >= batch_size:
            table = emit(pending)
            pending, rows_of = [], {}
            if table is not None:
                yield table
    if pending:
        table = emit(pending)
        if table is not None:
            yield table


def _image_reason(message: str) -> str:
    """The quarantine reason for an ImageError message."""
    if "leads outside" in message:
        return "image_outside_root"
    if "larger than the limit" in message:
        return "image_too_large"
    if "not found" in message or "missing" in message:
        return "image_missing"
    return "image_undecodable"


def _unencodable_field(item: Item) -> str | None:
    """The first field of an Item whose text cannot be encoded as UTF-8."""
    for name in ("id", "question", "answer", "options", "modality", "anatomy", "meta"):
        value = getattr(item, name)
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return name
    return None


def _utf8(text: str) -> str:
    """`text` with characters UTF-8 cannot hold (lone surrogates) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _display_raw(raw: Any) -> Any:
    """Drop image bytes from a raw row before it is written to the quarantine table."""
    if not isinstance(raw, dict):
        return raw
    out = {}
    for k, v in raw.items():
        if isinstance(v, bytes | bytearray):
            out[k] = f"<{len(v)} bytes>"
        elif isinstance(v, list) and any(isinstance(x, bytes | bytearray | dict) for x in v):
            out[k] = [f"<{len(x)} bytes>" if isinstance(x, bytes | bytearray) else
                      (x.get("path") if isinstance(x, dict) else x) for x in v]
        elif isinstance(v, dict) and "bytes" in v:
            out[k] = v.get("path") or "<image bytes>"
        else:
            out[k] = v
    return out


def clean_meta(rec: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Subset of a record kept in Item.meta (JSON-safe values only)."""
    meta = {}
    for k in keys:
        if k in rec and rec[k] is not None:
            v = rec[k]
            meta[k] = v if isinstance(v, str | int | float | bool | list | dict) else str(v)
    return meta


def as_text(value: Any) -> str:
    return "" if value is None else str(value)


__all__ = [
    "Reject", "Skip", "RawStream", "read_records", "enumerate_records", "answer_to_letter", "options_from",
    "is_blank", "keep_positions",
    "strip_option_prefix", "resolve_image", "build_items", "clean_meta", "infer_task", "as_text",
    "BuildStats", "detect_format", "io",
]
