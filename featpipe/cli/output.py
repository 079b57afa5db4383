"""What the commands print: one summary table by default, the details with ``--verbose`` (every command has it)."""

from __future__ import annotations

from featpipe.results.console import format_overview, table_metrics
from featpipe.results.summary import format_summary


def print_summary(summary: dict, *, params, verbose: bool = False, per_class: str = "") -> None:
    """The one-row-per-configuration table (:func:`featpipe.results.console.format_overview`); with ``verbose``
    every configuration's full table (mean, std, intervals, min, max, spread of every metric) after it; then the
    per-class table ``per_class`` (nothing when it is empty)."""
    metric = params.report.metric
    text = format_overview(summary, metrics=table_metrics(metric), select_metric=metric)
    if text:
        print(text)
    if verbose and summary:
        print("details per configuration (--verbose):")
        print(format_summary(summary))
    if per_class:
        print(per_class)


def elapsed(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``1 h 02 min``: the elapsed time of a progress line."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"
