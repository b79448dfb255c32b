"""Agreement between two sets of labels on the same cases: percent agreement and Cohen's kappa.

Used for judge reliability (the same judge under two seeds, two judges) and for reviewers
of the review page. Cases where either side has no label (None) are left out; both
numbers say over how many cases they were taken.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any


def paired(a: Sequence[Hashable | None], b: Sequence[Hashable | None]) -> list[tuple[Any, Any]]:
    """The cases both sides labelled."""
    if len(a) != len(b):
        raise ValueError(f"label lists differ in length ({len(a)} vs {len(b)})")
    return [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]


def percent_agreement(a: Sequence[Hashable | None], b: Sequence[Hashable | None]) -> float | None:
    """Share of jointly labelled cases with equal labels (None when there are none)."""
    pairs = paired(a, b)
    return sum(x == y for x, y in pairs) / len(pairs) if pairs else None


def cohen_kappa(a: Sequence[Hashable | None], b: Sequence[Hashable | None]) -> float | None:
    """Cohen's kappa (observed agreement corrected for chance) over jointly labelled cases.

    None when no case is jointly labelled, or when chance agreement is 1 (both sides gave
    one and the same label to every case: agreement is perfect but kappa is undefined).
    """
    pairs = paired(a, b)
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(x == y for x, y in pairs) / n
    ca, cb = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def agreement(a: Sequence[Hashable | None], b: Sequence[Hashable | None]) -> dict[str, Any]:
    """{"n", "agreement", "kappa"} of two label lists."""
    return {"n": len(paired(a, b)), "agreement": percent_agreement(a, b), "kappa": cohen_kappa(a, b)}


__all__ = ["agreement", "cohen_kappa", "paired", "percent_agreement"]
