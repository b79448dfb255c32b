"""Run report: statistics, PNG plots and one self-contained HTML page."""

from medrecipe.report.html import write_report
from medrecipe.report.stats import scan_run, summary_stats

__all__ = ["scan_run", "summary_stats", "write_report"]
