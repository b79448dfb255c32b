"""Select stage: turn graded generations into training examples.

Order of operations (every step is deterministic for a given `SelectConfig.seed`):

1. Rejection sampling: a trace is a candidate only when its verdict says
   ``correct is True``. Unparsed or ungradable responses (``correct is None``) and
   failed requests are never kept. Unterminated traces (a thinking block that never
   closed) are never kept either, whatever the verdict says.
2. Pass-rate filter (optional): per question, over the samples of the chosen teacher (or
   of all teachers pooled), count the *valid* ones (graded, terminated, not a failed
   request) and the correct ones. A question with fewer than ``min_valid`` valid samples
   (default: all of its ``n`` samples) cannot be judged and is dropped
   (``pass_rate_too_few_valid``); otherwise its pass rate is ``correct / valid`` and it is
   kept when ``min_correct / n <= rate <= max_correct / n``. With every sample valid this
   is ``min_correct <= correct <= max_correct``; failed requests no longer count as wrong.
3. Difficulty filter (optional): keep questions whose judge rating (1..10, given by the
   caller as ``{item_id: rating}``) lies in ``[min_rating, max_rating]``; questions with
   no rating are dropped and counted as ``unrated``.
4. Cap: at most ``cap_per_question`` traces per question, taken in the order of
   ``sha256(seed, generation key)``, so the choice is stable across re-runs and does not
   depend on row order. In cot format a trace with no reasoning (see below) is skipped
   and the next one in that order takes its place.
5. Mixing (optional): per-source question quotas, or weights (+ total) that set each
   source's share of questions; which questions a source keeps follows
   ``sha256(seed, item_id)``.
6. Split: a question goes to validation when ``sha256(seed, item_id)`` mapped to [0, 1)
   is below ``val_fraction``; all traces of one question land on the same side, and a
   question never changes side when other questions are added or removed.

Training targets
----------------
``cot``: ``<think>\\n{reasoning}\\n</think>\\n\\n\\boxed{B: option text}`` for multiple choice
(``\\boxed{answer text}`` for open questions). The boxed answer is always the item's
ground truth (the trace was graded equal to it), written canonically.

The reasoning is the teacher's thinking, found in this order:

* the text inside the thinking block(s) of ``Generation.text`` (everything before the
  last ``</think>``, with the ``<think>`` tags removed) -- the visible answer part after
  the block is dropped because the target writes its own final answer;
* otherwise ``Generation.reasoning`` (an endpoint's separate reasoning field);
* otherwise the whole ``Generation.text`` with its final answer removed: the last
  ``<answer>...</answer>`` block, the last ``\\boxed{...}`` (with balanced braces and any
  ``$``/``$$``/``\\[ \\]`` wrapper), and a final line that only announces the answer
  ("The answer is (B).", "Final answer: B"). When the grader found the answer by an
  answer phrase, the text is cut at the start of the line holding that phrase.

A cot trace whose reasoning is empty after this is dropped (counted as
``empty_reasoning``): it would teach the student to answer without thinking. Traces
beyond the cap are counted as ``capped`` without being examined.

``direct``: the boxed answer only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from medrecipe.config import SelectConfig
from medrecipe.errors import UserError
from medrecipe.schema import LETTERS

SELECTED_TRAIN = "selected_train"  # run-directory table names (see store.Run.path)
SELECTED_VAL = "selected_val"

SELECTED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # example id: "<item_id>#<generation key>"
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("options", pa.list_(pa.string()), nullable=False),
        pa.field("answer", pa.string(), nullable=False),  # letter (MC) or text (open)
        pa.field("answer_text", pa.string(), nullable=False),  # option text or the open answer
        pa.field("images", pa.list_(pa.string()), nullable=False),  # image refs
        pa.field("modality", pa.string()),
        pa.field("anatomy", pa.string()),
        pa.field("teacher", pa.string()),
        pa.field("model", pa.string()),
        pa.field("key", pa.string(), nullable=False),  # the generation's key
        pa.field("sample_index", pa.int32()),
        pa.field("method", pa.string()),  # extraction rule that found the answer
        pa.field("completion_tokens", pa.int64()),
        pa.field("target", pa.string(), nullable=False),  # assistant training text
        pa.field("target_format", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # "train" or "val"
    ]
)

COUNTERS = (
    "generated",  # generation rows
    "failed",  # generation rows with an error
    "graded",  # verdicts with correct True/False
    "ungradable",  # verdicts with correct None (no answer found, failed generation)
    "unterminated",  # verdicts with terminated False
    "correct",  # correct and terminated: candidates
    "filtered_pass_rate",
    "pass_rate_too_few_valid",
    "filtered_difficulty",
    "empty_reasoning",
    "capped",
    "filtered_mix",
    "accepted",
    "train",
    "val",
)


@dataclass
class SelectResult:
    """Selected examples (train / val tables of SELECTED_SCHEMA) and selection statistics."""

    train: pa.Table
    val: pa.Table
    stats: dict[str, Any] = field(default_factory=dict)

    def write(self, run: Any) -> dict[str, str]:
        """Write both splits to a run directory (store.Run) under the standard names."""
        return {SELECTED_TRAIN: str(run.write_table(SELECTED_TRAIN, self.train)),
                SELECTED_VAL: str(run.write_table(SELECTED_VAL, self.val))}


# --------------------------------------------------------------------------- hashing


def _h64(seed: int, value: str) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def split_of(item_id: str, seed: int, val_fraction: float) -> str:
    """'val' or 'train' for a question, from a hash of (seed, item id)."""
    if val_fraction <= 0:
        return "train"
    return "val" if _h64(seed, "split:" + item_id) / 2.0**64 < val_fraction else "train"


# --------------------------------------------------------------------------- targets

_THINK_OPEN = re.compile(r"<think(?:ing)?>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>.*?(?:</answer>|$)", re.IGNORECASE | re.DOTALL)
_ANNOUNCE_LINE = re.compile(
    r"^[\s*#>_-]*(?:(?:so|thus|therefore|hence)\b,?\s*)?(?:the\s+)?"
    r"(?:final\s+|correct\s+|best\s+)?answer\b\s*(?:is\b|:)?[^\n]{0,60}$",
    re.IGNORECASE,
)


def _find_last_boxed(text: str) -> tuple[int, int] | None:
    """(start, end) of the last \\boxed{...} with balanced braces, or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return start, j + 1
        start = text.rfind("\\boxed", 0, start)
    return None


def _strip_math_wrapper(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen (start, end) over a surrounding $$..$$, $..$ or \\[..\\] wrapper."""
    before, after = text[:start].rstrip(" "), text[end:].lstrip(" ")
    for open_, close in (("$$", "$$"), ("\\[", "\\]"), ("$", "$"), ("\\(", "\\)")):
        if before.endswith(open_) and after.startswith(close):
            return len(before) - len(open_), end + (len(text[end:]) - len(after)) + len(close)
    return start, end


def _remove_final_answer(text: str, method: str | None = None,
                         span: tuple[int | None, int | None] | None = None) -> str:
    """The text with its final answer (answer tag, last box, announcing line) removed."""
    out = text
    if method and "phrase" in method and span and span[0] is not None:
        # The answer was announced in prose: drop from the start of that line on.
        line_start = out.rfind("\n", 0, max(0, min(span[0], len(out)))) + 1
        out = out[:line_start]
    tags = list(_ANSWER_TAG.finditer(out))
    box = None if tags else _find_last_boxed(out)
    if tags:  # the tag holds the answer (boxed or not): remove it whole
        last = tags[-1]
        out = out[: last.start()] + out[last.end():]
    elif box is not None:
        s, e = _strip_math_wrapper(out, *box)
        out = out[:s] + out[e:]
    out = out.rstrip()
    # Drop trailing lines that only announce the answer ("**Final answer:**", "Answer: B").
    lines = out.split("\n")
    while lines and (not lines[-1].strip() or _ANNOUNCE_LINE.match(lines[-1].strip())):
        lines.pop()
    return "\n".join(lines).strip()


def extract_reasoning(text: str | None, reasoning: str | None = None, method: str | None = None,
                      span: tuple[int | None, int | None] | None = None) -> str:
    """The teacher's reasoning for a training target (see the module docstring for the rules)."""
    text = text or ""
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        inner = text[: closes[-1].start()]
        pieces = re.split(f"{_THINK_OPEN.pattern}|{_THINK_CLOSE.pattern}", inner,
                          flags=re.IGNORECASE)
        inner = "\n".join(p.strip() for p in pieces if p.strip())
        if inner:
            return inner
    if reasoning and reasoning.strip():
        return reasoning.strip()
    if closes:  # empty thinking block: reason from the visible answer part
        text = text[closes[-1].end():]
        span = None  # span offsets refer to the full text
    return _remove_final_answer(text, method, span)


def boxed_answer(options: list[str], answer: str) -> str:
    """Canonical final answer: \\boxed{B: option text} (MC) or \\boxed{answer text} (open)."""
    if options:
        idx = LETTERS.index(answer.strip().upper())
        return f"\\boxed{{{LETTERS[idx]}: {options[idx]}}}"
    return f"\\boxed{{{answer.strip()}}}"


def make_target(reasoning: str, options: list[str], answer: str, target_format: str) -> str:
    """Assistant training text in the chosen target format ("cot" or "direct")."""
    final = boxed_answer(options, answer)
    if target_format == "direct":
        return final
    return f"<think>\n{reasoning}\n</think>\n\n{final}"


# --------------------------------------------------------------------------- mixing


def _allocate(shares: dict[str, float], available: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` questions by `shares`, capped by availability; leftovers go to the others."""
    alloc = {s: 0 for s in shares}
    remaining = min(total, sum(available.get(s, 0) for s in shares if shares[s] > 0))
    open_ = {s for s, w in shares.items() if w > 0 and available.get(s, 0) > 0}
    while remaining > 0 and open_:
        wsum = sum(shares[s] for s in open_)
        raw = {s: remaining * shares[s] / wsum for s in open_}
        give = {s: min(math.floor(raw[s]), available[s] - alloc[s]) for s in open_}
        # Largest remainders get the rounding leftovers (ties broken by name: deterministic).
        left = remaining - sum(give.values())
        for s in sorted(open_, key=lambda s: (-(raw[s] - math.floor(raw[s])), s)):
            if left <= 0:
                break
            if give[s] < available[s] - alloc[s]:
                give[s] += 1
                left -= 1
        if sum(give.values()) == 0:
            break
        for s, g in give.items():
            alloc[s] += g
            remaining -= g
        open_ = {s for s in open_ if alloc[s] < available[s]}
    return alloc


def mix_quotas(config: SelectConfig, available: dict[str, int]) -> dict[str, int] | None:
    """Questions allowed per source under the mix settings (None: no limit)."""
    mix = config.mix
    if mix.weights:
        bad = {s: w for s, w in mix.weights.items() if w < 0}
        if bad:
            raise UserError(f"select.mix.weights must be >= 0; got {bad}")
        shares = {s: w for s, w in mix.weights.items() if w > 0}
        if not shares:
            raise UserError("select.mix.weights: at least one weight must be positive")
        if mix.total is not None:
            total = mix.total
        else:
            # Largest total whose proportions every weighted source can still fill.
            # Sources with nothing to give are ignored here (they simply get 0).
            fillable = {s: w for s, w in shares.items() if available.get(s, 0) > 0}
            fsum = sum(fillable.values())
            total = min((math.floor(available[s] * fsum / w + 1e-9) for s, w in fillable.items()),
                        default=0)
        alloc = _allocate(shares, available, total)
        quotas = {s: 0 for s in available}  # sources without a weight are left out
        quotas.update(alloc)
        if mix.quotas:
            for s, q in mix.quotas.items():
                quotas[s] = min(quotas.get(s, 0), q)
        return quotas
    if mix.quotas:
        return {s: (mix.quotas[s] if s in mix.quotas else available[s]) for s in available}
    if mix.total is not None:
        return _allocate({s: 1.0 for s in available}, available, mix.total)
    return None


# --------------------------------------------------------------------------- mixing over shards


def mix_key(seed: int, item_id: str) -> int:
    """A question's place in its source's mix order (ties broken by the item id)."""
    return _h64(seed, "mix:" + item_id)


def mix_limits(config: SelectConfig, keys: dict[str, Any]
               ) -> tuple[dict[str, int] | None, dict[str, list[Any] | None]]:
    """Quotas from every shard's candidate questions, and per source the last mix key kept.

    `keys` maps a source to a numpy uint64 array of its candidate questions' distinct
    `mix_key`s (8 bytes per question). The in-memory selection breaks ties between equal
    keys by item id; two questions sharing a 64-bit key (about one chance in 10^7 at a
    million questions) would both fall on the same side of the limit here. A source maps to
    None when its quota keeps nothing; sources kept whole are left out (nothing to cut).
    """
    import numpy as np

    quotas = mix_quotas(config, {s: len(k) for s, k in keys.items()})
    limits: dict[str, list[Any] | None] = {}
    if quotas is None:
        return None, limits
    for src, arr in keys.items():
        q = quotas.get(src, len(arr))
        if q >= len(arr):
            continue
        # [key, sentinel]: every id compares below the sentinel, so (key, id) <= limit keeps
        # exactly the q smallest keys.
        limits[src] = None if q <= 0 else [int(np.partition(arr, q - 1)[q - 1]), "\U0010ffff"]
    return quotas, limits


def apply_mix(table: pa.Table, limits: dict[str, list[Any] | None], seed: int
              ) -> tuple[pa.Table, dict[str, Any]]:
    """Keep the rows of questions within their source's mix limit; returns the kept rows and
    the change to the selection stats (`apply_mix_delta`)."""
    if not limits or table.num_rows == 0:
        return table, {}
    srcs, items, teachers, splits = (_col(table, c) for c in ("source", "item_id", "teacher",
                                                               "split"))
    keep = []
    delta: dict[str, Any] = {"by_source": defaultdict(Counter), "by_teacher": defaultdict(Counter),
                             "questions_by_source": defaultdict(Counter)}
    dropped_q: set[str] = set()
    for s, x, t, sp in zip(srcs, items, teachers, splits, strict=True):
        ok = True
        if s in limits:
            lim = limits[s]
            ok = lim is not None and (mix_key(seed, x), x) <= (int(lim[0]), lim[1])
        keep.append(ok)
        if not ok:
            for group, key in (("by_source", s), ("by_teacher", t or "")):
                delta[group][key]["filtered_mix"] += 1
                delta[group][key]["accepted"] -= 1
                delta[group][key][sp] -= 1
            if x not in dropped_q:
                dropped_q.add(x)
                q = delta["questions_by_source"][s]
                q["filtered_mix"] += 1
                q["selected"] -= 1
                q[sp] -= 1
    out = {g: {k: dict(c) for k, c in v.items()} for g, v in delta.items()}
    return table.filter(pa.array(keep)), out


def apply_mix_delta(stats: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Selection stats after the mix: `delta` (summed over shards) added to every total."""
    stats = json.loads(json.dumps(stats))
    for group in ("by_source", "by_teacher", "questions_by_source"):
        for key, changes in (delta.get(group) or {}).items():
            row = stats.setdefault(group, {}).setdefault(key, {})
            for name, n in changes.items():
                row[name] = row.get(name, 0) + n
    for total, group in (("totals", "by_source"), ("questions", "questions_by_source")):
        t = stats.setdefault(total, {})
        for changes in (delta.get(group) or {}).values():
            for name, n in changes.items():
                t[name] = t.get(name, 0) + n
    return stats


# --------------------------------------------------------------------------- the stage


def _col(table: pa.Table, name: str, default: Any = None) -> list[Any]:
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [default] * table.num_rows


def _new_counts() -> dict[str, int]:
    return {k: 0 for k in COUNTERS}


def select(items: pa.Table, generations: pa.Table, verdicts: pa.Table, config: SelectConfig,
           difficulty: dict[str, int] | None = None, *, defer_mix: bool = False,
           texts: Any = None) -> SelectResult:
    """Rejection-sample, filter, cap, mix and split graded traces into training examples.

    With `defer_mix` the mix quotas are not applied here: the result keeps every candidate,
    so that a sharded run can set the quotas from all shards' candidates together
    (`mix_limits`) and apply them shard by shard (`apply_mix`), with the same result as
    selecting everything at once.

    `texts(keys) -> table` (key, text, reasoning, model, completion_tokens) fetches the
    texts of the candidate traces when `generations` was read without them (a sharded run
    reads them from the shard file, only for the traces that survive the filters).
    """
    if config.difficulty is not None and difficulty is None:
        raise UserError(
            "select.difficulty is set but no difficulty ratings were given; run the "
            "difficulty judge first or remove select.difficulty from the recipe"
        )
    if config.pass_rate is not None and config.pass_rate.min_correct > config.pass_rate.max_correct:
        raise UserError("select.pass_rate.min_correct must be <= select.pass_rate.max_correct")
    if config.difficulty is not None and config.difficulty.min_rating > config.difficulty.max_rating:
        raise UserError("select.difficulty.min_rating must be <= select.difficulty.max_rating")

    seed = config.seed
    # -- items
    item_rows: dict[str, dict[str, Any]] = {}
    for row in items.select([c for c in ("id", "source", "task", "question", "options", "answer",
                                          "images", "modality", "anatomy")
                             if c in items.column_names]).to_pylist():
        item_rows[row["id"]] = row

    def src_of(item_id: str, fallback: str | None) -> str:
        it = item_rows.get(item_id)
        return it["source"] if it else (fallback or "")

    by_source: dict[str, dict[str, int]] = defaultdict(_new_counts)
    by_teacher: dict[str, dict[str, int]] = defaultdict(_new_counts)
    totals = _new_counts()

    def bump(name: str, source: str, teacher: str, n: int = 1) -> None:
        totals[name] += n
        by_source[source][name] += n
        by_teacher[teacher][name] += n

    # -- generations (light columns only)
    g_keys = _col(generations, "key")
    g_item = _col(generations, "item_id")
    g_src = _col(generations, "source")
    g_teacher = _col(generations, "teacher", "")
    g_err = _col(generations, "error")
    gen_index = {k: i for i, k in enumerate(g_keys)}
    for i in range(len(g_keys)):
        s, t = src_of(g_item[i], g_src[i]), g_teacher[i] or ""
        bump("generated", s, t)
        if g_err[i]:
            bump("failed", s, t)

    # -- verdicts: rejection sampling
    v = {c: _col(verdicts, c) for c in ("key", "item_id", "source", "teacher", "sample_index",
                                        "method", "span_start", "span_end", "terminated",
                                        "correct")}
    candidates: dict[str, list[int]] = defaultdict(list)  # item_id -> verdict row indices
    correct_by_teacher: dict[str, Counter] = defaultdict(Counter)  # item -> teacher -> n correct
    valid_by_teacher: dict[str, Counter] = defaultdict(Counter)  # item -> teacher -> n valid
    missing_item = missing_gen = 0
    for i in range(verdicts.num_rows):
        item_id = v["item_id"][i]
        s, t = src_of(item_id, v["source"][i]), v["teacher"][i] or ""
        correct, terminated = v["correct"][i], v["terminated"][i]
        if correct is None:
            bump("ungradable", s, t)
        else:
            bump("graded", s, t)
        if terminated is False:
            bump("unterminated", s, t)
        if correct is not None and terminated is not False:
            valid_by_teacher[item_id][t] += 1
        if correct is True and terminated is not False:
            correct_by_teacher[item_id][t] += 1
            if item_id not in item_rows:
                missing_item += 1
                continue
            if v["key"][i] not in gen_index:
                missing_gen += 1
                continue
            bump("correct", s, t)
            candidates[item_id].append(i)

    def drop(item_id: str, rows: Iterable[int], counter: str) -> None:
        for i in rows:
            bump(counter, src_of(item_id, None), v["teacher"][i] or "")

    q_stats: dict[str, dict[str, int]] = defaultdict(Counter)
    for it in item_rows.values():
        q_stats[it["source"]]["questions"] += 1
    for item_id in candidates:
        q_stats[src_of(item_id, None)]["with_correct"] += 1

    # -- pass-rate filter (counts every correct sample, before any cap)
    if config.pass_rate is not None:
        pr = config.pass_rate
        generated_by_teacher: dict[str, Counter] = defaultdict(Counter)
        for i in range(len(g_keys)):
            generated_by_teacher[g_item[i]][g_teacher[i] or ""] += 1

        def count(table: dict[str, Counter], item_id: str) -> int:
            c = table.get(item_id, Counter())
            return c.get(pr.teacher, 0) if pr.teacher is not None else sum(c.values())

        for item_id in list(candidates):
            correct, valid = count(correct_by_teacher, item_id), count(valid_by_teacher, item_id)
            n = max(count(generated_by_teacher, item_id), valid)
            if valid < (pr.min_valid if pr.min_valid is not None else n):
                drop(item_id, candidates.pop(item_id), "pass_rate_too_few_valid")
                q_stats[src_of(item_id, None)]["pass_rate_too_few_valid"] += 1
                continue
            # Compare correct/valid with the thresholds as rates of n (cross-multiplied: exact).
            if not (pr.min_correct * valid <= correct * n <= pr.max_correct * valid):
                drop(item_id, candidates.pop(item_id), "filtered_pass_rate")
                q_stats[src_of(item_id, None)]["filtered_pass_rate"] += 1

    # -- difficulty filter
    if config.difficulty is not None:
        assert difficulty is not None
        d = config.difficulty
        for item_id in list(candidates):
            rating = difficulty.get(item_id)
            if rating is None or not (d.min_rating <= int(rating) <= d.max_rating):
                drop(item_id, candidates.pop(item_id), "filtered_difficulty")
                q_stats[src_of(item_id, None)][
                    "unrated" if rating is None else "filtered_difficulty"] += 1

    # -- cap per question, in hash order; in cot format a trace without reasoning is
    # skipped and the next one in order takes its place. Only the texts of surviving
    # candidates are read, and traces beyond the cap are counted as capped unexamined.
    cot = config.target_format == "cot"
    cap = config.cap_per_question
    want = [v["key"][i] for rows in candidates.values() for i in rows]
    gen_text: dict[str, tuple[str | None, str | None]] = {}
    gen_meta: dict[str, tuple[str | None, int | None]] = {}
    if want:
        sub = texts(want) if texts is not None else generations.filter(
            pc.is_in(generations.column("key"), pa.array(want, pa.string())))
        sub_cols = {c: _col(sub, c) for c in ("key", "text", "reasoning", "model",
                                              "completion_tokens")}
        for j, key in enumerate(sub_cols["key"]):
            gen_text[key] = (sub_cols["text"][j], sub_cols["reasoning"][j])
            gen_meta[key] = (sub_cols["model"][j], sub_cols["completion_tokens"][j])
        del sub, sub_cols
    reasoning_of: dict[int, str] = {}
    for item_id in list(candidates):
        rows = candidates[item_id]
        rows.sort(key=lambda i: (_h64(seed, "cap:" + v["key"][i]), v["key"][i]))
        keep: list[int] = []
        for pos, i in enumerate(rows):
            if cap is not None and len(keep) >= cap:
                drop(item_id, rows[pos:], "capped")
                break
            text, reasoning = gen_text.pop(v["key"][i], (None, None))
            r = ""
            if cot:
                r = extract_reasoning(text, reasoning, v["method"][i],
                                      (v["span_start"][i], v["span_end"][i]))
                if not r:
                    drop(item_id, [i], "empty_reasoning")
                    continue
            reasoning_of[i] = r
            keep.append(i)
        if keep:
            candidates[item_id] = keep
        else:
            del candidates[item_id]
    gen_text.clear()

    # -- mixing (in questions)
    per_source: dict[str, list[str]] = defaultdict(list)
    for item_id in candidates:
        per_source[src_of(item_id, None)].append(item_id)
    for ids in per_source.values():
        ids.sort(key=lambda x: (_h64(seed, "mix:" + x), x))
    quotas = None if defer_mix else mix_quotas(config, {s: len(ids) for s, ids in per_source.items()})
    if quotas is not None:
        for s, ids in per_source.items():
            q = quotas.get(s, len(ids))
            for item_id in ids[q:]:
                drop(item_id, candidates.pop(item_id), "filtered_mix")
                q_stats[s]["filtered_mix"] += 1

    # -- rows, built column-wise in bounded chunks (targets can be large)
    names = SELECTED_SCHEMA.names
    buffers: dict[str, dict[str, list[Any]]] = {sp: {n: [] for n in names} for sp in ("train", "val")}
    batches: dict[str, list[pa.RecordBatch]] = {"train": [], "val": []}

    def flush(sp: str) -> None:
        buf = buffers[sp]
        if buf["id"]:
            batches[sp].append(pa.RecordBatch.from_pydict(buf, schema=SELECTED_SCHEMA))
            for col in buf.values():
                col.clear()

    for item_id in sorted(candidates):
        it = item_rows[item_id]
        split = split_of(item_id, seed, config.val_fraction)
        q_stats[it["source"]]["selected"] += 1
        q_stats[it["source"]][split] += 1
        options = list(it.get("options") or [])
        answer = it["answer"]
        answer_text = options[LETTERS.index(answer.strip().upper())] if options else answer
        buf = buffers[split]
        for i in candidates[item_id]:
            key = v["key"][i]
            model, completion_tokens = gen_meta.get(key, (None, None))
            teacher = v["teacher"][i] or ""
            values = {
                "id": f"{item_id}#{key}", "item_id": item_id, "source": it["source"],
                "task": it["task"], "question": it["question"], "options": options,
                "answer": answer, "answer_text": answer_text,
                "images": list(it.get("images") or []), "modality": it.get("modality"),
                "anatomy": it.get("anatomy"), "teacher": teacher, "model": model, "key": key,
                "sample_index": v["sample_index"][i], "method": v["method"][i],
                "completion_tokens": completion_tokens,
                "target": make_target(reasoning_of.pop(i), options, answer, config.target_format),
                "target_format": config.target_format, "split": split,
            }
            for n in names:
                buf[n].append(values[n])
            bump("accepted", it["source"], teacher)
            bump(split, it["source"], teacher)
            if len(buf["id"]) >= 4096:
                flush(split)
    for sp in ("train", "val"):
        flush(sp)
    train = pa.Table.from_batches(batches["train"], schema=SELECTED_SCHEMA)
    val = pa.Table.from_batches(batches["val"], schema=SELECTED_SCHEMA)

    q_totals: Counter = Counter()
    for c in q_stats.values():
        q_totals.update(c)
    stats = {
        "totals": totals,
        "by_source": {k: by_source[k] for k in sorted(by_source)},
        "by_teacher": {k: by_teacher[k] for k in sorted(by_teacher)},
        "questions": dict(q_totals),
        "questions_by_source": {k: dict(q_stats[k]) for k in sorted(q_stats)},
        "mix_quotas": quotas,
        "missing_item": missing_item,
        "missing_generation": missing_gen,
        "target_format": config.target_format,
    }
    # Round-trip through JSON so the manifest gets plain types only.
    stats = json.loads(json.dumps(stats))
    return SelectResult(train=train, val=val, stats=stats)
