"""The command line's summary table: one row per configuration (what ``fit``, ``sweep``, ``finetune`` and
``zeroshot`` print by default; ``--verbose`` adds :func:`featpipe.results.summary.format_summary`'s table per
configuration).

A row holds the configuration's name, its number of seeds, a few test metrics as mean [95% interval] over seeds
(the headline interval of :func:`featpipe.results.stats.seed_summary`), and its clinical-grade flag; ``*`` marks
the configuration chosen on val at its shot count. Facts that do not fit a column (shots capped to the class size,
training-set fractions, degenerate runs, selection notes) follow the table as one line each.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

TABLE_METRICS = ("balanced_accuracy", "auroc")  # always shown; the selection metric is added when it is another


def table_metrics(select_metric: str | None) -> tuple[str, ...]:
    """The metric columns of the summary table: :data:`TABLE_METRICS` and ``select_metric``."""
    extra = (select_metric,) if select_metric and select_metric not in TABLE_METRICS else ()
    return TABLE_METRICS + extra


def cell(s: Mapping | None) -> str:
    """``mean [low, high]`` of a seed summary (``-`` when it has no run)."""
    if not s or not s.get("n") or not _finite(s.get("mean")):
        return "-"
    lo, hi = s.get("ci_low"), s.get("ci_high")
    ci = f" [{lo:.3f}, {hi:.3f}]" if _finite(lo) and _finite(hi) else ""
    return f"{s['mean']:.3f}{ci}"


def _finite(v) -> bool:
    """A number that is not NaN or infinite (``summary.json`` writes NaN as null)."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def format_overview(summary: Mapping[str, Mapping], *, metrics: Sequence[str] = TABLE_METRICS,
                    select_metric: str | None = None) -> str:
    """One plain-text table of ``summary`` (:func:`featpipe.results.summary.summarize_runs`): a row per
    configuration, then one note line per configuration with something to say ("" when the summary is empty)."""
    entries = [(n, e) for n, e in summary.items() if not n.startswith("_")]
    if not entries:
        return ""
    width = max(len("configuration"), *(len(n) for n, _ in entries)) + 2
    chosen = f"; * chosen on val by {select_metric}" if select_metric else ""
    lines = [f"summary ({len(entries)} configuration(s); test, mean [95% CI] over seeds{chosen}):",
             f"  {'configuration':<{width}}{'seeds':>5}  " + "".join(f"{m[:21]:<23}" for m in metrics) + "clinical-grade"]
    notes = []
    for name, e in entries:
        mark = "*" if e.get("chosen_on_val") else " "
        rule = "" if e.get("clinical_rule", "featpipe") == "featpipe" else f" ({e['clinical_rule']} rule)"
        flag = ("yes" if e.get("clinical_grade") else "no") + rule
        lines.append(f"{mark} {name:<{width}}{e.get('n_seeds', '?'):>5}  "
                     + "".join(f"{cell(e.get(m)):<23}" for m in metrics) + flag)
        notes += [f"  {name}: {n}" for n in _notes(e)]
    return "\n".join(lines + notes)


def _notes(e: Mapping) -> list[str]:
    out = []
    if e.get("capped"):
        out.append(f"capped to the class size: {e['capped']}")
    if e.get("fraction") is not None:
        out.append(f"fraction {e['fraction']:g} of the training set, {e['shots']} images: {e.get('images_per_class', '')}")
    if e.get("n_degenerate"):
        out.append(f"{e['n_degenerate']} degenerate run(s)")
    if e.get("selection_note"):
        out.append(e["selection_note"])
    return out
