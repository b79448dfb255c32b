"""One self-contained HTML page per run: plots and images embedded, all model text escaped."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape

import medrecipe
from medrecipe.config import ReportConfig
from medrecipe.report.plots import make_plots
from medrecipe.report.sample import round_robin
from medrecipe.report.scan import fetch_rows
from medrecipe.report.stats import RunScan, generation_checks, scan_run
from medrecipe.schema import LETTERS
from medrecipe.store import Run

TEMPLATE = "report.html.j2"
ImageResolver = Callable[[str], Path]


def _env() -> Environment:
    # Autoescape is forced on for every template: teacher text may contain any markup.
    return Environment(loader=FileSystemLoader(str(Path(__file__).parent)),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       trim_blocks=True, lstrip_blocks=True)


def default_resolver(run: Run) -> ImageResolver | None:
    """Image resolver for a run: the recipe's image store, else <run>/images."""
    root = run.manifest.get("image_store")
    recipe_file = run.root / "recipe.yaml"
    if not root and recipe_file.exists():
        try:
            root = (yaml.safe_load(recipe_file.read_text()) or {}).get("image_store")
        except yaml.YAMLError:
            root = None
    folder = Path(root) if root else run.root / "images"
    if not folder.is_absolute():
        folder = run.root / folder if not folder.exists() else folder
    if not folder.exists():
        return None
    from medrecipe.images import ImageStore

    store = ImageStore(folder)
    return store.path


def data_uri_png(path: Path) -> str:
    """A file's bytes as a data: URI (PNG)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def thumbnail(ref: str, resolve: ImageResolver | None, max_px: int) -> str | None:
    """A data: URI of a downscaled copy of an image ref, or None when unavailable."""
    if resolve is None:
        return None
    try:
        from PIL import Image

        with Image.open(resolve(ref)) as im:
            im = im.convert("RGB")
            im.thumbnail((max_px, max_px))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except Exception:  # noqa: BLE001 - a missing image must not break the report
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cut(text: str | None, limit: int) -> str:
    text = text or ""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… [{len(text) - limit} more characters not shown]"


def _item_view(item: dict[str, Any] | None, resolve: ImageResolver | None,
               cfg: ReportConfig) -> dict[str, Any]:
    if not item:
        return {"question": None, "options": [], "answer": None, "images": []}
    options = list(item.get("options") or [])
    answer = item.get("answer")
    return {
        "question": _cut(item.get("question"), cfg.max_text_chars),
        "options": [{"letter": LETTERS[i], "text": o, "correct": LETTERS[i] == answer}
                    for i, o in enumerate(options)],
        "answer": answer,
        "images": [{"ref": r, "uri": thumbnail(r, resolve, cfg.thumbnail_px)}
                   for r in (item.get("images") or [])],
    }


ITEM_VIEW_COLUMNS = ["id", "question", "options", "answer", "images"]


def accepted_examples(scan: RunScan, resolve: ImageResolver | None, cfg: ReportConfig
                      ) -> list[dict[str, Any]]:
    """Selected traces, spread over sources, in a stable order (only these rows are read)."""
    picked = round_robin(scan.accepted, cfg.examples) if cfg.examples > 0 else []
    wanted = {p["id"]: p["item_id"] for p in picked}
    rows = {**fetch_rows(scan.files.train, "id", wanted), **fetch_rows(scan.files.val, "id", wanted)}
    out = []
    for p in picked:
        row = rows.get(p["id"], p)
        view = _item_view(row, resolve, cfg)
        view.update(kind="accepted", source=row["source"], item_id=row["item_id"],
                    teacher=row.get("teacher"), method=row.get("method"),
                    extracted=None, split=row.get("split"),  # accepted: equals the truth
                    text=_cut(row.get("target"), cfg.max_text_chars))
        out.append(view)
    return out


def rejected_examples(scan: RunScan, resolve: ImageResolver | None, cfg: ReportConfig
                      ) -> list[dict[str, Any]]:
    """Wrong, unparsed, unterminated and failed traces, a few of each kind (texts read by key)."""
    picked = round_robin(scan.rejected, cfg.examples) if cfg.examples > 0 else []
    if not picked:
        return []
    gens = fetch_rows(scan.files.generations, "key", {r["key"]: r["item_id"] for r in picked},
                      ["text", "error"])
    items = fetch_rows(scan.files.items, "id", {r["item_id"]: r["item_id"] for r in picked},
                       ITEM_VIEW_COLUMNS)
    out = []
    for r in picked:
        g = gens.get(r["key"], {})
        view = _item_view(items.get(r["item_id"]), resolve, cfg)
        text = g.get("text") if g.get("text") is not None else (g.get("error") or "")
        view.update(kind=r["reason"], source=r["source"], item_id=r["item_id"],
                    teacher=r["teacher"], method=r.get("method"), extracted=r.get("answer"),
                    split=None, text=_cut(text, cfg.max_text_chars))
        out.append(view)
    return out


def render_report(root: Path, stats: dict[str, Any], plots: dict[str, Path],
                  accepted: list[dict[str, Any]], rejected: list[dict[str, Any]],
                  curate: dict[str, Any] | None = None,
                  checks: dict[str, Any] | None = None) -> str:
    """The HTML page as a string (`checks`: `stats.generation_checks` of the run)."""
    template = _env().get_template(TEMPLATE)
    if curate is not None:
        curate = {**curate, "plots": {k: data_uri_png(p) for k, p in curate["plots"].items()}}
    return template.render(
        title=f"medrecipe report: {stats.get('recipe_name') or root.name}",
        generated_at=time.strftime("%Y-%m-%d %H:%M:%S"),
        version=medrecipe.__version__,
        s=stats,
        plots={k: data_uri_png(p) for k, p in plots.items()},
        accepted=accepted,
        rejected=rejected,
        curate=curate,
        checks=checks,
    )


def write_report(run: Run | str | Path, out_dir: str | Path | None = None,
                 config: ReportConfig | None = None,
                 image_resolver: ImageResolver | None = None) -> Path:
    """Write PNG plots and a self-contained report.html for a run; returns the HTML path."""
    from medrecipe.store import atomic_write_text

    config = config or ReportConfig()
    if not isinstance(run, Run):
        run = Run(run, create=False)
    out = Path(out_dir) if out_dir is not None else run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    scan = scan_run(run, examples=config.examples)
    resolve = image_resolver if image_resolver is not None else default_resolver(run)
    plots = make_plots(scan, out)
    from medrecipe.report.curate import curate_report

    html = render_report(run.root, scan.stats, plots, accepted_examples(scan, resolve, config),
                         rejected_examples(scan, resolve, config),
                         curate=curate_report(run, resolve, config, out),
                         checks=generation_checks(run.root, run.manifest))
    path = out / "report.html"
    atomic_write_text(path, html)
    return path
