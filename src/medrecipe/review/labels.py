"""Review labels, saved as they are given: append-only JSONL, one fsync per label.

Each line is one judgement ``{"item_id", "dimension", "value", "reviewer", "at"}``;
``value`` is true, false or null (a label taken back). The latest line for a (reviewer,
item, dimension) wins. A label is acknowledged to the page only after its line reached the
disk, so killing the server (or the machine) loses no acknowledged label. A line cut short
by a crash is skipped on reading, and the file is given back its final newline before
the next append so that the cut line cannot swallow a good one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (key, question shown to the reviewer): the five judgements of the OpenMedReason review.
DIMENSIONS: tuple[tuple[str, str], ...] = (
    ("answer_correct", "Answer correct"),
    ("faithful", "Reasoning faithful to the image and context"),
    ("meaningful", "Question clinically meaningful"),
    ("answerable", "Answerable from the evidence shown"),
    ("modality", "Modality label correct"),
)
DIMENSION_KEYS = tuple(k for k, _ in DIMENSIONS)


class LabelStore:
    """The labels file of one run (``<run>/review/labels.jsonl``)."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())

    def events(self) -> list[dict[str, Any]]:
        """Every complete label line in the order given."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and rec.get("dimension") in DIMENSION_KEYS:
                    out.append(rec)
        return out

    def latest(self, reviewer: str | None = None) -> dict[tuple[str, str, str], bool]:
        """Current labels: {(reviewer, item_id, dimension): value}, taken-back ones removed."""
        cur: dict[tuple[str, str, str], bool | None] = {}
        for e in self.events():
            if reviewer is None or e.get("reviewer") == reviewer:
                cur[(e.get("reviewer") or "", e["item_id"], e["dimension"])] = e.get("value")
        return {k: v for k, v in cur.items() if v is not None}

    def add(self, item_id: str, dimension: str, value: bool | None, reviewer: str) -> dict[str, Any]:
        """Append one label and return only once it is on disk."""
        if dimension not in DIMENSION_KEYS:
            raise ValueError(f"unknown dimension {dimension!r}")
        if value is not None and not isinstance(value, bool):
            raise ValueError("value must be true, false or null")
        rec = {"item_id": item_id, "dimension": dimension, "value": value,
               "reviewer": reviewer, "at": self.clock()}
        data = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        return rec


__all__ = ["DIMENSIONS", "DIMENSION_KEYS", "LabelStore"]
