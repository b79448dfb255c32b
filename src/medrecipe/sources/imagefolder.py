"""Image classification data turned into multiple-choice Items (`mm_classification`).

Two layouts are read:

- a folder per class: `path/<class>/*.png|jpg|...` (images may sit in sub-folders);
- a label file (CSV, or any table format) of image path and label: `options.csv`, or
  `path` itself naming that file; images are looked up under `image_root`, the data
  folder and the label file's folder (by relative path, then by file name anywhere below).

The options are the class display names in a fixed order and the answer is the letter
of the image's class. A preset (`options.preset`, alias `dataset`) carries a dataset's
class names and order, the spellings its upstream copies use, its question template and
its modality / anatomy; everything can be overridden:

    - {name: brain_tumor, adapter: imagefolder, path: data/brain-tumor-mri/Testing,
       split: test, options: {preset: brain_tumor}}
    - {name: skin, adapter: imagefolder, path: data/HAM10000_metadata.csv,
       image_root: data/ham10000, options: {preset: ham10000}}
    - {name: mine, adapter: imagefolder, path: data/mine,
       options: {question: "Which organ is shown?", labels: {liv: Liver, kid: Kidney}}}
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrecipe.config import SourceSpec
from medrecipe.errors import SourceError
from medrecipe.schema import LETTERS
from medrecipe.sources import register
from medrecipe.sources.base import RawStream, Reject, Skip, read_records
from medrecipe.sources.text_mcq import blank, check_options

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom")
DEFAULT_QUESTION = "Which of the following best describes this image?"


@dataclass(frozen=True)
class Preset:
    """What the adapter knows about one classification dataset."""

    question: str
    classes: tuple[tuple[str, str], ...] = ()  # (label key, display name) in option order
    aliases: dict[str, str] = field(default_factory=dict)  # other upstream spellings -> key
    ignore: tuple[str, ...] = ()  # upstream labels that are not classes here (rows skipped)
    modality: str | None = None
    anatomy: str | None = None
    path_columns: tuple[str, ...] = ()  # label-file columns naming the image, tried in order
    label_columns: tuple[str, ...] = ()
    path_template: str | None = None  # e.g. "images/{study_id}/{image_id}.dicom"
    meta_columns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()  # file-name patterns that are not samples (masks)
    class_from: str = "top"  # folder layout: "top" folder under path, or the file's "parent"
    hyphens_are_spaces: bool = False  # for display names made from folder names
    label_from_row: Callable[[dict[str, Any]], Any] | None = None


def _coronahack_label(row: dict[str, Any]) -> Any:
    """CoronaHack metadata: Label Normal / Pnemonia, refined by Label_1_Virus_category."""
    if "Label" not in row or "Label_1_Virus_category" not in row:
        return row.get("label")
    if str(row.get("Label") or "").strip().lower() == "normal":
        return "normal"
    return row.get("Label_1_Virus_category")  # bacteria | Virus | Stress-Smoking


_DR = Preset(
    question=("This is a colour fundus photograph. What is the grade of diabetic retinopathy"
              " on the five-grade international scale?"),
    classes=(("0", "No DR"), ("1", "Mild"), ("2", "Moderate"), ("3", "Severe"),
             ("4", "Proliferative DR")),
    aliases={"no_dr": "0", "mild": "1", "moderate": "2", "severe": "3", "proliferative": "4",
             "proliferative_dr": "4", "proliferate_dr": "4"},
    modality="fundus", anatomy="eye",
    # APTOS train.csv (id_code, diagnosis), EyePACS trainLabels.csv (image, level),
    # MESSIDOR-2 messidor_data.csv (image_id, adjudicated_dr_grade).
    path_columns=("path", "id_code", "image", "image_id"),
    label_columns=("label", "diagnosis", "level", "adjudicated_dr_grade"),
)

PRESETS: dict[str, Preset] = {
    "brain_tumor": Preset(
        question="This is a brain MRI scan. Which of the following is the most likely diagnosis?",
        classes=(("glioma", "Glioma"), ("meningioma", "Meningioma"),
                 ("pituitary", "Pituitary tumor"), ("notumor", "No tumor")),
        aliases={"glioma_tumor": "glioma", "meningioma_tumor": "meningioma",
                 "pituitary_tumor": "pituitary", "no_tumor": "notumor"},
        modality="mri", anatomy="brain"),
    "coronahack": Preset(
        question="This is a chest X-ray. Which of the following best describes it?",
        classes=(("normal", "Normal"), ("bacterial", "Bacterial pneumonia"),
                 ("viral", "Viral pneumonia")),
        aliases={"bacteria": "bacterial", "bacterial_pneumonia": "bacterial", "virus": "viral",
                 "viral_pneumonia": "viral"},
        ignore=("stress_smoking",),
        modality="x-ray", anatomy="chest",
        # Chest_xray_Corona_Metadata.csv; images sit in its train/ and test/ folders.
        path_columns=("path", "X_ray_image_name"), label_columns=("label",),
        meta_columns=("Dataset_type", "Label", "Label_1_Virus_category", "Label_2_Virus_category"),
        label_from_row=_coronahack_label),
    "diabetic_retinopathy": _DR,
    "aptos": _DR,
    "messidor2": _DR,
    "eyepacs": _DR,
    "bcss": Preset(
        question=("This is an H&E-stained patch of breast cancer tissue. Which tissue type"
                  " does it mainly show?"),
        classes=(("tumor", "Tumor"), ("stroma", "Stroma"),
                 ("inflammatory", "Inflammatory infiltrate"), ("necrosis", "Necrosis")),
        aliases={"tumour": "tumor", "lymphocytic_infiltrate": "inflammatory",
                 "inflammation": "inflammatory", "necrosis_or_debris": "necrosis"},
        modality="pathology", anatomy="breast"),
    "ham10000": Preset(
        question=("This is a dermoscopic image of a skin lesion. Which of the following is the"
                  " most likely diagnosis?"),
        classes=(("akiec", "Actinic keratosis / intraepithelial carcinoma"),
                 ("bcc", "Basal cell carcinoma"), ("bkl", "Benign keratosis-like lesion"),
                 ("df", "Dermatofibroma"), ("mel", "Melanoma"), ("nv", "Melanocytic nevus"),
                 ("vasc", "Vascular lesion")),
        modality="dermoscopy", anatomy="skin",
        # HAM10000_metadata.csv; images in HAM10000_images_part_1/ and _part_2/ as <image_id>.jpg.
        path_columns=("path", "image_id"), label_columns=("label", "dx"),
        meta_columns=("lesion_id", "dx_type", "age", "sex", "localization")),
    "busi": Preset(
        question="This is a breast ultrasound image. Which of the following best describes it?",
        classes=(("normal", "Normal"), ("benign", "Benign"), ("malignant", "Malignant")),
        modality="ultrasound", anatomy="breast",
        exclude=("*_mask.*", "*_mask_*.*")),  # Dataset_BUSI_with_GT ships masks beside images
    "hyperkvasir": Preset(
        question=("This is an image from a gastrointestinal endoscopy. Which of the following"
                  " does it show?"),
        modality="endoscopy", anatomy="gastrointestinal", class_from="parent",
        hyphens_are_spaces=True),
    "vindr_cxr": Preset(
        question="This is a chest X-ray. Which of the following findings does it show?",
        modality="x-ray", anatomy="chest"),
    "vindr_mammo": Preset(
        question="This is a mammogram. What is the BI-RADS assessment category of this breast?",
        classes=tuple((f"bi_rads_{i}", f"BI-RADS {i}") for i in range(1, 6)),
        modality="mammography", anatomy="breast",
        path_template="images/{study_id}/{image_id}.dicom", label_columns=("label", "breast_birads"),
        meta_columns=("study_id", "laterality", "view_position", "breast_density", "split")),
}

_OPTIONS = {
    "preset": "one of " + ", ".join(PRESETS) + " (alias: dataset)",
    "dataset": "alias of preset",
    "csv": "label file (CSV/TSV/JSONL/Parquet) of image path and label, relative to path",
    "path_column": "label-file column naming the image (default: path, or the preset's)",
    "label_column": "label-file column holding the class (default: label, or the preset's)",
    "path_template": "image path built from label-file columns, e.g. '{study_id}/{image_id}.dcm'",
    "labels": "{label or folder name: display name}",
    "classes": "labels in option order (default: the preset's order, else sorted)",
    "question": "question text (default: the preset's template)",
    "ignore_labels": "labels whose rows are skipped (counted), not quarantined",
    "exclude": "file-name patterns that are not samples (e.g. '*_mask.png')",
    "class_from": "top (default: the folder under path) | parent (the image's own folder)",
    "where": "{column: value or list}: keep only label-file rows matching (others skipped)",
    "meta_columns": "label-file columns copied into meta",
}


# --------------------------------------------------------------------------- labels


def norm_label(value: Any) -> str:
    """A label as a comparison key: lower case, '_' for spaces and hyphens, 2.0 -> '2'."""
    s = str(value).strip().lower()
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return re.sub(r"[\s\-]+", "_", s).strip("_")


def _natural(key: str) -> tuple[int, int, str]:
    return (0, int(key), "") if re.fullmatch(r"-?\d+", key) else (1, 0, key)


@dataclass
class ClassSet:
    """The fixed option list of a source: label keys in order and their display names."""

    order: list[str]
    display: dict[str, str]
    aliases: dict[str, str]
    ignore: set[str]

    def key(self, label: Any) -> str:
        n = norm_label(label)
        return self.aliases.get(n, n)


def build_classes(preset: Preset | None, opts: dict[str, Any], seen: list[Any],
                  source: str) -> ClassSet:
    """The classes of a source from its options, its preset and (failing both) the labels seen."""
    aliases: dict[str, str] = {}
    display: dict[str, str] = {}
    if preset is not None:
        for key, name in preset.classes:
            aliases[norm_label(key)] = key
            display[key] = name
        aliases.update({norm_label(a): k for a, k in preset.aliases.items()})
    cs = ClassSet([], display, aliases, set())
    cs.ignore = {cs.key(x) for x in [*(preset.ignore if preset else ()), *_as_list(opts.get("ignore_labels"))]}
    user_labels = opts.get("labels") or {}
    if not isinstance(user_labels, dict):
        raise SourceError(f"source {source!r}: option labels must map label -> display name")
    for raw, name in user_labels.items():
        display[cs.key(raw)] = str(name)
    if opts.get("classes") is not None:
        cs.order = [cs.key(c) for c in _as_list(opts["classes"])]
    elif preset is not None and preset.classes:
        cs.order = [k for k, _ in preset.classes]
    else:
        keys = {cs.key(x) for x in seen if not blank(x)} - cs.ignore
        cs.order = sorted(keys, key=_natural)
    if len(set(cs.order)) != len(cs.order):
        raise SourceError(f"source {source!r}: option classes lists a class twice: {cs.order}")
    firsts: dict[str, str] = {}
    for x in seen:
        if not blank(x):
            firsts.setdefault(cs.key(x), str(x).strip())
    hyphens = preset.hyphens_are_spaces if preset else False
    for k in cs.order:
        if k not in display:
            raw = firsts.get(k, k).replace("_", " ")
            display[k] = raw.replace("-", " ") if hyphens else raw
    names = [display[k] for k in cs.order]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SourceError(f"source {source!r}: several classes share the display name(s) {dupes};"
                          " give distinct names in option labels")
    if len(cs.order) < 2:
        raise SourceError(f"source {source!r}: found {len(cs.order)} class(es) {cs.order}; a"
                          " classification source needs at least two (check path / csv / classes)")
    if len(cs.order) > len(LETTERS):
        raise SourceError(f"source {source!r}: {len(cs.order)} classes; at most {len(LETTERS)}"
                          " options are supported")
    return cs


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str | int | float) else list(value)


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One image with its label, before the classes are known."""

    name: str  # id and meta.file: path relative to the data folder, or the label-file value
    image: str | None  # resolved file path; None when not found (see missing)
    label: Any
    extra: dict[str, Any] = field(default_factory=dict)
    missing: str = ""  # why the image was not found
    skip: str = ""  # set for rows a filter leaves out


def _hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pat.lower()) for pat in patterns)


def folder_samples(root: Path, class_from: str, exclude: list[str]) -> Iterator[Sample]:
    """Images under root/<class>/..., in a stable (sorted) order."""
    for class_dir in sorted(d for d in root.iterdir() if d.is_dir() and not _hidden(d)):
        files = []
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files += [Path(dirpath) / f for f in filenames]
        for f in sorted(files):
            if _hidden(f) or f.suffix.lower() not in IMAGE_EXTENSIONS or _excluded(f.name, exclude):
                continue
            label = class_dir.name if class_from == "top" else f.parent.name
            yield Sample(f.relative_to(root).as_posix(), str(f), label)


class _Finder:
    """Finds label-file image names under a few roots: by relative path, then by file name."""

    def __init__(self, roots: list[Path]):
        seen: set[Path] = set()
        self.roots = []
        for r in roots:
            if r.is_dir() and r.resolve() not in seen:
                seen.add(r.resolve())
                self.roots.append(r)
        self._by_name: dict[str, set[str]] | None = None
        self._by_stem: dict[str, set[str]] | None = None

    def _index(self) -> None:
        self._by_name, self._by_stem = {}, {}
        for root in self.roots:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for f in filenames:
                    if f.startswith(".") or Path(f).suffix.lower() not in IMAGE_EXTENSIONS:
                        continue
                    full = str((Path(dirpath) / f).resolve())
                    self._by_name.setdefault(f.lower(), set()).add(full)
                    self._by_stem.setdefault(Path(f).stem.lower(), set()).add(full)

    def find(self, name: str) -> tuple[str | None, str]:
        """(path, "") when found; (None, why) otherwise."""
        p = Path(name)
        if p.is_absolute():
            return (name, "") if p.is_file() else (None, f"image file not found: {name}")
        for root in self.roots:
            if (root / p).is_file():
                return str(root / p), ""
            for ext in IMAGE_EXTENSIONS:  # ids without an extension (APTOS id_code, HAM image_id)
                if (root / f"{name}{ext}").is_file():
                    return str(root / f"{name}{ext}"), ""
        if self._by_name is None:
            self._index()
        assert self._by_name is not None and self._by_stem is not None
        hits = self._by_name.get(p.name.lower()) or self._by_stem.get(p.name.lower()) or set()
        if len(hits) == 1:
            return next(iter(hits)), ""
        if len(hits) > 1:
            return None, f"image name {name!r} is ambiguous: {len(hits)} files carry it"
        where = ", ".join(str(r) for r in self.roots) or "(no folder)"
        return None, f"image file not found: {name} (looked under {where})"


def _pick_column(columns: list[str], explicit: Any, candidates: tuple[str, ...], fallback: int,
                 what: str, source: str) -> str:
    if explicit:
        if explicit not in columns:
            raise SourceError(f"source {source!r}: label file has no column {explicit!r}"
                              f" (columns: {', '.join(columns)})")
        return str(explicit)
    for c in candidates:
        if c in columns:
            return c
    if len(columns) == 2:
        return columns[fallback]
    raise SourceError(f"source {source!r}: cannot tell which label-file column is the {what};"
                      f" set option {what}_column (columns: {', '.join(columns)})")


def _matches(row: dict[str, Any], where: dict[str, Any]) -> bool:
    for col, want in where.items():
        allowed = {str(v).strip().lower() for v in _as_list(want)}
        if str(row.get(col, "")).strip().lower() not in allowed:
            return False
    return True


def table_samples(spec: SourceSpec, label_file: Path, preset: Preset | None) -> Iterator[Sample]:
    """Samples from a label file of image path and label (CSV, TSV, JSONL or Parquet)."""
    opts = spec.options
    where = opts.get("where") or {}
    if not isinstance(where, dict):
        raise SourceError(f"source {spec.name!r}: option where must map column -> value(s)")
    template = opts.get("path_template") or (preset.path_template if preset else None)
    roots = [Path(spec.image_root)] if spec.image_root else []
    if spec.path and Path(spec.path).is_dir():
        roots.append(Path(spec.path))
    roots.append(label_file.parent)
    finder = _Finder(roots)
    sub = spec.model_copy(update={"path": str(label_file), "format": "auto", "limit": None})
    meta_cols = _as_list(opts.get("meta_columns")) or list(preset.meta_columns if preset else ())
    row_label = preset.label_from_row if preset and opts.get("label_column") is None else None
    path_cands = (preset.path_columns if preset and preset.path_columns else ()) or \
        ("path", "image", "file", "filename")
    label_cands = (preset.label_columns if preset and preset.label_columns else ()) or \
        ("label", "class", "diagnosis")
    path_col = label_col = ""
    for n, row in enumerate(read_records(sub)):
        if "__reject__" in row:
            raise SourceError(f"source {spec.name!r}: {label_file}: {row['__reject__'].detail}")
        if n == 0:
            cols = list(row)
            if not template:
                path_col = _pick_column(cols, opts.get("path_column"), path_cands, 0, "path", spec.name)
            if row_label is None:
                label_col = _pick_column(cols, opts.get("label_column"), label_cands, 1, "label",
                                         spec.name)
        label = row_label(row) if row_label is not None else row.get(label_col)
        if where and not _matches(row, where):
            yield Sample("", None, label, skip="filtered_by_where")
            continue
        if template:
            try:
                name = str(template).format(**row)
            except (KeyError, IndexError, ValueError) as e:
                raise SourceError(f"source {spec.name!r}: path_template {template!r} names a"
                                  f" column the label file lacks: {e}") from None
        else:
            name = "" if blank(row.get(path_col)) else str(row.get(path_col)).strip()
        extra = {c: row[c] for c in meta_cols if c in row and not blank(row[c])}
        if not name:
            yield Sample(name, None, label, extra, "the image path is empty")
            continue
        found, why = finder.find(name)
        yield Sample(name, found, label, extra, why)


# --------------------------------------------------------------------------- adapter


def _preset(spec: SourceSpec) -> Preset | None:
    name = spec.options.get("preset", spec.options.get("dataset"))
    if name is None:
        return None
    key = norm_label(name)
    if key not in PRESETS:
        raise SourceError(f"source {spec.name!r}: unknown imagefolder preset {name!r};"
                          f" known: {', '.join(PRESETS)}")
    return PRESETS[key]


def _label_file(spec: SourceSpec) -> Path | None:
    path = Path(spec.path) if spec.path else None
    csv = spec.options.get("csv")
    if csv:
        p = Path(str(csv))
        if not p.is_absolute() and path is not None and path.is_dir() and (path / p).exists():
            p = path / p
        if not p.is_file():
            raise SourceError(f"source {spec.name!r}: label file {csv!r} not found")
        return p
    if path is not None and path.is_file():
        return path
    return None


@register("imagefolder", task="mm_classification",
          description="Image classification (a folder per class, or a label file of path,label)"
                      " as multiple choice over the class names; presets for Brain Tumor MRI,"
                      " CoronaHack, DR grading (APTOS / MESSIDOR-2 / EyePACS), BCSS, HAM10000,"
                      " BUSI, HyperKvasir, VinDr",
          needs="a folder with one sub-folder per class, or a label file (path itself or"
                " options.csv) with image_root at the images",
          options=_OPTIONS)
def imagefolder(spec: SourceSpec) -> RawStream:
    """Classification samples as (row, Item fields): options are the class names in fixed order."""
    check_options(spec, _OPTIONS)
    if not spec.path:
        raise SourceError(f"source {spec.name!r}: set `path` to the class folders or the label file")
    preset = _preset(spec)
    opts = spec.options
    class_from = str(opts.get("class_from") or (preset.class_from if preset else "top"))
    if class_from not in ("top", "parent"):
        raise SourceError(f"source {spec.name!r}: class_from must be top or parent")
    exclude = [str(x) for x in _as_list(opts.get("exclude"))] or list(preset.exclude if preset else ())
    label_file = _label_file(spec)
    if label_file is not None:
        stream: Iterator[Sample] = table_samples(spec, label_file, preset)
    else:
        root = Path(spec.path)
        if not root.is_dir():
            raise SourceError(f"source {spec.name!r}: {root} is neither a folder nor a label file")
        table_only = sorted(k for k in ("where", "path_column", "label_column", "path_template",
                                        "meta_columns") if opts.get(k))
        if table_only:
            raise SourceError(f"source {spec.name!r}: option(s) {', '.join(table_only)} apply to a"
                              " label file; set option csv (or point path at the file)")
        stream = folder_samples(root, class_from, exclude)
    # The classes may come from the labels seen, so the (small) sample list is read first.
    samples: list[Sample] = []
    for s in stream:
        if spec.limit is not None and len(samples) >= spec.limit:
            break
        samples.append(s)
    cs = build_classes(preset, opts, [s.label for s in samples if not s.skip], spec.name)
    question = str(opts.get("question") or (preset.question if preset else DEFAULT_QUESTION))
    options = [cs.display[k] for k in cs.order]
    modality = spec.modality or (preset.modality if preset else None)
    anatomy = spec.anatomy or (preset.anatomy if preset else None)
    for idx, s in enumerate(samples):
        if s.skip:
            yield idx, Skip(s.skip)
            continue
        raw = {"file": s.name, "label": s.label, **s.extra}
        item_id = f"{spec.name}/{s.name}" if s.name else None
        if blank(s.label):
            yield idx, Reject("missing_answer", f"{s.name}: no label", raw, item_id)
            continue
        key = cs.key(s.label)
        if key in cs.ignore:
            yield idx, Skip("label_not_used")
            continue
        if key not in cs.order:
            yield idx, Reject("unknown_label", f"{s.name}: label {s.label!r} is not one of the"
                                               f" classes {cs.order}", raw, item_id)
            continue
        if s.image is None:
            yield idx, Reject("image_missing", s.missing, raw, item_id)
            continue
        yield idx, {"id": s.name, "question": question, "options": options,
                    "answer": LETTERS[cs.order.index(key)], "images": [s.image],
                    "modality": modality, "anatomy": anatomy,
                    "meta": {"label": str(s.label), "class": cs.display[key], "file": s.name,
                             **s.extra}}
