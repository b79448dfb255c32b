"""User-facing errors: the CLI prints these without a traceback and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; the message says what to change."""

    exit_code = 2


class RecipeError(UserError):
    """The recipe YAML (or an override) is invalid."""

    def __init__(self, problems: list[tuple[str, str]], path: str | None = None):
        self.problems = problems
        self.path = path
        where = f" in {path}" if path else ""
        lines = [f"The recipe{where} has {len(problems)} problem(s):"]
        lines += [f"  - {loc or '<root>'}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class SourceError(UserError):
    """A source cannot be read at all (missing file, unknown adapter, bad mapping)."""


class ItemValidationError(UserError):
    """One row could not be turned into an Item; names the source, row and field."""

    def __init__(self, source: str, row: int | str, field: str, message: str):
        self.source, self.row, self.field, self.message = source, row, field, message
        super().__init__(f"source {source!r}, row {row}, field {field!r}: {message}")


class ImageError(UserError):
    """An image could not be read or decoded."""


class BudgetExceeded(UserError):
    """The configured spend cap was reached; the stage stopped launching requests."""
