"""Run report: statistics, PNG plots and one self-contained HTML page."""

from medrecipe.report.html import write_report
from medrecipe.report.stats import load_run_tables, summary_stats

__all__ = ["load_run_tables", "summary_stats", "write_report"]
