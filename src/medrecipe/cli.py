"""medrecipe command line: run, demo, curate, ingest, validate, inspect, eval, train, report, sources."""

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


def recipe_path(path: Path) -> Path:
    """`path` when it exists, else the packaged recipe of that name (`curate_demo.yaml`)."""
    if path.exists() or path.parent != Path("."):
        return path
    packaged = packaged_recipe(path.name.removesuffix(".yaml").removesuffix(".yml"))
    return packaged if packaged.exists() else path


def _is_curate(recipe: Path) -> bool:
    import yaml

    from medrecipe.curate.config import is_curate_data

    try:
        return is_curate_data(yaml.safe_load(recipe.read_text()))
    except (OSError, yaml.YAMLError):
        return False


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
    from medrecipe.curate.records import ADAPTERS

    f = Table(title="figure-record adapters (medrecipe curate)")
    for col in ("adapter", "reads", "path should be"):
        f.add_column(col, overflow="fold")
    for a in sorted(ADAPTERS.values(), key=lambda a: a.name):
        f.add_row(a.name, a.description, a.needs)
    console.print(f)


@app.command()
def validate(recipe: RecipeArg, override: Overrides = None) -> None:
    """Check a recipe; list every problem with its YAML path (exit 2 when invalid)."""
    recipe = recipe_path(recipe)
    if _is_curate(recipe):
        from medrecipe.curate.config import load_curate_recipe

        c, _ = load_curate_recipe(recipe, override or [])
        console.print(f"[green]ok[/green]: curation recipe {c.name!r}: {len(c.sources)} "
                      f"source(s), {len(c.teachers)} teacher(s); run directory "
                      f"{c.resolved_run_dir()}")
        return
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
def run(recipe: RecipeArg, override: Overrides = None,
        force: Annotated[list[str] | None, typer.Option(
            help="Re-run these stages even if up to date (ingest, prepare, annotate, generate, "
                 "grade, select, export; or all). Teacher requests still come from the cache.")] = None,
        progress: Annotated[bool | None, typer.Option(
            "--progress/--no-progress", help="Progress bars (default: on a terminal).")] = None) -> None:
    """Run a recipe end to end: ingest, prepare, generate, grade, select, export, report."""
    from medrecipe import pipeline

    r, raw = _load(recipe, override)
    ctx = pipeline.open_context(r, raw, progress=progress, force=set(force or []))
    _finish(pipeline.run_recipe(ctx))


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/demo).")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
) -> None:
    """Run the packaged demo recipe offline (replayed teacher answers over bundled demo data)."""
    from medrecipe import pipeline

    overrides = [f"run_dir={out}"] if out else []
    r, raw = _load(packaged_recipe("demo"), overrides)
    ctx = pipeline.open_context(r, raw, progress=progress)
    outcome = pipeline.run_recipe(ctx)
    print_ingest_table(ctx.run)
    _finish(outcome)


@app.command()
def curate(recipe: RecipeArg, override: Overrides = None,
           force: Annotated[list[str] | None, typer.Option(
               help="Re-run these stages even if up to date (ingest, measure, visual, context, "
                    "tasks, questions, checks, probe, items; or all). Model replies still come "
                    "from the cache.")] = None,
           progress: Annotated[bool | None, typer.Option(
               "--progress/--no-progress", help="Progress bars (default: on a terminal).")] = None
           ) -> None:
    """Curate figure records into image-dependent clinical questions (a `kind: curate` recipe)."""
    from medrecipe.curate.config import load_curate_recipe
    from medrecipe.curate.stage import open_curate_context, run_curation
    from medrecipe.inspect import print_funnel

    r, raw = load_curate_recipe(recipe_path(recipe), override or [])
    ctx = open_curate_context(r, raw, progress=progress, force=set(force or []))
    outcome = run_curation(ctx)
    print_funnel(ctx.run)
    console.print(f"{outcome.items} items: {ctx.run.path('items')}")
    console.print(f"run directory: {outcome.run_dir}")
    if not outcome.complete:
        console.print("[yellow]some stages stopped early (budget or failed requests); re-run "
                      "to continue[/yellow]")
    if outcome.report:
        console.print(f"report: {outcome.report}")


def _finish(outcome) -> None:
    if outcome.exports:
        console.print("[bold]exports[/bold]")
        for key in ("llamafactory", "dataset_info", "trl", "jsonl_train"):
            if key in outcome.exports:
                console.print(f"  {key}: {outcome.exports[key]}")
    console.print(f"run directory: {outcome.run_dir}")
    if not outcome.complete:
        console.print("[yellow]some stages stopped early (budget); re-run to continue[/yellow]")
    if outcome.report:
        console.print(f"report: {outcome.report}")


@app.command()
def report(run_dir: RunArg,
           out: Annotated[Path | None, typer.Option(help="Output folder (default <run>/report).")] = None
           ) -> None:
    """Write PNG plots and a self-contained HTML report for a run."""
    from medrecipe.config import ReportConfig, recipe_from_data
    from medrecipe.inspect import open_run
    from medrecipe.report import write_report

    run_ = open_run(run_dir)
    cfg = ReportConfig()
    recipe_file = run_.root / "recipe.yaml"
    if recipe_file.exists():
        import yaml

        from medrecipe.curate.config import curate_recipe_from_data, is_curate_data

        data = yaml.safe_load(recipe_file.read_text())
        load = curate_recipe_from_data if is_curate_data(data) else recipe_from_data
        cfg = load(data, str(recipe_file)).report
    console.print(f"report: {write_report(run_, out_dir=out, config=cfg)}")


@app.command("eval")
def eval_(
    targets: Annotated[list[str], typer.Argument(help="Evaluation recipe YAML, or `compare RUN...`.")],
    override: Overrides = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (eval; default runs/eval/<name>) or "
                                                  "output folder (compare).")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
) -> None:
    """Evaluate a model on benchmarks (RECIPE), or compare evaluation runs (compare RUN...)."""
    from medrecipe.evaluate.commands import eval_command

    eval_command(targets, override, out=out, progress=progress, console=console)


train_app = typer.Typer(no_args_is_help=True, help="Train a student VLM on an export (TRL SFT / "
                        "GRPO) or write a LLaMA-Factory config.")
app.add_typer(train_app, name="train")
ConfigArg = Annotated[Path, typer.Argument(help="Training config YAML.")]


@train_app.command("sft")
def train_sft(config: ConfigArg, override: Overrides = None) -> None:
    """Supervised fine-tuning (TRL) on the TRL export: full or LoRA; presets octomed, openmedreason_lora."""
    from medrecipe.train import load_sft_config, run_sft

    console.print(f"final checkpoint: {run_sft(load_sft_config(config, override or []))}")


@train_app.command("grpo")
def train_grpo(config: ConfigArg, override: Overrides = None) -> None:
    """GRPO from an SFT checkpoint or adapter with format + exact-match correctness rewards."""
    from medrecipe.train import load_grpo_config, run_grpo

    console.print(f"final checkpoint: {run_grpo(load_grpo_config(config, override or []))}")


@train_app.command("llamafactory")
def train_llamafactory(config: ConfigArg, override: Overrides = None) -> None:
    """Write a LLaMA-Factory training YAML and the dataset_info.json entry for the export."""
    from medrecipe.train import load_llamafactory_config, write_llamafactory

    yaml_path, info_path = write_llamafactory(load_llamafactory_config(config, override or []))
    console.print(f"wrote {yaml_path} and {info_path}\nrun: llamafactory-cli train {yaml_path}")


def print_ingest_table(run) -> None:
    """Per-source / per-task counts of ingested items, with quarantine counts."""
    from medrecipe.inspect import ingest_counts

    counts, tasks = ingest_counts(run)
    short = {"mm_reasoning": "mm_reas", "mm_classification": "mm_cls", "open_vqa": "vqa"}
    t = Table(title="ingested items", caption="mm_reas = mm_reasoning, mm_cls = "
              "mm_classification, vqa = open_vqa; quar. = rows quarantined")
    t.add_column("source", no_wrap=True)
    t.add_column("role", max_width=9, overflow="ellipsis")
    for task in tasks:  # short headers so the table fits an 80-column terminal
        t.add_column(short.get(task, task), justify="right", no_wrap=True)
    t.add_column("total", justify="right", no_wrap=True)
    t.add_column("quar.", justify="right", no_wrap=True)
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
