"""The report's first screen and its full table.

:func:`summary_section`: the question the study answers and its answer (the configuration chosen on val per shot
count, with its test mean and 95% interval), the selection and clinical-grade rules applied, the data, capped
shots and warnings, in one screen. :func:`all_configurations_section`: every configuration x shot count in one
sortable table (click a header; without scripts it reads in configuration order).
"""

from __future__ import annotations

import html
import math
from typing import Mapping, Sequence

import pandas as pd

from featpipe.data.splits import capping_lines
from featpipe.report.html import percent as _f, Cell, table
from featpipe.report.plots import METRIC_LABELS
from featpipe.results.summary import degenerate_flags


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else math.nan


def _pct(metric: str) -> bool:
    return metric not in ("auroc", "auprc", "brier")  # shown as 0-1 numbers; the rest as %


def summary_section(*, metric: str, best: Sequence[Mapping], splits, runs: pd.DataFrame, params,
                    n_configs: int, warnings: Sequence[str], verdicts: Mapping[int, str]) -> str:
    """The one-screen summary. ``best``: the rows of :func:`featpipe.report.selection.best_configurations`
    (``shots``, ``config``, ``entry``: the configuration's summary); ``verdicts``: per shot count the answer of
    the comparison with the runner-up on val; ``warnings``: lines shown in the warnings list."""
    label = METRIC_LABELS.get(metric, metric)
    pct = _pct(metric)
    unit = " (%)" if pct else ""
    rows = []
    for b in best:
        e = b["entry"]
        t = e.get(metric, {})
        rows.append([b["shots"] if not e.get("fraction") else f"{e['fraction']:g} ({b['shots']} images)",
                     b["config"], Cell(_f(t.get("mean"), pct), _num(t.get("mean"))),
                     f"[{_f(t.get('ci_low'), pct)}, {_f(t.get('ci_high'), pct)}]", e["n_seeds"],
                     "yes" if e["clinical_grade"] else "no", verdicts.get(b["shots"], "–")])
    counts = splits.raw["counts"]
    sizes = ", ".join(f"{part} {sum(counts[part].values())}" for part in ("train", "val", "test"))
    rule = params.clinical.rule
    seeds = sorted({int(s) for s in runs["seed"]}) if "seed" in runs.columns else []
    out = [f"<p><b>Question:</b> which configuration (backbone, layer, weights, head) gives the best test "
           f"{html.escape(label)} with k labelled images per class? <b>Answer</b> per shot count: the configuration "
           f"<b>chosen on val</b> (best mean val {html.escape(label)} among configurations without a degenerate run), "
           "reported on test with its 95% interval (seed luck and test-sampling luck together).</p>",
           table(["shots", "chosen on val", f"test {label}{unit}", "95% interval", "seeds",
                  f"clinical-grade ({rule} rule)", "vs the runner-up on val"], rows,
                 attrs=' id="summary-best"') if rows else "<p class=warn>No configuration could be chosen on val.</p>",
           "<ul>",
           f"<li><b>Data:</b> {html.escape(splits.dataset)}, {len(splits.classes)} classes "
           f"({html.escape(', '.join(splits.classes))}); images {sizes}; val policy "
           f"<code>{html.escape(splits.val_policy)}</code>.</li>",
           f"<li><b>Runs:</b> {len(runs)} runs of {n_configs} configurations x {runs['shots'].nunique()} shot counts, "
           f"seeds {html.escape(', '.join(map(str, seeds)) or '–')}.</li>",
           f"<li><b>Rules applied:</b> selection on val <code>val_{html.escape(metric)}</code> "
           f"(<code>report.metric</code>); clinical-grade by <b>{html.escape(rule)}</b>'s rule "
           f"(<code>clinical.rule: {html.escape(rule)}</code>, terms under the best-configuration table).</li>"]
    capped = capping_lines(splits.raw.get("capped", {}))
    out.append("<li><b>Capped shots:</b> " + ("; ".join(html.escape(c) for c in capped) + "." if capped
                                             else "none (every k-shot subset has k images of every class).") + "</li>")
    out.append("</ul>")
    if warnings:
        out.append("<p class=warn><b>Warnings</b></p><ul class=warn>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
                   + "</ul>")
    else:
        out.append("<p class=note>No warnings.</p>")
    return "".join(out)


def warning_lines(runs: pd.DataFrame, summary: Mapping[str, Mapping], *, set_aside: str, chosen: Mapping[int, str],
                  floors: Sequence[str]) -> list[str]:
    """The summary's warnings: degenerate runs, rows of another split set aside, shot counts where nothing was
    chosen or the choice fell back to another val metric, comparisons that cannot be significant."""
    out = []
    bad = int(degenerate_flags(runs).sum())
    if bad:
        out.append(f"{bad} degenerate run(s) (a constant, not a classifier; their configurations are never chosen: "
                   "see 'Degenerate runs')")
    if set_aside:
        out.append(set_aside)
    for k in sorted({int(s) for s in runs["shots"]} - set(chosen)):
        out.append(f"k = {k}: no configuration could be chosen on val")
    out += [e["selection_note"] for e in summary.values() if isinstance(e, Mapping) and e.get("selection_note")]
    out += list(floors)
    return out


ALL_HEADER = ["configuration", "shots", "seeds", "val {label}{unit}", "test {label}{unit}", "std", "95% interval",
              "test accuracy (%)", "test AUROC", "degenerate runs", "chosen on val"]


def all_configurations_section(summary: Mapping[str, Mapping], metric: str) -> str:
    """Every configuration x shot count of ``summary`` (:func:`featpipe.results.summary.summarize_runs`): one
    row each, sortable by any column; the chosen rows in bold."""
    label = METRIC_LABELS.get(metric, metric)
    pct = _pct(metric)
    rows, classes = [], []
    entries = sorted((e for e in summary.values() if isinstance(e, Mapping) and "shots" in e),
                     key=lambda e: (e["config"], e["shots"]))
    for e in entries:
        t, v = e.get(metric, {}), e.get(f"val_{metric}", {})
        acc, auc = e.get("accuracy", {}).get("mean"), e.get("auroc", {}).get("mean")
        rows.append([e["config"], Cell(e["shots"] if e.get("fraction") is None else f"{e['fraction']:g}",
                                       e.get("fraction", e["shots"])),
                     Cell(e["n_seeds"], e["n_seeds"]), Cell(_f(v.get("mean"), pct), _num(v.get("mean"))),
                     Cell(_f(t.get("mean"), pct), _num(t.get("mean"))), Cell(_f(t.get("std"), pct), _num(t.get("std"))),
                     Cell(f"[{_f(t.get('ci_low'), pct)}, {_f(t.get('ci_high'), pct)}]", _num(t.get("ci_low"))),
                     Cell(_f(acc), _num(acc)), Cell(_f(auc, pct=False), _num(auc)),
                     Cell(e.get("n_degenerate", 0), e.get("n_degenerate", 0)),
                     "yes" if e.get("chosen_on_val") else ""])
        classes.append("chosen" if e.get("chosen_on_val") else "degenerate" if e.get("n_degenerate") else "")
    unit = " (%)" if pct else ""
    head = [h.format(label=label, unit=unit) for h in ALL_HEADER]
    return (f"<p>Every configuration at every shot count ({len(rows)} rows). Click a header to sort (again: the other "
            "way). Bold: chosen on val; grey: has degenerate runs. The 95% interval is over seeds (and, for the "
            "chosen rows, test patients too, as in the best-configuration table).</p>"
            + table(head, rows, row_classes=classes, sortable=True, attrs=' id="all-configurations"'))
