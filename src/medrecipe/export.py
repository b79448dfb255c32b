"""Export stage: selected examples as training files for LLaMA-Factory, TRL and plain JSONL.

Layout under the output folder (``<name>`` is ``ExportConfig.dataset_name``; a ``val`` file
or split exists only when the selection has validation rows):

    llamafactory/dataset_info.json       entries "<name>" and "<name>_val"
    llamafactory/<name>_train.json       sharegpt records: messages + images (paths, see below)
    llamafactory/<name>_val.json
    trl/                                 datasets.DatasetDict (save_to_disk): train, validation
    trl_parquet/train.parquet            the same splits as Parquet (loadable with datasets)
    trl_parquet/validation.parquet
    jsonl/<name>_train.jsonl             one self-describing JSON object per example
    jsonl/<name>_val.jsonl
    images/                              only with ``images: copy``: the images the files name

Image paths in the LLaMA-Factory and JSONL files follow ``ExportConfig.images``:
``relative`` (default) writes them relative to the folder of the file that names them
(LLaMA-Factory joins a relative media path to ``media_dir``, which defaults to
``dataset_dir``, the folder of dataset_info.json), so the export keeps working when the run
folder is moved or copied whole; ``copy`` copies the images into ``images/`` of the export
and names them relative too, so the export folder alone can be moved; ``absolute`` writes
absolute paths. The TRL export embeds image bytes (``embed_images``, default true) and so
loads wherever it is moved; with ``embed_images: false`` it stores absolute paths, because
``datasets`` opens a relative path from the current directory, not from the dataset.

LLaMA-Factory records follow its documented multimodal sharegpt layout with OpenAI-style
tags: ``{"messages": [{"role": "system"?}, {"role": "user", "content": "<image>..."},
{"role": "assistant", "content": target}], "images": [paths]}`` with one ``<image>`` token
per image. TRL rows hold ``messages`` whose contents are typed parts (``{"type": "image"}``
placeholders then ``{"type": "text", "text": ...}``) and an ``images`` column of
``datasets.Image`` values, the layout TRL's vision-language collator consumes.

Literal media tokens inside question, option or target text (``<image>``, ``<video>``,
``<audio>``, ``<|...|>``) are rewritten to ``[image]`` etc., because trainers count them as
placeholders and a stray one would misalign images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medrecipe.config import ExportConfig
from medrecipe.errors import UserError
from medrecipe.schema import LETTERS
from medrecipe.select import SelectResult

IMAGE_TOKEN = "<image>"
_MEDIA_TOKEN = re.compile(r"<(image|video|audio)>|<\|([A-Za-z0-9_]+)\|>")

# LLaMA-Factory's documented sharegpt tag defaults, used when an entry leaves a tag out.
LF_TAG_DEFAULTS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
LF_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
           "assistant_tag": "assistant", "system_tag": "system"}

ImageResolver = Callable[[str], Path]
IMAGES_DIR = "images"  # under the export folder, with ``images: copy``


class ExportError(UserError):
    """The selection cannot be exported (missing images, bad input)."""


# --------------------------------------------------------------------------- inputs


class Rows:
    """The selected examples of one split, read in batches: an in-memory table, or a Parquet
    file / folder of shards (the run's selected outputs), so an export never holds them all."""

    def __init__(self, source: pa.Table | str | os.PathLike):
        self.source = source if isinstance(source, pa.Table) else Path(source)

    @property
    def num_rows(self) -> int:
        if isinstance(self.source, pa.Table):
            return self.source.num_rows
        from medrecipe.shards import num_rows

        return num_rows(self.source)

    def batches(self, size: int = 512) -> Iterator[pa.Table]:
        if isinstance(self.source, pa.Table):
            for b in self.source.to_batches(max_chunksize=size):
                yield pa.Table.from_batches([b])
            return
        from medrecipe.shards import iter_batches

        yield from iter_batches(self.source, size)


def _splits(selected: SelectResult | Mapping[str, Any] | pa.Table) -> dict[str, Rows]:
    if isinstance(selected, SelectResult):
        return {"train": Rows(selected.train), "val": Rows(selected.val)}
    if isinstance(selected, pa.Table):
        if "split" not in selected.column_names:
            return {"train": Rows(selected)}
        is_val = pc.equal(selected.column("split"), "val")
        return {"train": Rows(selected.filter(pc.invert(is_val))),
                "val": Rows(selected.filter(is_val))}
    out = {}
    for name, table in selected.items():
        key = "val" if name in ("val", "validation", "selected_val") else (
            "train" if name in ("train", "selected_train") else name)
        out[key] = table if isinstance(table, Rows) else Rows(table)
    return out


def make_resolver(image_store: Any) -> ImageResolver | None:
    """A function ref -> absolute image path from an ImageStore, a folder or a callable."""
    if image_store is None:
        return None
    if callable(image_store) and not hasattr(image_store, "path"):
        return lambda ref: Path(image_store(ref)).resolve()
    if isinstance(image_store, (str, os.PathLike)):
        from medrecipe.images import ImageStore

        image_store = ImageStore(image_store)
    return lambda ref: Path(image_store.path(ref)).resolve()


def _store_root(image_store: Any) -> Path | None:
    if isinstance(image_store, (str, os.PathLike)):
        return Path(image_store).resolve()
    root = getattr(image_store, "root", None)
    return Path(root).resolve() if root is not None else None


class ImagePlacer:
    """Where an exported file says an image is, by ``ExportConfig.images``.

    Paths are computed against the export's final folder (not the staging folder it is
    written in; both are siblings, so nothing else changes). With ``copy`` each image is copied
    (hard-linked where the file system allows; store files are never modified in place) into
    ``<stage>/images/`` once, under its path in the image store.
    """

    def __init__(self, mode: str, stage: Path, final: Path, store_root: Path | None):
        self.mode, self.stage, self.final = mode, stage, final.resolve()
        self.store_root = store_root
        self._copied: set[str] = set()

    def _copy_name(self, p: Path) -> str:
        if self.store_root is not None and p.is_relative_to(self.store_root):
            return p.relative_to(self.store_root).as_posix()
        # not from the store: a short hash of the source path keeps equal names apart
        return f"other/{hashlib.sha256(str(p).encode()).hexdigest()[:16]}/{p.name}"

    def place(self, p: Path) -> Path:
        """The image's absolute path once the export is in place (its copy, with ``copy``)."""
        if self.mode != "copy":
            return p
        name = self._copy_name(p)
        if name not in self._copied:
            dest = self.stage / IMAGES_DIR / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(p, dest)
            except OSError:
                shutil.copy2(p, dest)
            self._copied.add(name)
        return self.final / IMAGES_DIR / name

    def ref(self, p: Path, folder: str) -> str:
        """The path string written in a file of export folder `folder` (e.g. "llamafactory")."""
        placed = self.place(p)
        if self.mode == "absolute":
            return str(placed)
        return Path(os.path.relpath(placed, self.final / folder)).as_posix()


def defuse_media_tokens(text: str) -> str:
    """Rewrite literal media placeholders so trainers do not count them as images."""
    return _MEDIA_TOKEN.sub(lambda m: f"[{m.group(1) or m.group(2)}]", text)


def user_prompt(question: str, options: list[str], instruction: str | None = None) -> str:
    """The student's prompt: question, lettered options, optional instruction."""
    parts = [defuse_media_tokens(question.strip())]
    if options:
        parts.append("\n".join(f"{LETTERS[i]}. {defuse_media_tokens(o)}"
                               for i, o in enumerate(options)))
    if instruction:
        parts.append(instruction.strip())
    return "\n\n".join(parts)


def _examples(rows: Rows, resolve: ImageResolver | None, config: ExportConfig
               ) -> Iterator[dict[str, Any]]:
    for row in (r for batch in rows.batches() for r in batch.to_pylist()):
        refs = list(row.get("images") or [])
        if refs and resolve is None:
            raise ExportError("the selection has images but no image store was given to export")
        paths = []
        for ref in refs:
            try:
                p = resolve(ref)  # type: ignore[misc]
            except UserError as e:
                raise ExportError(f"example {row['id']}: {e}") from None
            if not p.is_file():
                raise ExportError(f"example {row['id']}: image file {p} does not exist")
            paths.append(p)
        row["image_paths"] = paths
        row["prompt"] = user_prompt(row["question"], list(row.get("options") or []),
                                    config.instruction)
        row["response"] = defuse_media_tokens(row["target"])
        yield row


# --------------------------------------------------------------------------- LLaMA-Factory


def llamafactory_record(ex: dict[str, Any], system_prompt: str | None,
                       images: list[str] | None = None) -> dict[str, Any]:
    """One sharegpt record (OpenAI tags) with one <image> token per image.

    `images` are the path strings to write (default: the resolved absolute paths)."""
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": IMAGE_TOKEN * len(ex["image_paths"]) + ex["prompt"]})
    messages.append({"role": "assistant", "content": ex["response"]})
    if images is None:
        images = [str(p) for p in ex["image_paths"]]
    return {"messages": messages, "images": images}


def llamafactory_entry(file_name: str) -> dict[str, Any]:
    """The dataset_info.json entry for one exported sharegpt file."""
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"}, "tags": dict(LF_TAGS)}


def _write_json(path: Path, data: Any) -> None:
    from medrecipe.store import atomic_write_text

    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1))


def _write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write lines to a temporary file as they come, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _write_json_array(path: Path, records: Iterable[Any]) -> None:
    """A JSON array written record by record (one per line), never held whole in memory."""
    def lines() -> Iterator[str]:
        yield "["
        for i, rec in enumerate(records):
            yield ("\n" if i == 0 else ",\n") + json.dumps(rec, ensure_ascii=False)
        yield "\n]\n"

    _write_lines(path, lines())


def export_llamafactory(splits: dict[str, Rows], out: Path, resolve: ImageResolver | None,
                        config: ExportConfig, placer: ImagePlacer | None = None
                        ) -> dict[str, Path]:
    """Write sharegpt JSON files and register them in out/dataset_info.json."""
    def images(ex: dict[str, Any]) -> list[str] | None:
        return None if placer is None else [placer.ref(p, "llamafactory")
                                            for p in ex["image_paths"]]

    out.mkdir(parents=True, exist_ok=True)
    info_path = out / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.exists():  # keep entries a user already has in this folder
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            raise ExportError(f"{info_path} exists but is not valid JSON; fix or remove it") from None
    name = config.dataset_name
    info.pop(name, None)  # this export's entries are rewritten below (val only if it has rows)
    info.pop(f"{name}_val", None)
    paths: dict[str, Path] = {}
    for split, table in splits.items():
        if split != "train" and table.num_rows == 0:
            continue
        fname = f"{name}_{split}.json"
        _write_json_array(out / fname, (llamafactory_record(ex, config.system_prompt, images(ex))
                                         for ex in _examples(table, resolve, config)))
        info[name if split == "train" else f"{name}_{split}"] = llamafactory_entry(fname)
        paths[f"llamafactory_{split}"] = out / fname
    _write_json(info_path, info)
    paths["llamafactory"] = out
    paths["dataset_info"] = info_path
    return paths


def validate_llamafactory(dataset_dir: str | Path, names: list[str] | None = None,
                          max_problems: int = 50) -> list[str]:
    """Problems found checking a LLaMA-Factory dataset folder against its documented layout.

    Checks the dataset_info.json entries (file exists, sharegpt formatting, columns, tags)
    and every record: messages with role and content keys, an optional leading system
    message, user and assistant turns alternating from the user and ending with the
    assistant, as many <image> tokens as images, and image files that exist (absolute or
    relative to the dataset folder). An empty list means valid.
    """
    root = Path(dataset_dir)
    problems: list[str] = []
    info_path = root / "dataset_info.json"
    if not info_path.is_file():
        return [f"{info_path}: missing"]
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        return [f"{info_path}: not valid JSON ({e})"]
    if not isinstance(info, dict):
        return [f"{info_path}: must be a JSON object of dataset entries"]
    for name in names if names is not None else list(info):
        if len(problems) >= max_problems:
            break
        entry = info.get(name)
        if not isinstance(entry, dict):
            problems.append(f"dataset_info.json: no entry {name!r}")
            continue
        where = f"dataset {name!r}"
        if entry.get("formatting") != "sharegpt":
            problems.append(f"{where}: formatting must be 'sharegpt', got {entry.get('formatting')!r}")
        columns = entry.get("columns") or {}
        tags = {**LF_TAG_DEFAULTS, **(entry.get("tags") or {})}
        unknown = set(entry.get("tags") or {}) - set(LF_TAG_DEFAULTS)
        if unknown:
            problems.append(f"{where}: unknown tags {sorted(unknown)}")
        msg_col = columns.get("messages", "conversations")
        img_col = columns.get("images")
        fname = entry.get("file_name")
        if not fname:
            problems.append(f"{where}: file_name is required")
            continue
        data_path = root / fname
        if not data_path.is_file():
            problems.append(f"{where}: file {data_path} does not exist")
            continue
        try:
            text = data_path.read_text()
            records = (json.loads(text) if data_path.suffix == ".json"
                       else [json.loads(line) for line in text.splitlines() if line.strip()])
        except json.JSONDecodeError as e:
            problems.append(f"{where}: {data_path.name} is not valid JSON ({e})")
            continue
        if not isinstance(records, list):
            problems.append(f"{where}: {data_path.name} must hold a list of records")
            continue
        for i, rec in enumerate(records):
            if len(problems) >= max_problems:
                break
            problems += [f"{where} record {i}: {p}"
                         for p in _record_problems(rec, msg_col, img_col, tags, root)]
    return problems


def _record_problems(rec: Any, msg_col: str, img_col: str | None, tags: dict[str, str],
                     root: Path) -> list[str]:
    if not isinstance(rec, dict):
        return ["not a JSON object"]
    messages = rec.get(msg_col)
    if not isinstance(messages, list) or not messages:
        return [f"{msg_col!r} must be a non-empty list"]
    out = []
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or role_tag not in m or content_tag not in m:
            return [f"message {j} needs keys {role_tag!r} and {content_tag!r}"]
        if not isinstance(m[content_tag], str):
            out.append(f"message {j}: content must be a string")
    turns = messages
    if tags.get("system_tag") and messages[0][role_tag] == tags["system_tag"]:
        turns = messages[1:]
    odd = (tags["user_tag"], tags["observation_tag"])  # 1st, 3rd, ... turns
    even = (tags["assistant_tag"], tags["function_tag"])
    for j, m in enumerate(turns):
        allowed = odd if j % 2 == 0 else even
        if m[role_tag] not in allowed:
            out.append(f"turn {j} has role {m[role_tag]!r}, expected one of {list(allowed)}")
            break
    if len(turns) % 2 != 0 or not turns:
        out.append(f"needs complete user/assistant pairs, got {len(turns)} turns")
    text = "".join(m[content_tag] for m in messages if isinstance(m.get(content_tag), str))
    images = rec.get(img_col) if img_col else None
    images = images or []
    if not isinstance(images, list):
        return out + [f"{img_col!r} must be a list of paths"]
    n_tokens = text.count(IMAGE_TOKEN)
    if n_tokens != len(images):
        out.append(f"{n_tokens} <image> tokens but {len(images)} images")
    for token in ("<video>", "<audio>"):
        if token in text:
            out.append(f"{token} token without a matching media column")
    for p in images:
        if not isinstance(p, str):
            out.append("an image entry is not a path string")
        elif not (Path(p) if Path(p).is_absolute() else root / p).is_file():
            out.append(f"image {p} does not exist")
    return out


# --------------------------------------------------------------------------- TRL / datasets


def trl_features() -> Any:
    """datasets.Features of the TRL export."""
    from datasets import Features, Image, Sequence, Value

    return Features({
        "id": Value("string"),
        "item_id": Value("string"),
        "source": Value("string"),
        "task": Value("string"),
        "teacher": Value("string"),
        "messages": [{"role": Value("string"),
                      "content": [{"type": Value("string"), "text": Value("string")}]}],
        "images": Sequence(Image()),
    })


def trl_row(ex: dict[str, Any], system_prompt: str | None, embed: bool,
            placer: ImagePlacer | None = None) -> dict[str, Any]:
    """One TRL row: typed content parts plus the images column (bytes, or absolute paths)."""
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    user = [{"type": "image", "text": None} for _ in ex["image_paths"]]
    user.append({"type": "text", "text": ex["prompt"]})
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": [{"type": "text", "text": ex["response"]}]})
    # datasets opens a relative path from the current directory, so unembedded images keep
    # absolute paths (of the copy, with images: copy)
    images = [{"bytes": p.read_bytes(), "path": p.name} if embed
              else {"bytes": None, "path": str(placer.place(p) if placer else p)}
              for p in ex["image_paths"]]
    return {"id": ex["id"], "item_id": ex["item_id"], "source": ex["source"], "task": ex["task"],
            "teacher": ex.get("teacher") or "", "messages": messages, "images": images}


ARROW_SHARD_BYTES = 500 * 2**20  # like datasets' save_to_disk default shard size


def _hf_layout(features: Any) -> tuple[pa.Schema, dict[str, Any], str]:
    """The on-disk layout `datasets` itself writes for these features: the Arrow schema (with
    its metadata), state.json and dataset_info.json, taken from a one-row dataset it saves,
    so the files written here load with whatever `datasets` version is installed."""
    import tempfile

    from datasets import Dataset

    row = {"id": [""], "item_id": [""], "source": [""], "task": [""], "teacher": [""],
           "messages": [[]], "images": [[]]}
    with tempfile.TemporaryDirectory() as d:
        Dataset.from_dict(row, features=features).save_to_disk(d)
        state = json.loads((Path(d) / "state.json").read_text())
        info = (Path(d) / "dataset_info.json").read_text()
        arrow = next(Path(d).glob("*.arrow"))
        with pa.memory_map(str(arrow)) as source:
            schema = pa.ipc.open_stream(source).schema
    return schema, state, info


class _ArrowShards:
    """Arrow IPC stream files of one split in `datasets`' save_to_disk layout, written as the
    rows come (a new file every ARROW_SHARD_BYTES), so the TRL export never holds the split."""

    def __init__(self, folder: Path, schema: pa.Schema):
        self.folder, self.schema = folder, schema
        folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._bytes = 0
        self.digest = hashlib.sha256()

    def write(self, table: pa.Table) -> None:
        if self._writer is None or self._bytes >= ARROW_SHARD_BYTES:
            self._roll()
        table = table.replace_schema_metadata(self.schema.metadata)
        self._writer.write_table(table)  # type: ignore[union-attr]
        self._bytes += table.nbytes
        self.digest.update(str(table.num_rows).encode())
        self.digest.update("\n".join(table.column("id").to_pylist()).encode())

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self.folder / f".part-{len(self.files):05d}.arrow"
        self.files.append(path)
        self._writer = pa.ipc.new_stream(str(path), self.schema)
        self._bytes = 0

    def close(self, state: dict[str, Any], info: str, split: str) -> None:
        if self._writer is None:  # a split with no rows still gets one (empty) file
            self._roll()
        self._writer.close()  # type: ignore[union-attr]
        n = len(self.files)
        names = []
        for i, p in enumerate(self.files):
            name = f"data-{i:05d}-of-{n:05d}.arrow"
            os.replace(p, self.folder / name)
            names.append({"filename": name})
        st = dict(state, _data_files=names, _fingerprint=self.digest.hexdigest()[:16],
                  _split=split)
        (self.folder / "state.json").write_text(json.dumps(st, indent=2))
        (self.folder / "dataset_info.json").write_text(info)


def _write_trl_split(table: Rows, path: Path, arrow_dir: Path, resolve: ImageResolver | None,
                     config: ExportConfig, features: Any, layout: tuple, split: str,
                     placer: ImagePlacer | None = None, chunk: int = 256) -> int:
    """One split of the TRL export: Parquet and save_to_disk Arrow files from one stream."""
    schema = features.arrow_schema
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = pq.ParquetWriter(tmp, schema)
    arrow = _ArrowShards(arrow_dir, layout[0])
    n = 0
    try:
        batch: list[dict[str, Any]] = []
        for ex in _examples(table, resolve, config):
            batch.append(trl_row(ex, config.system_prompt, config.embed_images, placer))
            if len(batch) >= chunk:
                n += _flush((writer, arrow), batch, features, schema)
        n += _flush((writer, arrow), batch, features, schema)
        if n == 0:
            writer.write_table(schema.empty_table())
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    arrow.close(layout[1], layout[2], split)
    os.replace(tmp, path)
    return n


def _flush(writers: tuple[pq.ParquetWriter, _ArrowShards], batch: list[dict[str, Any]],
           features: Any, schema: pa.Schema) -> int:
    if not batch:
        return 0
    cols = {k: [r[k] for r in batch] for k in batch[0]}
    table = pa.Table.from_pydict(features.encode_batch(cols), schema=schema)
    writers[0].write_table(table)
    writers[1].write(table)
    n = len(batch)
    batch.clear()
    return n


def export_trl(splits: dict[str, Rows], out: Path, parquet_out: Path,
               resolve: ImageResolver | None, config: ExportConfig,
               placer: ImagePlacer | None = None) -> dict[str, Path]:
    """Parquet per split and a DatasetDict folder (`datasets.load_from_disk`), both streamed.

    The DatasetDict is written in the layout `datasets.save_to_disk` produces (Arrow stream
    files, state.json, dataset_info.json, dataset_dict.json, metadata taken from `datasets`
    itself), not through it: `save_to_disk` reads a memory-mapped copy and its memory grows
    with the export.
    """
    features = trl_features()
    layout = _hf_layout(features)
    paths: dict[str, Path] = {}
    names: list[str] = []
    shutil.rmtree(out, ignore_errors=True)
    for split, table in splits.items():
        if split != "train" and table.num_rows == 0:
            continue
        hf_split = "validation" if split == "val" else split
        p = parquet_out / f"{hf_split}.parquet"
        _write_trl_split(table, p, out / hf_split, resolve, config, features, layout, hf_split,
                         placer)
        names.append(hf_split)
        paths[f"trl_parquet_{split}"] = p
    (out / "dataset_dict.json").write_text(json.dumps({"splits": names}))
    paths["trl"] = out
    return paths


# --------------------------------------------------------------------------- JSONL


def jsonl_record(ex: dict[str, Any], system_prompt: str | None,
                 images: list[str] | None = None) -> dict[str, Any]:
    """A self-describing JSON object: provenance, the chat and image paths (`images`, default
    the resolved absolute paths)."""
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages += [{"role": "user", "content": ex["prompt"]},
                 {"role": "assistant", "content": ex["response"]}]
    keep = ("id", "item_id", "source", "task", "question", "options", "answer", "answer_text",
            "modality", "anatomy", "teacher", "model", "key", "sample_index", "method", "split",
            "target_format")
    rec = {k: ex.get(k) for k in keep}
    rec["image_refs"] = list(ex.get("images") or [])
    rec["images"] = images if images is not None else [str(p) for p in ex["image_paths"]]
    rec["messages"] = messages
    return rec


def export_jsonl(splits: dict[str, Rows], out: Path, resolve: ImageResolver | None,
                 config: ExportConfig, placer: ImagePlacer | None = None) -> dict[str, Path]:
    """One JSON object per line per split."""
    def images(ex: dict[str, Any]) -> list[str] | None:
        return None if placer is None else [placer.ref(p, "jsonl") for p in ex["image_paths"]]

    paths = {}
    for split, table in splits.items():
        if split != "train" and table.num_rows == 0:
            continue
        p = out / f"{config.dataset_name}_{split}.jsonl"
        _write_lines(p, (json.dumps(jsonl_record(ex, config.system_prompt, images(ex)),
                                    ensure_ascii=False) + "\n"
                         for ex in _examples(table, resolve, config)))
        paths[f"jsonl_{split}"] = p
    return paths


# --------------------------------------------------------------------------- the stage


def export(selected: SelectResult | Mapping[str, pa.Table] | pa.Table, out_dir: str | Path,
           image_store: Any, config: ExportConfig) -> dict[str, Path]:
    """Write the configured export formats; returns a name -> path map of what was written.

    `selected` is a SelectResult, a {"train": table, "val": table} mapping or one table
    with a "split" column (SELECTED_SCHEMA). `image_store` is an ImageStore, its folder,
    a callable ref -> path, or None when no example has images. `config.images` says how
    files name images (relative to their folder, copied into the export, or absolute).

    Everything is written into a staging folder beside `out_dir`, which then replaces
    `out_dir` by rename: a crash or Ctrl-C at any moment leaves the previous export (or,
    between the two renames, none), never a mix of old and new files. An empty selection
    gives empty LLaMA-Factory and JSONL files and no TRL dataset (`datasets` cannot reload
    a saved dataset of 0 rows); the returned map then has "empty": out_dir.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", config.dataset_name):
        raise UserError(f"export.dataset_name {config.dataset_name!r} must use only letters, "
                        "digits, '_', '-' and '.'")
    splits = _splits(selected)
    if "train" not in splits:
        raise UserError("export needs a 'train' split of selected examples")
    resolve = make_resolver(image_store)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    empty = all(t.num_rows == 0 for t in splits.values())
    placer = ImagePlacer(config.images, stage, out, _store_root(image_store))
    written: dict[str, Path] = {}
    try:
        _carry_user_files(out / "llamafactory", stage / "llamafactory", config.dataset_name)
        for fmt in dict.fromkeys(config.formats):
            if fmt == "llamafactory":
                written.update(export_llamafactory(splits, stage / "llamafactory", resolve,
                                                   config, placer))
            elif fmt == "trl" and not empty:
                written.update(export_trl(splits, stage / "trl", stage / "trl_parquet", resolve,
                                          config, placer))
            elif fmt == "jsonl":
                written.update(export_jsonl(splits, stage / "jsonl", resolve, config, placer))
        _swap_in(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    paths = {k: out / p.relative_to(stage) for k, p in written.items()}
    if empty:
        paths["empty"] = out
    return paths


def _carry_user_files(old: Path, new: Path, name: str) -> None:
    """Keep what a user put in the LLaMA-Factory folder (their other datasets, their entries).

    This export's own files from an earlier run are not carried: a split that is empty now
    must not survive from before.
    """
    if not old.is_dir():
        return
    new.mkdir(parents=True, exist_ok=True)
    ours = {f"{name}_train.json", f"{name}_val.json"}
    for p in old.iterdir():
        if p.is_file() and p.name not in ours:
            shutil.copy2(p, new / p.name)


def _swap_in(stage: Path, out: Path) -> None:
    """Replace `out` by the fully written `stage` with renames (the old copy goes last)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)
