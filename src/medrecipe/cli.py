"""medrecipe command line: run, demo, curate, ingest, validate, inspect, eval, review, train,
serve, report, sources."""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from medrecipe.console import console, err_console, print_table
from medrecipe.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build medical multimodal reasoning data, train a student VLM, evaluate it.")

# Exit codes: 0 done; 2 a problem to fix (recipe, input, disk, a run directory in use);
# 3 the run finished its stages but some are incomplete (failed requests, budget cap):
# re-running continues from the cache; 130 interrupted (Ctrl-C).
EXIT_USER_ERROR = 2
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130

Overrides = Annotated[list[str] | None, typer.Option(
    "--override", "-o", help=(
        "Dotted override, e.g. -o sources.0.limit=100 (repeatable). The value is converted by "
        "the field's type (bool: true/false/yes/no/on/off/1/0; lists: \\[a, b]). Free-form keys "
        "(extra.*, options.*) convert only true/false, null, numbers and [..]/{..}; yes/no/on/off "
        "stay strings. A quoted value ('\"1\"') is always a string."))]
RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.")]
RunArg = Annotated[Path, typer.Argument(help="Run directory.")]


def _load(recipe: Path, overrides: list[str] | None, preflight: bool = False):
    """Read and validate a recipe; with `preflight`, also what its run would need first."""
    from medrecipe.config import load_recipe
    from medrecipe.config import preflight as check

    r, raw = load_recipe(recipe, overrides or [])
    if preflight:
        check(r, str(recipe))
    return r, raw


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
        if c.traces:
            from medrecipe.curate.compose import check_auxiliary

            check_auxiliary(c)
        console.print(f"[green]ok[/green]: curation recipe {c.name!r}: {len(c.sources)} "
                      f"source(s), {len(c.teachers)} teacher(s)"
                      + (f", {len(c.mix.auxiliary)} auxiliary run(s)" if c.traces else "")
                      + f"; run directory {c.resolved_run_dir().absolute()}")
        return
    r, _ = _load(recipe, override, preflight=True)
    console.print(f"[green]ok[/green]: recipe {r.name!r}: {len(r.sources)} source(s), "
                  f"{len(r.teachers)} teacher(s); run directory "
                  f"{r.resolved_run_dir().absolute()}")


@app.command()
def ingest(recipe: RecipeArg, override: Overrides = None,
           force: Annotated[bool, typer.Option(help="Re-ingest even if up to date.")] = False) -> None:
    """Ingest the recipe's sources into its run directory."""
    from medrecipe import pipeline

    r, raw = _load(recipe, override)
    ctx = pipeline.open_context(r, raw, force={"ingest"} if force else set())
    pipeline.ingest(ctx)
    print_ingest_table(ctx.run)
    console.print(f"run directory: {ctx.run.root.absolute()}")


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

    r, raw = _load(recipe, override, preflight=True)
    ctx = pipeline.open_context(r, raw, progress=progress, force=set(force or []))
    _finish(pipeline.run_recipe(ctx))


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/demo in the current directory).")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
) -> None:
    """Run the packaged demo recipe offline (replayed teacher answers over bundled demo data)."""
    from medrecipe import pipeline

    overrides = [f"run_dir={out}"] if out else []
    r, raw = _load(packaged_recipe("demo"), overrides, preflight=True)
    ctx = pipeline.open_context(r, raw, progress=progress)
    outcome = pipeline.run_recipe(ctx)
    print_ingest_table(ctx.run)
    _finish(outcome)


@app.command()
def curate(recipe: RecipeArg, override: Overrides = None,
           force: Annotated[list[str] | None, typer.Option(
               help="Re-run these stages even if up to date (ingest, measure, visual, context, "
                    "tasks, questions, checks, probe, items, draft, refine, verify, traces, split, "
                    "mix, export, grpo; or all). Model replies still come from the "
                    "cache.")] = None,
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
    if outcome.traces is not None:
        console.print(f"{outcome.traces} items with a reference trace")
        for label, paths in (("SFT export", outcome.exports), ("GRPO set", outcome.grpo)):
            for key in ("llamafactory", "trl", "jsonl_train"):
                if key in paths:
                    console.print(f"  {label} {key}: {paths[key]}")
    console.print(f"run directory: {Path(outcome.run_dir).absolute()}")
    if not outcome.complete:
        console.print("[yellow]some stages stopped early (budget or failed requests); re-run "
                      "to continue[/yellow]")
    if outcome.report:
        console.print(f"report: {outcome.report}")


def _finish(outcome) -> None:
    shown = [key for key in ("llamafactory", "dataset_info", "trl", "jsonl_train")
             if key in outcome.exports]
    if outcome.selected == 0:
        # No heading over files that hold no rows: say once that nothing was exported.
        console.print("[yellow]nothing exported: 0 traces were selected[/yellow] (the export "
                      "files hold no rows); the report's selection funnel shows where the "
                      "traces went")
    elif shown:
        console.print("[bold]exports[/bold]")
        for key in shown:
            console.print(f"  {key}: {outcome.exports[key]}")
    # Absolute: a relative run_dir is relative to the current directory, not the recipe's.
    console.print(f"run directory: {Path(outcome.run_dir).absolute()}")
    if outcome.report:
        console.print(f"report: {Path(outcome.report).absolute()}")
    if not outcome.complete:
        for p in outcome.problems:
            err_console.print(f"[yellow]incomplete:[/yellow] {p}")
        raise typer.Exit(EXIT_INCOMPLETE)


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
    targets: Annotated[list[str], typer.Argument(
        help="Evaluation recipe YAML, `compare RUN...`, or `pairwise RUN_A RUN_B`.")],
    override: Overrides = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (eval; default runs/eval/<name>) or "
                                                  "output folder (compare).")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
    judge: Annotated[Path | None, typer.Option(
        help="pairwise: judge model YAML (backend, model, base_url, ...); default: run A's "
             "trace.judge.")] = None,
) -> None:
    """Evaluate a model on benchmarks (RECIPE), compare runs (compare RUN...), or judge two
    runs' reasoning traces against each other (pairwise RUN_A RUN_B)."""
    from medrecipe.evaluate.commands import eval_command

    eval_command(targets, override, out=out, progress=progress, console=console, judge=judge)


@app.command()
def review(
    run_dir: RunArg,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 8765,
    reviewer: Annotated[str | None, typer.Option(
        help="Name stored with every label (default: $USER).")] = None,
    summary: Annotated[bool, typer.Option(
        "--summary", help="Print agreement rates per dimension and exit.")] = False,
) -> None:
    """Expert review page for a run's items (image, context, question, answer, trace) on 127.0.0.1."""
    import getpass

    from medrecipe.review.server import make_server
    from medrecipe.review.summary import render_summary, summarize_labels

    name = reviewer or getpass.getuser() or "reviewer"
    server = make_server(run_dir, port=port, reviewer=name)
    app_ = server.RequestHandlerClass.app  # type: ignore[attr-defined]
    if summary:
        server.server_close()
        text = render_summary(summarize_labels(app_.store, [ri.item.id for ri in app_.items]))
        console.print(text, markup=False)
        return
    host, bound = server.server_address[:2]
    # One line, flushed, that scripts (and the browser test) read for the address.
    print(f"review page: http://{host}:{bound}/  ({len(app_.items)} items; labels in "
          f"{app_.store.path}; reviewer {name}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model folder (saved by medrecipe or a hub "
                                              "checkpoint) or a hub id in the local cache.")],
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8000,
) -> None:
    """Serve a model with `transformers serve` (OpenAI-compatible /v1/chat/completions).

    Works without torchvision (images and text). Other options go to `transformers serve`
    unchanged, e.g. `medrecipe serve runs/sft/final --device cuda:0 --dtype bfloat16`.
    """
    from medrecipe.serve import serve as serve_model

    serve_model(model, host=host, port=port, extra=list(ctx.args))


train_app = typer.Typer(no_args_is_help=True, help="Train a student VLM on an export (TRL SFT / "
                        "GRPO) or write a LLaMA-Factory config.")
app.add_typer(train_app, name="train")
ConfigArg = Annotated[Path, typer.Argument(help="Training config YAML.")]


@train_app.command("sft")
def train_sft(config: ConfigArg, override: Overrides = None) -> None:
    """Supervised fine-tuning (TRL) on the TRL export: full or LoRA; presets octomed, openmedreason_lora."""
    from medrecipe.train import load_sft_config, run_sft

    final = run_sft(load_sft_config(config, override or []), report=console.print)
    console.print(f"final checkpoint: {final}")


@train_app.command("grpo")
def train_grpo(config: ConfigArg, override: Overrides = None) -> None:
    """GRPO from an SFT checkpoint or adapter with format + exact-match correctness rewards."""
    from medrecipe.train import load_grpo_config, run_grpo

    console.print(f"final checkpoint: {run_grpo(load_grpo_config(config, override or []))}")


@train_app.command("llamafactory")
def train_llamafactory(
    config: ConfigArg,
    override: Overrides = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Load the export with LLaMA-Factory's own loader in its environment "
        "and report rows, images found / missing, <image> tags matched and the template.")] = False,
    lf_python: Annotated[Path | None, typer.Option(
        "--llamafactory-python", help="Python of the LLaMA-Factory environment "
        "(default: the one llamafactory-cli on PATH runs).")] = None,
    max_rows: Annotated[int | None, typer.Option(
        "--max-rows", min=1, help="--check: only the first N rows of each dataset.")] = None,
) -> None:
    """Write a LLaMA-Factory training YAML and the dataset_info.json entry for the export."""
    from medrecipe.train import load_llamafactory_config
    from medrecipe.train.llamafactory import plan_llamafactory, write_llamafactory
    from medrecipe.train.llamafactory_check import (
        find_llamafactory_python,
        run_check,
        torchvision_imports,
        train_command,
    )

    cfg = load_llamafactory_config(config, override or [])
    plan = plan_llamafactory(cfg)
    yaml_path, info_path = write_llamafactory(cfg, plan)
    console.print(f"wrote {yaml_path} and {info_path}", soft_wrap=True)
    for note in plan.notes:
        console.print(f"  {note}", markup=False, soft_wrap=True)
    python = find_llamafactory_python(lf_python) if (check or lf_python) else None
    torchvision = None
    if check:
        console.print(f"checking with LLaMA-Factory in {python} ...")
        result = run_check(yaml_path, python, max_rows=max_rows)
        print_lf_check(result)
        torchvision = result.report.torchvision if result.report else None
        if not result.ok:
            err_console.print(f"check failed: {len(result.problems)} problem(s) (log: {result.log})")
            raise typer.Exit(2)
    elif python is not None:
        torchvision = torchvision_imports(python)
    console.print(f"run: {train_command(yaml_path, python, torchvision)}", markup=False,
                  soft_wrap=True)


def print_lf_check(result) -> None:
    """The --check report: per dataset counts, template, processor, problems."""
    r = result.report
    if r is not None:
        table = Table(title="LLaMA-Factory dataset check", show_lines=False)
        for col in ("dataset", "rows", "with images", "images found", "missing", "tag mismatches"):
            table.add_column(col, justify="left" if col == "dataset" else "right")
        for name, c in r.datasets.items():
            table.add_row(name, str(c.rows), str(c.rows_with_images), str(c.images_found),
                          str(c.images_missing), str(c.tag_mismatches))
        console.print(table)
        versions = ", ".join(f"{k} {v}" for k, v in r.versions.items())
        console.print(f"template: {r.template} (mm_plugin {r.mm_plugin}, image token "
                      f"{r.image_token}); {versions}", markup=False)
        proc = r.processor or f"none ({r.processor_error})"
        if r.processor_offline:
            proc += " without a video processor (torchvision does not import there)"
        console.print(f"processor: {proc}", markup=False)
        if r.tokenized_rows is not None:
            console.print(f"preprocessed rows: {r.tokenized_rows} ({r.rows_with_image_tokens} with "
                          "image tokens)")
    for p in result.problems:
        err_console.print(f"  problem: {p}", markup=False, soft_wrap=True)
    if result.ok:
        console.print("check passed")


def print_ingest_table(run) -> None:
    """Per-source / per-task counts of ingested items, with quarantine counts."""
    from medrecipe.inspect import ingest_counts

    counts, tasks = ingest_counts(run)
    short = {"mm_reasoning": "mm_reas", "mm_classification": "mm_cls", "open_vqa": "vqa"}
    # No vertical rules: the table then fits an 80-column terminal with whole headers.
    t = Table(title="ingested items", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
              caption="mm_reas = mm_reasoning, mm_cls = mm_classification, vqa = open_vqa; "
              "quar. = quarantined")
    t.add_column("source", no_wrap=True)
    t.add_column("role", no_wrap=True)
    for task in tasks:  # short headers so the table fits an 80-column terminal
        t.add_column(short.get(task, task), justify="right", no_wrap=True)
    t.add_column("total", justify="right", no_wrap=True)
    t.add_column("quar.", justify="right", no_wrap=True)
    for src, row in counts.items():
        t.add_row(src, row["role"], *[str(row["tasks"].get(k, 0)) for k in tasks],
                  str(row["total"]), str(row["quarantined"]))
    print_table(console, t)


# --------------------------------------------------------------------------- entry point


_UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def main() -> None:
    """Console entry point: user errors print one paragraph and exit 2, no traceback."""
    try:
        # A command's typer.Exit comes back as its code; typer turns Ctrl-C into Exit(130).
        rc = app(standalone_mode=False)
        if rc == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except UserError as e:
        err_console.print(f"[bold red]error:[/bold red] {e}")
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/yellow] (Ctrl-C): finished stages and answers "
                          "already received are kept; re-run to continue")
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:
        if e.errno not in _UNWRITABLE:
            raise
        what = f" {e.filename}" if e.filename else ""
        err_console.print(f"[bold red]error:[/bold red] cannot write{what}: "
                          f"{e.strerror or e}. Free disk space or make the folder writable, "
                          "then re-run: completed stages and cached answers are kept")
        sys.exit(EXIT_USER_ERROR)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors carry their own exit codes
        # typer may bundle its own copy of click, so match the exception by what it offers.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
