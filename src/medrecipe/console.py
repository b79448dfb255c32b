"""One rich console for the CLI and the stages, plus a log file inside the run directory."""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# Output that is not a terminal (a pipe, a log file) is not wrapped at rich's default 80
# columns: a wrapped line would cut paths and messages in two for whoever reads or greps it.
console = Console(stderr=False, highlight=False, soft_wrap=not _isatty(sys.stdout))
err_console = Console(stderr=True, highlight=False, soft_wrap=not _isatty(sys.stderr))


def print_table(con: Console, table: Any) -> None:
    """Print a rich table; output that is not a terminal (a pipe, a file) gets the table's
    full width instead of rich's 80-column default, so no cell is folded or cut for a
    terminal that is not there."""
    if con.is_terminal:
        con.print(table)
        return
    from rich.measure import Measurement

    need = Measurement.get(con, con.options.update_width(100_000), table).maximum
    if need <= con.width:
        con.print(table)
        return
    Console(file=con.file, width=need, highlight=False, soft_wrap=con.soft_wrap).print(table)


def took(ran: bool, seconds: float | None) -> str:
    """" (12.3s)" for a stage that ran now; "" for one that was up to date (its recorded time
    belongs to the earlier run, so it is not shown)."""
    return f" ({seconds or 0:.1f}s)" if ran else ""


def progress_enabled(flag: bool | None = None) -> bool:
    """Progress bars on a terminal unless MEDRECIPE_NO_PROGRESS is set; `flag` overrides."""
    if flag is not None:
        return flag
    if os.environ.get("MEDRECIPE_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def make_progress(*extra_columns, transient: bool = False) -> Progress:
    """A progress bar with counts, rate-derived ETA and elapsed time."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), *extra_columns, console=err_console, transient=transient,
    )


class RunLog:
    """Appends timestamped lines to <run>/logs/medrecipe.log and echoes them to the console."""

    def __init__(self, run_root: Path | None, echo: bool = True):
        self.path = None
        if run_root is not None:
            (run_root / "logs").mkdir(parents=True, exist_ok=True)
            self.path = run_root / "logs" / "medrecipe.log"
        self.echo = echo
        self._handlers: list[logging.Handler] = []

    def attach(self) -> None:
        """Send the `medrecipe` loggers' warnings (failed requests, ...) to this log file too.

        Warnings still reach stderr: through the application's own logging set-up when it
        has one, else through a plain stderr handler added here.
        """
        if self.path is None or self._handlers:
            return
        logger = logging.getLogger("medrecipe")
        fh = logging.FileHandler(self.path, encoding="utf-8")
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                          "%Y-%m-%d %H:%M:%S"))
        self._handlers.append(fh)
        if not logging.getLogger().handlers:
            sh = logging.StreamHandler(sys.stderr)
            sh.setLevel(logging.WARNING)
            sh.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
            self._handlers.append(sh)
        for h in self._handlers:
            logger.addHandler(h)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)

    def detach(self) -> None:
        """Stop writing log records into this run's file."""
        logger = logging.getLogger("medrecipe")
        for h in self._handlers:
            logger.removeHandler(h)
            h.close()
        self._handlers = []

    def __call__(self, message: str) -> None:
        if self.echo:
            console.print(message)
        self.file_only(message)

    def file_only(self, message: str) -> None:
        """Append a line to the log file without echoing it (the caller shows it otherwise)."""
        if self.path is not None:
            from rich.text import Text

            plain = Text.from_markup(message).plain
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {plain}\n")


@contextmanager
def counting_progress(description: str, enabled: bool | None = None, total: int | None = None):
    """Yields an `advance(n)` callable driving a progress bar (a no-op when disabled)."""
    if not progress_enabled(enabled):
        yield lambda n=1: None
        return
    prog = make_progress()
    start = time.perf_counter()
    with prog:
        task = prog.add_task(description, total=total, rate="")
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            if done % 512 == 0 or (total and done >= total):
                rate = done / max(time.perf_counter() - start, 1e-9)
                prog.update(task, advance=0, completed=done, rate=f"{rate:,.0f}/s")

        yield advance
        prog.update(task, completed=done)
