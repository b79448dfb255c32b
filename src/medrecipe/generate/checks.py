"""Checks over the responses of a generate run that a user needs to hear about.

Two problems cost a whole run and are silent in the numbers of requests and spend:

* responses cut at the token limit (``finish_reason == "length"``): they usually end before
  the final answer or inside the thinking, so selection rarely keeps them;
* questions whose n samples (n > 1) all came back identical: the server ignores the
  sampling parameters (temperature, top_p, seed) or `n`, so rejection sampling has one
  trace per question, not n.

`OutputChecks` counts both while the engine writes its batches (all of it: answers from
the cache too), per teacher, in memory bounded by the questions whose samples are still
arriving. The counts are plain integers, so the stats of shards add up (`store.merge_stats`).
`check_warnings` turns them into one line per teacher and problem that passes the
thresholds of `generate.warn`, naming the fix.

Definitions:

* ``responses``: answered responses (no request error); ``length_cut``: those of them with
  ``finish_reason == "length"``.
* ``sampled_items``: questions with at least two answered samples, one of them at least
  `IDENTICAL_MIN_CHARS` characters long (a one-letter direct answer repeats by chance, a
  reasoning trace does not); ``identical_items``: those whose answered samples all have
  the same text and reasoning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medrecipe.config import GenerateWarnings, TeacherConfig
    from medrecipe.schema import Generation

__all__ = ["IDENTICAL_MIN_CHARS", "CHECK_COUNTS", "OutputChecks", "check_warnings"]

IDENTICAL_MIN_CHARS = 64
CHECK_COUNTS = ("responses", "length_cut", "sampled_items", "identical_items")


def _digest(g: Generation) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update((g.text or "").encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
    h.update((g.reasoning or "").encode("utf-8", "surrogatepass"))
    return h.digest()


class OutputChecks:
    """Counts length-cut responses and questions with identical samples, per teacher."""

    def __init__(self, n: int):
        self.n = n
        self.by_teacher: dict[str, dict[str, int]] = {}
        # (teacher, item id) -> [samples seen, answered, digest of the first, same, long]
        self._open: dict[tuple[str, str], list[Any]] = {}

    def _counts(self, teacher: str) -> dict[str, int]:
        c = self.by_teacher.get(teacher)
        if c is None:
            c = self.by_teacher[teacher] = dict.fromkeys(CHECK_COUNTS, 0)
        return c

    def add(self, batch: Iterable[Generation]) -> None:
        """Count one batch of generations (any order; samples of a question may be apart)."""
        for g in batch:
            c = self._counts(g.teacher)
            answered = g.error is None
            if answered:
                c["responses"] += 1
                if g.finish_reason == "length":
                    c["length_cut"] += 1
            if self.n < 2:
                continue
            key = (g.teacher, g.item_id)
            st = self._open.get(key)
            if st is None:
                st = self._open[key] = [0, 0, None, True, False]
            st[0] += 1
            if answered:
                d = _digest(g)
                st[1] += 1
                if st[2] is None:
                    st[2] = d
                elif d != st[2]:
                    st[3] = False
                if len(g.text or "") + len(g.reasoning or "") >= IDENTICAL_MIN_CHARS:
                    st[4] = True
            if st[0] >= self.n:  # every sample of the question is in: settle it
                self._settle(key, self._open.pop(key))

    def _settle(self, key: tuple[str, str], st: list[Any]) -> None:
        _, answered, _, same, long = st
        if answered >= 2 and long:
            c = self._counts(key[0])
            c["sampled_items"] += 1
            c["identical_items"] += int(same)

    def counts(self) -> dict[str, Any]:
        """{responses, length_cut, sampled_items, identical_items, by_teacher: {...}}."""
        for key, st in list(self._open.items()):  # questions cut short (budget, stop)
            self._settle(key, st)
        self._open.clear()
        total = dict.fromkeys(CHECK_COUNTS, 0)
        for c in self.by_teacher.values():
            for k in CHECK_COUNTS:
                total[k] += c[k]
        return {**total, "by_teacher": {t: dict(c) for t, c in sorted(self.by_teacher.items())}}


def _over(num: int, den: int, threshold: float | None) -> bool:
    return threshold is not None and den > 0 and num > 0 and num / den > threshold


def check_warnings(checks: Mapping[str, Any] | None, warn: GenerateWarnings, n: int,
                   teachers: Mapping[str, TeacherConfig] | None = None) -> list[str]:
    """One line per teacher and problem whose share passes `warn`'s threshold, with the fix."""
    if not checks:
        return []
    teachers = teachers or {}
    out: list[str] = []
    for name, c in sorted((checks.get("by_teacher") or {}).items()):
        cfg = teachers.get(name)
        cut, resp = int(c.get("length_cut", 0)), int(c.get("responses", 0))
        if _over(cut, resp, warn.length_cut):
            limit = f" (now {cfg.sampling.max_tokens})" if cfg is not None else ""
            out.append(
                f"teacher {name!r}: {cut} of {resp} responses ({100 * cut / resp:.1f}%) were cut "
                f"at the token limit (finish_reason=length); a cut response usually ends before "
                f"its final answer or inside its thinking, so selection rarely keeps it. Raise "
                f"teachers.{name}.sampling.max_tokens{limit}; the next run then asks this "
                f"teacher again (max_tokens is part of the request cache key)")
        same, items = int(c.get("identical_items", 0)), int(c.get("sampled_items", 0))
        if _over(same, items, warn.identical_samples):
            if cfg is not None and cfg.sampling.temperature == 0:
                fix = (f"With teachers.{name}.sampling.temperature at 0 every sample is the "
                       "same: set it above 0 (e.g. 0.6), or generate.n: 1")
            else:
                fix = ("The server ignores the sampling parameters or `n`: check that it "
                       "samples at the temperature and top_p sent (some servers decode "
                       "greedily when the model's generation_config.json says do_sample: "
                       "false); if it is deterministic per seed, set "
                       f"teachers.{name}.sampling.seed so each sample gets its own seed")
            out.append(
                f"teacher {name!r}: {same} of {items} questions ({100 * same / items:.1f}%) got "
                f"{n} identical samples; rejection sampling then has one trace per question, "
                f"not {n}. {fix}")
    return out
