"""Canonical records: Item (a question), Generation (one sampled response), Verdict.

Each record has a pydantic model (validation at the edges) and an Arrow schema (what
stages exchange). Tables are converted column-wise; pydantic is used only where rows
enter the system or where a caller wants objects.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medrecipe.errors import ItemValidationError

Task = Literal["text", "mm_reasoning", "mm_classification", "open_vqa"]
TASKS: tuple[str, ...] = ("text", "mm_reasoning", "mm_classification", "open_vqa")
LETTERS = string.ascii_uppercase


def letter(index: int) -> str:
    """Option letter for a 0-based position (A, B, ...)."""
    return LETTERS[index]


def letter_index(value: str) -> int:
    """0-based position of an option letter."""
    return LETTERS.index(value.upper())


class Item(BaseModel):
    """One question: multiple choice (answer is a letter) or open (answer is text)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    split: str = "train"
    task: Task
    question: str
    options: list[str] = Field(default_factory=list)
    answer: str
    images: list[str] = Field(default_factory=list)
    modality: str | None = None
    anatomy: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("question")
    @classmethod
    def _question_not_blank(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("question is empty")
        return v

    @field_validator("answer")
    @classmethod
    def _answer_not_blank(cls, v: str) -> str:
        if v is None or not str(v).strip():
            raise ValueError("answer is empty")
        return v

    @field_validator("options")
    @classmethod
    def _options_well_formed(cls, v: list[str]) -> list[str]:
        if len(v) > len(LETTERS):
            raise ValueError(f"at most {len(LETTERS)} options are supported, got {len(v)}")
        for i, o in enumerate(v):
            if o is None or not str(o).strip():
                raise ValueError(f"option {LETTERS[i] if i < len(LETTERS) else i} is empty "
                                 "(options are positional, so the row cannot be used)")
        return v

    def model_post_init(self, __context: Any) -> None:
        if self.options:
            if self.answer not in LETTERS[: len(self.options)]:
                raise ValueError(
                    f"answer {self.answer!r} is not one of the option letters "
                    f"{LETTERS[0]}-{LETTERS[len(self.options) - 1]}"
                )
        elif self.task in ("mm_classification",):
            raise ValueError("a classification item needs options")

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.options)

    @property
    def answer_text(self) -> str:
        """The answer as text (the option text for multiple choice)."""
        return self.options[letter_index(self.answer)] if self.options else self.answer

    def option_letters(self) -> list[str]:
        return [letter(i) for i in range(len(self.options))]


class Generation(BaseModel):
    """One sampled response of one model to one item."""

    model_config = ConfigDict(extra="forbid")

    key: str  # content-addressed request key (cache key); unique per sample
    item_id: str
    source: str = ""
    teacher: str  # name given in the recipe
    model: str  # model id at the endpoint
    template: str = ""
    template_hash: str = ""
    sample_index: int = 0
    seed: int | None = None
    text: str | None = None  # final content (with <think>..</think> joined in front if separate)
    reasoning: str | None = None  # separate reasoning field, if the endpoint returned one
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    forced_end: bool = False
    error: str | None = None  # set when the request failed after all retries


class Verdict(BaseModel):
    """What the grader concluded about one generation."""

    model_config = ConfigDict(extra="forbid")

    key: str  # the generation's key
    item_id: str
    source: str = ""
    teacher: str = ""
    sample_index: int = 0
    answer: str | None = None
    method: str = "none"
    span_start: int | None = None
    span_end: int | None = None
    terminated: bool = True
    correct: bool | None = None  # None: not gradable (no answer, failed generation)
    invalid: str | None = None  # a final answer was given but is not a valid one (raw text)


class QuarantineRow(BaseModel):
    """A row that could not be used, with its reason."""

    stage: str
    source: str
    row: int = -1
    item_id: str | None = None
    reason: str
    detail: str = ""
    raw: str = ""  # JSON of the offending row (truncated), for a person to inspect


ITEM_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("options", pa.list_(pa.string()), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("images", pa.list_(pa.string()), nullable=False),
        pa.field("modality", pa.string()),
        pa.field("anatomy", pa.string()),
        pa.field("meta", pa.string(), nullable=False),  # JSON object
    ]
)

GENERATION_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("teacher", pa.string()),
        pa.field("model", pa.string()),
        pa.field("template", pa.string()),
        pa.field("template_hash", pa.string()),
        pa.field("sample_index", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("text", pa.string()),
        pa.field("reasoning", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("latency_s", pa.float64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("forced_end", pa.bool_()),
        pa.field("error", pa.string()),
    ]
)

VERDICT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("teacher", pa.string()),
        pa.field("sample_index", pa.int32()),
        pa.field("answer", pa.string()),
        pa.field("method", pa.string()),
        pa.field("span_start", pa.int64()),
        pa.field("span_end", pa.int64()),
        pa.field("terminated", pa.bool_()),
        pa.field("correct", pa.bool_()),
        pa.field("invalid", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string()),
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("item_id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),
    ]
)

_SCHEMAS = {Item: ITEM_SCHEMA, Generation: GENERATION_SCHEMA, Verdict: VERDICT_SCHEMA,
            QuarantineRow: QUARANTINE_SCHEMA}


def _row_for_arrow(model: BaseModel) -> dict[str, Any]:
    row = model.model_dump()
    if isinstance(model, Item):
        row["meta"] = json.dumps(row["meta"], ensure_ascii=False, sort_keys=True, default=str)
    return row


def to_table(records: Sequence[BaseModel], schema: pa.Schema | None = None) -> pa.Table:
    """Arrow table from a list of records of one type."""
    if schema is None:
        if not records:
            raise ValueError("schema is required for an empty list")
        schema = _SCHEMAS[type(records[0])]
    rows = [_row_for_arrow(r) for r in records]
    return pa.Table.from_pylist(rows, schema=schema)


def items_from_table(table: pa.Table) -> list[Item]:
    """Item objects from an Arrow table of Items (no re-validation of stored rows)."""
    out = []
    for row in table.to_pylist():
        row["meta"] = json.loads(row["meta"]) if row.get("meta") else {}
        out.append(Item.model_construct(**row))
    return out


def records_from_table(table: pa.Table, model: type[BaseModel]) -> list[BaseModel]:
    """Records of `model` from an Arrow table (no re-validation)."""
    if model is Item:
        return items_from_table(table)
    return [model.model_construct(**row) for row in table.to_pylist()]


def make_item(row: dict[str, Any], *, source: str, row_index: int | str) -> Item:
    """Validate one raw row into an Item; errors name the source, row and field."""
    try:
        return Item(**row)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "item"
        msg = err.get("msg", str(e)).removeprefix("Value error, ")
        raise ItemValidationError(source, row_index, field, msg) from None


def validate_items(
    rows: Iterable[tuple[int, dict[str, Any]]], *, source: str, stage: str = "ingest"
) -> tuple[list[Item], list[QuarantineRow]]:
    """Validate (row_index, row) pairs; good rows become Items, bad ones quarantine rows."""
    items: list[Item] = []
    bad: list[QuarantineRow] = []
    for idx, row in rows:
        try:
            items.append(make_item(row, source=source, row_index=idx))
        except ItemValidationError as e:
            bad.append(
                QuarantineRow(
                    stage=stage, source=source, row=idx if isinstance(idx, int) else -1,
                    item_id=str(row.get("id")) if row.get("id") is not None else None,
                    reason=reason_for_field(e.field, e.message), detail=str(e),
                    raw=raw_json(row),
                )
            )
    return items, bad


def reason_for_field(field: str, message: str) -> str:
    """A short, stable quarantine reason for an Item validation failure."""
    if field == "question":
        return "empty_question"
    if field == "answer":
        return "missing_answer"
    if "not one of the option letters" in message:
        return "answer_not_in_options"
    if field == "options":
        return "blank_option" if "is empty" in message else "bad_options"
    if field == "task":
        return "bad_task"
    if field == "id":
        return "missing_id"
    return f"invalid_{field.split('.')[0]}"


def raw_json(row: Any, limit: int = 2000) -> str:
    """JSON of a raw row for the quarantine table, truncated."""
    try:
        s = json.dumps(row, ensure_ascii=False, default=lambda o: f"<{type(o).__name__}>")
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it visible as an escape
        s = json.dumps(row, ensure_ascii=True, default=lambda o: f"<{type(o).__name__}>")
    except Exception:  # noqa: BLE001 - best effort, only for display
        s = repr(row)
    return s if len(s) <= limit else s[:limit] + "…"
