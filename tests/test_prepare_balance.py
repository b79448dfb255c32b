"""Class balancing: exact per-class counts, same rows for the same seed."""

from __future__ import annotations

from collections import Counter

from medrecipe.config import BalanceConfig
from medrecipe.prepare.balance import balance
from medrecipe.schema import ITEM_SCHEMA, Item, to_table


def _table(counts: dict[str, int], source="cls", shuffle=False):
    rows = [Item(id=f"{source}/{c}{i}", source=source, task="mm_classification", question="Class?",
                 options=["a", "b", "c"], answer=c) for c, n in counts.items() for i in range(n)]
    if shuffle:
        rows = rows[::-1]
    return to_table(rows, ITEM_SCHEMA)


def test_equal_downsamples_to_the_rarest_class():
    t = _table({"A": 50, "B": 7, "C": 20})
    kept, report = balance(t, BalanceConfig(enabled=True, per_class="equal", seed=1))
    assert Counter(kept.column("answer").to_pylist()) == {"A": 7, "B": 7, "C": 7}
    assert report["cls"]["before"] == {"A": 50, "B": 7, "C": 20}


def test_per_class_n_is_exact_and_keeps_small_classes_whole():
    t = _table({"A": 50, "B": 7, "C": 20})
    kept, _ = balance(t, BalanceConfig(enabled=True, per_class=10, seed=0))
    assert Counter(kept.column("answer").to_pylist()) == {"A": 10, "B": 7, "C": 10}


def test_same_seed_same_rows_in_any_input_order_other_seed_differs():
    cfg = BalanceConfig(enabled=True, per_class=10, seed=3)
    a = set(balance(_table({"A": 50, "B": 30}), cfg)[0].column("id").to_pylist())
    b = set(balance(_table({"A": 50, "B": 30}, shuffle=True), cfg)[0].column("id").to_pylist())
    c = set(balance(_table({"A": 50, "B": 30}), cfg.model_copy(update={"seed": 4}))[0]
            .column("id").to_pylist())
    assert a == b and a != c


def test_only_classification_sources_are_balanced_by_default():
    text = to_table([Item(id=f"t/{i}", source="t", task="text", question="Q?", options=["a", "b"],
                          answer="A") for i in range(5)], ITEM_SCHEMA)
    import pyarrow as pa

    t = pa.concat_tables([_table({"A": 6, "B": 2}), text])
    kept, report = balance(t, BalanceConfig(enabled=True))
    assert set(report) == {"cls"} and kept.num_rows == 4 + 5
