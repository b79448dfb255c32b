"""Figure records (one sub-figure with its texts) and the adapters that read them.

A `FigureRecord` is what curation starts from: one image (a content hash in the image
store), its sub-caption, the full caption, the in-text references (paragraphs of the article
that cite the figure), the article and figure ids, the panel, the license, a modality when
known, and whatever else the source carries (`meta`).

Adapters (`medrecipe curate` recipes name them under `sources[].adapter`):

| adapter | reads | field names |
|---|---|---|
| `generic` | JSONL / JSON / CSV / Parquet / HF dataset | FigureRecord names, or `mapping` (field -> column) |
| `open_pmc` | Open-PMC-18M style sub-figure records | `image`/`media_name`, `sub_caption`, `full_caption`, `intext_refs`, `PMC_ID`, `media_id`, `subfigure_label`, `license`, `modality` |
| `pmc_oa` | PMC-OA `pmc_oa.jsonl` (+ images folder) | `image`, `caption`, `pmcid` (`url_name` kept in meta) |
| `medicat` | MedICaT JSONL (+ `figures/` folder) | `pdf_hash`, `fig_uri`, `fig_key`, `s2_caption`, `s2orc_references`, `radiology`, `predicted_type`, `oa_info` |
| `roco` | a ROCO folder (`captions.txt` keyed by image id, optional `dlinks.txt`, `licences.txt`, `keywords.txt`, `images/`) | `ROCO_xxxxx<TAB>text` lines |

Every mapping value may list alternatives separated by `|` (the first non-empty column wins)
and dotted paths into nested objects (`oa_info.license`). Rows without an image, or with
no text at all, are quarantined with a reason; the run goes on.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medrecipe.curate.config import FigureSourceSpec
from medrecipe.errors import ImageError, SourceError
from medrecipe.images import ImageStore
from medrecipe.schema import QuarantineRow, raw_json
from medrecipe.sources.base import (
    BuildStats,
    Reject,
    _display_raw,
    enumerate_records,
    image_roots,
    literal,
    resolve_image,
)

# --------------------------------------------------------------------------- the record


class FigureRecord(BaseModel):
    """One sub-figure of an article with its sub-caption, caption and in-text references."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)  # "<source name>/<native id>"
    source: str = Field(min_length=1)
    image: str = Field(min_length=1)  # image store ref (SHA-256 of the original bytes)
    sub_caption: str | None = None
    caption: str | None = None
    references: list[str] = Field(default_factory=list)
    article_id: str | None = None
    figure_id: str | None = None
    panel: str | None = None
    license: str | None = None
    modality: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    def texts(self) -> list[str]:
        """Sub-caption, caption and references that are not empty."""
        return [t for t in (self.sub_caption, self.caption, *self.references) if t]

    def context(self) -> dict[str, Any]:
        """The texts a prompt (or a report card) shows for this record."""
        return {"sub_caption": self.sub_caption, "caption": self.caption,
                "references": list(self.references), "panel": self.panel,
                "modality": self.modality, "article_id": self.article_id,
                "figure_id": self.figure_id}


FIGURE_RECORD_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("image", pa.string(), nullable=False),
    pa.field("sub_caption", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("references", pa.list_(pa.string()), nullable=False),
    pa.field("article_id", pa.string()),
    pa.field("figure_id", pa.string()),
    pa.field("panel", pa.string()),
    pa.field("license", pa.string()),
    pa.field("modality", pa.string()),
    pa.field("meta", pa.string(), nullable=False),  # JSON object
])


def records_to_table(records: list[FigureRecord]) -> pa.Table:
    """Arrow table of FigureRecords."""
    rows = []
    for r in records:
        row = r.model_dump()
        row["meta"] = json.dumps(row["meta"], ensure_ascii=False, sort_keys=True, default=str)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=FIGURE_RECORD_SCHEMA)


def records_from_table(table: pa.Table) -> list[FigureRecord]:
    """FigureRecord objects from an Arrow table (stored rows are not re-validated)."""
    out = []
    for row in table.to_pylist():
        row["meta"] = json.loads(row["meta"]) if row.get("meta") else {}
        row["references"] = row.get("references") or []
        out.append(FigureRecord.model_construct(**row))
    return out


# --------------------------------------------------------------------------- registry


@dataclass
class RecordAdapter:
    """A figure-record adapter: a raw-row generator and what its `path` should be."""

    name: str
    fn: Callable[[FigureSourceSpec], Iterator[tuple[int, dict[str, Any] | Reject]]]
    description: str
    needs: str


ADAPTERS: dict[str, RecordAdapter] = {}


def register(name: str, description: str, needs: str):
    """Decorator registering a figure-record adapter."""

    def deco(fn):
        ADAPTERS[name] = RecordAdapter(name, fn, description, needs)
        return fn

    return deco


def get_adapter(name: str) -> RecordAdapter:
    """The adapter registered under `name`; SourceError lists the known ones."""
    if name not in ADAPTERS:
        raise SourceError(f"unknown figure-record adapter {name!r}; known: "
                          f"{', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]


# --------------------------------------------------------------------------- field access


def get_path(rec: dict[str, Any], column: str) -> Any:
    """Value of `column` in a record: dotted paths into dicts, `a|b` alternatives."""
    for alt in column.split("|"):
        cur: Any = rec
        for part in alt.strip().split("."):
            if not isinstance(cur, dict) or part not in cur:
                cur = None
                break
            cur = cur[part]
        if cur is not None and not (isinstance(cur, str) and not cur.strip()) and cur != []:
            return cur
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = " ".join(str(value).split())
    return s or None


def text_list(value: Any) -> list[str]:
    """In-text references from a list, a JSON/Python list literal, or one string."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        parsed = literal(s) if s.startswith("[") else None
        value = parsed if parsed is not None else [s]
    if isinstance(value, dict):  # {"paragraph id": "text", ...}
        value = list(value.values())
    if not isinstance(value, list | tuple):
        value = [value]
    out = []
    for v in value:
        if isinstance(v, dict):  # {"text": ...} style reference objects
            v = v.get("text") or v.get("paragraph")
        t = _text(v)
        if t:
            out.append(t)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def map_fields(rec: dict[str, Any], mapping: dict[str, str], identity: bool = True
               ) -> dict[str, Any]:
    """FigureRecord fields of one raw record (image kept as its raw payload).

    A field missing from `mapping` reads the column of its own name when `identity` is on
    (the generic adapter), and stays empty otherwise (presets name every column they read).
    """

    def col(field: str) -> Any:
        column = mapping.get(field, field if identity else None)
        return get_path(rec, column) if column else None

    out: dict[str, Any] = {"image": col("image")}
    for f in ("sub_caption", "caption", "article_id", "figure_id", "panel", "license",
              "modality"):
        out[f] = _text(col(f))
    out["references"] = text_list(col("references"))
    native = col("id")
    out["native_id"] = None if native is None else str(native)
    meta_cols = mapping.get("meta")
    out["meta"] = ({c.strip(): _jsonable(get_path(rec, c.strip())) for c in meta_cols.split(",")
                    if get_path(rec, c.strip()) is not None} if meta_cols else {})
    return out


def _preset_fields(rec: dict[str, Any], spec: FigureSourceSpec, preset: dict[str, str]
                   ) -> dict[str, Any]:
    """Fields of a record read through a preset mapping (the recipe's mapping wins)."""
    return map_fields(rec, {**preset, **spec.mapping}, identity=False)


def _mapped(spec: FigureSourceSpec, row_of: Callable[[dict[str, Any]], dict[str, Any]]):
    """(row index, figure row or Reject) for every record of a file-backed source."""
    for idx, rec in enumerate_records(spec.reader_spec()):
        if "__reject__" in rec:
            yield idx, rec["__reject__"]
        else:
            yield idx, row_of(rec) | {"raw": rec}


# --------------------------------------------------------------------------- adapters


@register("generic", "Figure records in any JSONL / JSON / CSV / Parquet / HF dataset, with a "
          "field mapping", "a file (jsonl, json, csv, parquet), a save_to_disk folder, or a hub id")
def generic(spec: FigureSourceSpec):
    """Raw figure rows with FigureRecord names, or the names `mapping` gives."""
    yield from _mapped(spec, lambda rec: map_fields(rec, spec.mapping))


OPEN_PMC_MAPPING = {
    "id": "id", "image": "image|jpg|media_name|image_path",
    "sub_caption": "sub_caption|subcaption", "caption": "full_caption|caption",
    "references": "intext_refs|inline_references|references",
    "article_id": "PMC_ID|pmcid|article_id", "figure_id": "media_id|figure_id",
    "panel": "subfigure_label|panel", "license": "license", "modality": "modality",
    "meta": "media_url,year,keywords,journal",
}


@register("open_pmc", "Open-PMC-18M style sub-figure records (sub-caption, full caption, "
          "in-text references)", "a JSONL / Parquet file, a save_to_disk folder, or a hub id")
def open_pmc(spec: FigureSourceSpec):
    """Raw figure rows of Open-PMC style records (column names overridable by `mapping`)."""

    def row_of(rec: dict[str, Any]) -> dict[str, Any]:
        row = _preset_fields(rec, spec, OPEN_PMC_MAPPING)
        if row["native_id"] is None and row["article_id"] and row["figure_id"]:
            row["native_id"] = "_".join(x for x in (row["article_id"], row["figure_id"],
                                                    row["panel"]) if x)
        row["image"] = _locate(row["image"], spec, ("images", "figures"))
        return row

    yield from _mapped(spec, row_of)


_PMC_OA_NAME = re.compile(r"^(PMC\d+)_(.+?)(?:_(\d+))?\.\w+$")


@register("pmc_oa", "PMC-OA sub-figure / caption pairs (pmc_oa.jsonl with an images folder)",
          "pmc_oa.jsonl (or pmc_oa_beta.jsonl); image_root: the unzipped images folder")
def pmc_oa(spec: FigureSourceSpec):
    """Raw figure rows of PMC-OA (`caption` is the sub-caption; set caption_kind: full for Beta)."""
    kind = str(spec.options.get("caption_kind", "sub"))
    if kind not in ("sub", "full"):
        raise SourceError(f"source {spec.name!r}: options.caption_kind must be sub or full")
    preset = {"id": "id", "image": "image", "article_id": "pmcid", "meta": "url_name",
              ("sub_caption" if kind == "sub" else "caption"): "caption"}

    def row_of(rec: dict[str, Any]) -> dict[str, Any]:
        row = _preset_fields(rec, spec, preset)
        name = rec.get("image")
        m = _PMC_OA_NAME.match(Path(str(name)).name) if isinstance(name, str) else None
        if m:  # PMC212319_Fig3_4.jpg: article PMC212319, figure Fig3, sub-figure 4
            row["article_id"] = row["article_id"] or m.group(1)
            row["figure_id"] = row["figure_id"] or m.group(2)
            row["panel"] = row["panel"] or m.group(3)
        if row["native_id"] is None and isinstance(name, str):
            row["native_id"] = Path(name).stem
        row["image"] = _locate(row["image"], spec, ("images",))
        return row

    yield from _mapped(spec, row_of)


MEDICAT_MAPPING = {
    "caption": "s2_caption|s2orc_caption", "references": "s2orc_references",
    "article_id": "oa_info.pmcid|pdf_hash", "figure_id": "fig_key",
    "license": "oa_info.license", "meta": "pdf_hash,fig_uri,predicted_type,radiology,scope,"
                                          "oa_info.doi",
}


@register("medicat", "MedICaT figures with captions and S2ORC in-text references",
          "the MedICaT JSONL file; image_root: the folder of <pdf_hash>_<fig_uri> images")
def medicat(spec: FigureSourceSpec):
    """Raw figure rows of MedICaT (images named <pdf_hash>_<fig_uri>)."""

    def row_of(rec: dict[str, Any]) -> dict[str, Any]:
        row = _preset_fields(rec, spec, MEDICAT_MAPPING)
        pdf, uri = rec.get("pdf_hash"), rec.get("fig_uri")
        if "image" in spec.mapping:
            payload = row["image"]
        else:
            payload = f"{pdf}_{uri}" if pdf and uri else None
        row["image"] = _locate(payload, spec, ("figures", "release/figures"))
        if row["figure_id"] is None and isinstance(uri, str):  # "2-Figure1-1.png" -> Figure1
            m = re.match(r"^\d+-(\w+?)-\d+\.\w+$", uri)
            row["figure_id"] = m.group(1) if m else None
        if rec.get("radiology") is True and not row["modality"]:
            row["modality"] = "radiology"
        if row["native_id"] is None and pdf and uri:
            row["native_id"] = f"{pdf}_{Path(str(uri)).stem}"
        if isinstance(rec.get("oa_info"), dict):
            row["meta"]["oa_info"] = _jsonable(rec["oa_info"])
        return row

    yield from _mapped(spec, row_of)


def _locate(payload: Any, spec: FigureSourceSpec, subdirs: tuple[str, ...]) -> Any:
    from medrecipe.sources.vqa import locate_image

    return locate_image(payload, spec.reader_spec(), subdirs)


# ----- ROCO: one folder of tab-separated files keyed by image id


def _keyed_lines(path: Path) -> dict[str, list[str]]:
    """{image id: the other tab-separated fields} of a ROCO text file."""
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts and parts[0].strip():
                out[parts[0].strip()] = [p.strip() for p in parts[1:]]
    return out


def _first_file(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    return None


def _roco_captions(path: Path) -> Iterator[tuple[str, str]]:
    if path.suffix.lower() == ".csv":  # ROCOv2: ID,Caption
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                key = row.get("ID") or row.get("id") or row.get("image_id")
                if key:
                    yield key.strip(), (row.get("Caption") or row.get("caption") or "").strip()
        return
    for key, fields in _keyed_lines(path).items():
        yield key, " ".join(fields).strip()


_PMC_ID = re.compile(r"(PMC\d+)")


@register("roco", "ROCO / ROCOv2 captions keyed by image id, with download links, licences "
          "and keywords when present", "a ROCO split folder (data/<split>/<class>) holding "
          "captions.txt (or a captions CSV); images under images/ or image_root")
def roco(spec: FigureSourceSpec):
    """Raw figure rows of a ROCO folder (one per caption line)."""
    if not spec.path:
        raise SourceError(f"source {spec.name!r}: set `path` to a ROCO folder or captions file")
    p = Path(spec.path)
    if not p.exists():
        raise SourceError(f"source {spec.name!r}: {p} does not exist")
    folder = p if p.is_dir() else p.parent
    cap_file = p if p.is_file() else _first_file(
        folder, ("captions.txt", "*captions*.txt", "*captions*.csv", "*caption*.csv"))
    if cap_file is None:
        raise SourceError(f"source {spec.name!r}: no captions file (captions.txt or a "
                          f"captions CSV) in {folder}")
    extra = {}
    for key, pats in (("dlinks", ("dlinks*.txt",)), ("licences", ("licences*.txt", "licenses*.txt")),
                      ("keywords", ("keywords*.txt",))):
        f = _first_file(folder, pats)
        extra[key] = _keyed_lines(f) if f else {}
    roots = image_roots(spec.reader_spec()) + [folder / "images"]
    for idx, (key, caption) in enumerate(_roco_captions(cap_file)):
        if spec.limit is not None and idx >= spec.limit:
            return
        link = extra["dlinks"].get(key, [])
        pmc = next((m.group(1) for f in link for m in [_PMC_ID.search(f)] if m), None)
        name = link[-1] if link else None
        candidates = ([f"{pmc}_{name}"] if pmc and name else []) + ([name] if name else []) \
            + [f"{key}{ext}" for ext in (".jpg", ".png", ".jpeg")]
        image = next((str(r / c) for c in candidates for r in roots if (r / c).is_file()),
                     candidates[0])
        lic = extra["licences"].get(key)
        kws = extra["keywords"].get(key)
        row = {"native_id": key, "image": image, "sub_caption": None, "caption": _text(caption),
               "references": [], "article_id": pmc, "figure_id": name, "panel": None,
               "license": _text(" ".join(lic)) if lic else None, "modality": None,
               "meta": {"roco_class": folder.name,
                        **({"keywords": " ".join(kws).split()} if kws else {})}}
        yield idx, row | {"raw": {"id": key, "caption": caption, "dlinks": link}}


# --------------------------------------------------------------------------- building


def build_records(spec: FigureSourceSpec, stream, *, store: ImageStore,
                  quarantine: list[QuarantineRow], stats: BuildStats, batch_size: int = 4096,
                  stage: str = "curate.ingest", on_rows: Callable[[int], None] | None = None
                  ) -> Iterator[pa.Table]:
    """Validate raw figure rows into Arrow tables of FigureRecords; bad rows are quarantined."""
    seen: set[str] = set()
    roots = image_roots(spec.reader_spec())
    pending: list[FigureRecord] = []

    def reject(idx: int, reason: str, detail: str, raw: Any, rid: str | None) -> None:
        quarantine.append(QuarantineRow(stage=stage, source=spec.name, row=idx, item_id=rid,
                                        reason=reason, detail=detail,
                                        raw=raw_json(_display_raw(raw))))
        stats.quarantined += 1

    for idx, raw in stream:
        stats.rows += 1
        if on_rows is not None:
            on_rows(1)
        if isinstance(raw, Reject):
            reject(idx, raw.reason, raw.detail, raw.raw, raw.item_id)
            continue
        row = dict(raw)
        original = row.pop("raw", row)
        native = row.pop("native_id", None)
        rid = f"{spec.name}/{native if native not in (None, '') else idx}"
        if rid in seen:
            reject(idx, "duplicate_id", f"id {rid!r} already seen in this source", original, rid)
            continue
        if not any((row.get("sub_caption"), row.get("caption"), row.get("references"))):
            reject(idx, "no_text", "no sub-caption, caption or in-text reference", original, rid)
            continue
        payload = row.get("image")
        if isinstance(payload, list):
            if len(payload) != 1:
                reject(idx, "no_image" if not payload else "several_images",
                       f"expected one image per figure record, got {len(payload)}", original, rid)
                continue
            payload = payload[0]
        if payload is None or (isinstance(payload, str) and not payload.strip()):
            reject(idx, "no_image", "the record names no image", original, rid)
            continue
        try:
            ref = resolve_image(payload, store, roots)
        except ImageError as e:
            reason = "image_missing" if "not found" in str(e) or "missing" in str(e) \
                else "image_undecodable"
            reject(idx, reason, str(e), original, rid)
            continue
        row.update(id=rid, source=spec.name, image=ref,
                   modality=row.get("modality") or spec.modality,
                   license=row.get("license") or spec.license)
        try:
            rec = FigureRecord(**row)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err.get("loc", ())) or "record"
            reject(idx, f"invalid_{field.split('.')[0]}", err.get("msg", str(e)), original, rid)
            continue
        seen.add(rid)
        pending.append(rec)
        stats.items += 1
        if len(pending) >= batch_size:
            yield records_to_table(pending)
            pending = []
    if pending:
        yield records_to_table(pending)


def load_records(spec: FigureSourceSpec, *, store: ImageStore, quarantine: list[QuarantineRow],
                 stats: BuildStats | None = None, batch_size: int = 4096,
                 on_rows: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """Stream a figure-record source as Arrow tables; unusable rows go to `quarantine`."""
    adapter = get_adapter(spec.adapter)
    yield from build_records(spec, adapter.fn(spec), store=store, quarantine=quarantine,
                             stats=stats if stats is not None else BuildStats(),
                             batch_size=batch_size, on_rows=on_rows)
