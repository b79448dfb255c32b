"""What the review page shows: the items of a run with their context and reasoning trace.

A run is an evaluation run (``items/<benchmark>.parquet``, ``samples.jsonl``), a recipe
run (``items.parquet``) or a folder holding other Item tables; a single Item Parquet file
works too. The trace shown is the item's reference trace (``meta.reference_trace``, by
section) when it has one, else the first sample of the model under test (evaluation
runs). The context is whatever source text the item carries in ``meta`` (caption,
sub-caption, in-text references, context).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from medrecipe.errors import UserError
from medrecipe.evaluate.checklist import reference_sections
from medrecipe.schema import Item, items_from_table

CONTEXT_KEYS = ("context", "source_context", "sub_caption", "subcaption", "caption",
                "in_text_references", "inline_references", "references")


@dataclass
class ReviewItem:
    """One item as the review page shows it."""

    item: Item
    trace: list[tuple[str, str]] = field(default_factory=list)  # (section, text)
    trace_origin: str = ""  # "reference" or "model sample"
    model_answer: str | None = None
    context: list[tuple[str, str]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        """JSON for the page."""
        it = self.item
        return {"id": it.id, "source": it.source, "question": it.question,
                "options": list(it.options), "answer": it.answer,
                "answer_text": it.answer_text, "modality": it.modality, "anatomy": it.anatomy,
                "images": len(it.images), "context": self.context, "trace": self.trace,
                "trace_origin": self.trace_origin, "model_answer": self.model_answer}


def _context(item: Item) -> list[tuple[str, str]]:
    out = []
    for k in CONTEXT_KEYS:
        v = (item.meta or {}).get(k)
        if isinstance(v, list):
            v = "\n\n".join(str(x) for x in v if x)
        if isinstance(v, str) and v.strip():
            out.append((k.replace("_", " "), v.strip()))
    return out


def _item_tables(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if (root / "items").is_dir():
        return sorted((root / "items").glob("*.parquet"))
    if (root / "items.parquet").exists():
        return [root / "items.parquet"]
    found = sorted(p for p in root.glob("*.parquet") if "items" in p.stem)
    return found


def _first_samples(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "samples.jsonl"
    if not path.exists():
        return {}
    out: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            s = json.loads(line)
            key = s["item_id"]
            rank = (s.get("seed") or 0, s.get("sample") or 0)
            if key not in out or rank < (out[key].get("seed") or 0, out[key].get("sample") or 0):
                out[key] = s
    return out


def load_review_items(run_dir: str | Path) -> list[ReviewItem]:
    """The run's items in table order, each with its context and trace."""
    root = Path(run_dir)
    tables = _item_tables(root) if root.exists() else []
    if not tables:
        raise UserError(f"{root} holds no items to review (no items/*.parquet, items.parquet or "
                        "Item Parquet file); pass an evaluation or recipe run directory")
    samples = _first_samples(root if root.is_dir() else root.parent)
    out: list[ReviewItem] = []
    seen: set[str] = set()
    for t in tables:
        for item in items_from_table(pq.read_table(t)):
            if item.id in seen:
                continue
            seen.add(item.id)
            trace, origin, answer = reference_sections(item), "reference", None
            s = samples.get(item.id)
            if s is not None:
                answer = s.get("answer")
                if not trace and s.get("text"):
                    trace, origin = [("model sample", s["text"])], "model sample"
            out.append(ReviewItem(item=item, trace=trace, trace_origin=origin if trace else "",
                                  model_answer=answer, context=_context(item)))
    return out


def image_folder(run_dir: str | Path) -> Path | None:
    """The run's image store folder (recipe / evaluation setting, else <run>/images)."""
    root = Path(run_dir)
    root = root if root.is_dir() else root.parent
    candidates: list[str | None] = []
    for name, keys in (("manifest.json", ("image_store",)), ("results.json", ("config", "image_store"))):
        p = root / name
        if p.exists():
            try:
                cur: Any = json.loads(p.read_text())
                for k in keys:
                    cur = cur.get(k) if isinstance(cur, dict) else None
                candidates.append(cur)
            except json.JSONDecodeError:
                pass
    candidates.append(str(root / "images"))
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


__all__ = ["ReviewItem", "load_review_items", "image_folder"]
