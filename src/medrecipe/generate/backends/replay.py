"""Answers from a file of earlier generations (offline demo, re-running recipes on stored outputs).

Formats (see docs/generate-api.md): JSONL with one generation per line (`item_id`, `text`,
optional `sample_index`, `reasoning`, `finish_reason`, `prompt_tokens`,
`completion_tokens`, `model`), or a Parquet file in GENERATION_SCHEMA. Lines of one item
without `sample_index` are numbered in file order. A (item, sample) absent from the file
fails that sample (no retry).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from medrecipe.config import TeacherConfig
from medrecipe.errors import UserError
from medrecipe.generate.backends import (
    BackendError,
    ChatRequest,
    ChatResponse,
    Completion,
    join_reasoning,
)


def load_replay(path: str | Path, model: str = "*") -> dict[tuple[str, int], dict[str, Any]]:
    """(item id, sample index) -> record, from a JSONL or Parquet file of generations."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"replay file not found: {p}; set replay_path to a .jsonl or .parquet "
                        "file of earlier generations")
    rows: list[dict[str, Any]] = []
    if p.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        rows = [r for r in pq.read_table(p).to_pylist() if not r.get("error")]
    else:
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise UserError(f"{p}, line {lineno}: not valid JSON ({e})") from None
                if not isinstance(row, dict) or "item_id" not in row or "text" not in row:
                    raise UserError(f"{p}, line {lineno}: a replay record needs item_id and text")
                rows.append(row)
    if model != "*":
        rows = [r for r in rows if not r.get("model") or r["model"] == model]
    table: dict[tuple[str, int], dict[str, Any]] = {}
    counters: dict[str, int] = defaultdict(int)
    for r in rows:
        item = str(r["item_id"])
        idx = r.get("sample_index")
        if idx is None:
            idx = counters[item]
        counters[item] = max(counters[item], int(idx) + 1)
        table[(item, int(idx))] = r
    return table


class ReplayBackend:
    """Serves stored generations instead of calling a model."""

    name = "replay"
    supports_n = False  # one sample per call: each may or may not be in the file

    def __init__(self, teacher: TeacherConfig, name: str = ""):
        if not teacher.replay_path:
            raise UserError(f"teacher {name or teacher.model!r} uses backend replay; set its "
                            "replay_path")
        self.teacher = teacher
        self.records = load_replay(teacher.replay_path, teacher.model)

    def __repr__(self) -> str:
        return f"ReplayBackend(path={self.teacher.replay_path!r}, records={len(self.records)})"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """The stored generation for (item id, sample index)."""
        idx = request.sample_indices[0]
        rec = self.records.get((str(request.item_id), idx))
        if rec is None:
            raise BackendError(f"replay: no record for item {request.item_id!r} sample {idx}",
                               retryable=False)
        reasoning = rec.get("reasoning")
        text = rec.get("text")
        if reasoning and not (text or "").startswith("<think>"):
            text = join_reasoning(text, reasoning)
        ct = int(rec.get("completion_tokens") or 0)
        return ChatResponse(
            completions=[Completion(text=text, reasoning=reasoning,
                                    finish_reason=rec.get("finish_reason") or "stop",
                                    completion_tokens=ct)],
            prompt_tokens=int(rec.get("prompt_tokens") or 0), completion_tokens=ct,
            latency_s=float(rec.get("latency_s") or 0.0))

    async def aclose(self) -> None:
        """Nothing to release."""
