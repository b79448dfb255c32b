"""medrecipe command line: run, demo, ingest, validate, inspect, eval, train, report, sources."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medrecipe.console import console, err_console
from medrecipe.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build medical multimodal reasoning data, train a student VLM, evaluate it.")

Overrides = Annotated[list[str] | None, typer.Option(
    "--override", "-o", help="Dotted override, e.g. -o sources.0.limit=100 (repeatable).")]
RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.")]
RunArg = Annotated[Path, typer.Argument(help="Run directory.")]


def _load(recipe: Path, overrides: list[str] | None):
    from medrecipe.config import load_recipe

    return load_recipe(recipe, overrides or [])


def packaged_recipe(name: str) -> Path:
    """Path of a recipe shipped inside the package (recipes/<name>.yaml)."""
    from importlib.resources import files

    return Path(str(files("medrecipe") / "recipes" / f"{name}.yaml"))


# --------------------------------------------------------------------------- commands


@app.command()
def sources() -> None:
    """List the source adapters and what each needs."""
    from medrecipe.sources import adapters

    t = Table(title="source adapters", show_lines=False)
    for col in ("adapter", "task", "hub id", "path should be", "options"):
        t.add_column(col, overflow="fold")
    for a in adapters().values():
        opts = "; ".join(f"{k}: {v}" for k, v in a.options.items())
        t.add_row(a.name, a.task or "(from data)", a.hub_id or "", a.needs, opts)
    console.print(t)


@app.command()
def validate(recipe: RecipeArg, override: Overrides = None) -> None:
    """Check a recipe; list every problem with its YAML path (exit 2 when invalid)."""
    r, _ = _load(recipe, override)
    console.print(f"[green]ok[/green]: recipe {r.name!r}: {len(r.sources)} source(s), "
                  f"{len(r.teachers)} teacher(s); run directory {r.resolved_run_dir()}")


@app.command()
def ingest(recipe: RecipeArg, override: Overrides = None,
           force: Annotated[bool, typer.Option(help="Re-ingest even if up to date.")] = False) -> None:
    """Ingest the recipe's sources into its run directory."""
    from medrecipe import pipeline

    r, raw = _load(recipe, override)
    ctx = pipeline.open_context(r, raw, force={"ingest"} if force else set())
    pipeline.ingest(ctx)
    print_ingest_table(ctx.run)
    console.print(f"run directory: {ctx.run.root}")


@app.command()
def inspect(run_dir: RunArg,
            samples: Annotated[int, typer.Option(help="Sample rows to show.")] = 3) -> None:
    """Counts by source, split, task and modality; quarantine reasons; a few rows."""
    from medrecipe.inspect import inspect_run

    inspect_run(run_dir, samples=samples)


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/demo).")] = None,
) -> None:
    """Run the packaged demo recipe offline on the bundled demo data."""
    from medrecipe import pipeline

    overrides = [f"run_dir={out}"] if out else []
    r, raw = _load(packaged_recipe("demo"), overrides)
    ctx = pipeline.open_context(r, raw)
    pipeline.ingest(ctx)
    print_ingest_table(ctx.run)
    console.print(f"run directory: {ctx.run.root}")


def print_ingest_table(run) -> None:
    """Per-source / per-task counts of ingested items, with quarantine counts."""
    from medrecipe.inspect import ingest_counts

    counts, tasks = ingest_counts(run)
    t = Table(title="ingested items")
    t.add_column("source")
    t.add_column("role")
    for task in tasks:
        t.add_column(task, justify="right")
    t.add_column("total", justify="right")
    t.add_column("quarantined", justify="right")
    for src, row in counts.items():
        t.add_row(src, row["role"], *[str(row["tasks"].get(k, 0)) for k in tasks],
                  str(row["total"]), str(row["quarantined"]))
    console.print(t)


# --------------------------------------------------------------------------- entry point


def main() -> None:
    """Console entry point: user errors print one paragraph and exit 2, no traceback."""
    try:
        app(standalone_mode=False)
    except UserError as e:
        err_console.print(f"[bold red]error:[/bold red] {e}")
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors carry their own exit codes
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
