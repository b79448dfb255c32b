"""Question sources: a registry of adapters that yield Arrow tables of Items.

    from medrecipe.sources import load
    for table in load(spec, images=store, quarantine=rows):
        ...

Each adapter module registers itself with `@register(...)`; `medrecipe sources` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import import_module

import pyarrow as pa

from medrecipe.config import SourceSpec
from medrecipe.errors import SourceError
from medrecipe.images import ImageStore
from medrecipe.schema import QuarantineRow
from medrecipe.sources.base import BuildStats, RawStream, build_items


@dataclass
class Adapter:
    """A registered source adapter: a raw-row generator plus what it needs from the user."""

    name: str
    fn: Callable[[SourceSpec], RawStream]
    description: str
    needs: str  # what `path` should point at, in a sentence
    task: str | None = None
    hub_id: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # adapter option -> help


REGISTRY: dict[str, Adapter] = {}
_MODULES = ("generic", "text_mcq", "vqa", "imagefolder")
_loaded = False


def register(name: str, *, description: str, needs: str, task: str | None = None,
             hub_id: str | None = None, options: dict[str, str] | None = None):
    """Decorator registering an adapter function under `name`."""

    def deco(fn: Callable[[SourceSpec], RawStream]):
        REGISTRY[name] = Adapter(name, fn, description, needs, task, hub_id, options or {})
        return fn

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _MODULES:
        try:
            import_module(f"medrecipe.sources.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"medrecipe.sources.{mod}":
                raise
    _loaded = True


def adapters() -> dict[str, Adapter]:
    """All registered adapters by name."""
    _ensure_loaded()
    return dict(sorted(REGISTRY.items()))


def get_adapter(name: str) -> Adapter:
    _ensure_loaded()
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise SourceError(f"unknown source adapter {name!r}; known adapters: {known}")
    return REGISTRY[name]


def load(spec: SourceSpec, *, images: ImageStore | None = None,
         quarantine: list[QuarantineRow] | None = None, batch_size: int = 4096,
         stats: BuildStats | None = None,
         on_rows: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """Stream a source as Arrow tables of validated Items; unusable rows go to `quarantine`."""
    adapter = get_adapter(spec.adapter)
    if spec.task is None and adapter.task is not None:
        spec = spec.model_copy(update={"task": adapter.task})
    yield from build_items(spec, adapter.fn(spec), store=images, quarantine=quarantine,
                           batch_size=batch_size, stats=stats, on_rows=on_rows)


__all__ = ["Adapter", "REGISTRY", "register", "adapters", "get_adapter", "load", "BuildStats"]
