"""The report's subgroup section (``report.subgroups``): per-group metrics and the worst-group gap of one run.

The run: the configuration chosen on val at the largest shot count, its lowest seed (named in the section), on the
study's test split and on every scored external set (the same saved model). The numbers and intervals are
:func:`featpipe.results.subgroups.subgroup_metrics` (a multi-label run:
:func:`~featpipe.results.subgroups.multilabel_subgroups`); the groups come from each test set's manifest columns.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.names import proba_column
from featpipe.data.external import EXTERNAL_DIR, read_external
from featpipe.evaluation.table import EXTERNAL_RESULTS, RUNS_CSV, external_test_set, read_predictions, run_id
from featpipe.report.html import table
from featpipe.results.subgroups import (
    TOO_FEW,
    SubgroupSettings,
    group_labels,
    multilabel_subgroups,
    subgroup_metrics,
)


def _num(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(r, m: str) -> str:
    v = r.get(m, math.nan)
    if not isinstance(v, float) or not math.isfinite(v):
        return "–"
    return f"{v:.3f} [{_num(r.get(f'{m}_low'))}, {_num(r.get(f'{m}_high'))}]"


def _tables(tab: pd.DataFrame, gaps: pd.DataFrame) -> str:
    rows = []
    for r in tab.to_dict("records"):
        if r["status"] == TOO_FEW:
            rows.append([r["attribute"], r["group"], r["n"], _num(r["prevalence"]), "too few", "", "", ""])
        else:
            rows.append([r["attribute"], r["group"], r["n"], _num(r["prevalence"]), _ci(r, "auroc"), _ci(r, "accuracy"),
                         _ci(r, "sensitivity"), _ci(r, "specificity")])
    out = table(["attribute", "group", "n", "prevalence", "AUROC [95%]", "accuracy [95%]", "sensitivity [95%]",
                 "specificity [95%]"], rows)
    return out + _gap_table(gaps)


def _gap_table(gaps: pd.DataFrame) -> str:
    if not len(gaps):
        return ""
    return table(["attribute", "metric", "worst group", "best group", "gap (best - worst) [95%]"],
                 [[g["attribute"], g["metric"], g["worst_group"], g["best_group"],
                   f"{g['gap']:.3f} [{_num(g['gap_low'])}, {_num(g['gap_high'])}]"] for g in gaps.to_dict("records")])


def _multilabel(pred: pd.DataFrame, labels: list[str], groups, settings: SubgroupSettings, patients) -> str:
    tab, gaps = multilabel_subgroups(pred[[f"y[{n}]" for n in labels]].to_numpy(),
                                     pred[[proba_column(n) for n in labels]].to_numpy(float), labels, groups,
                                     settings=settings, patients=patients)
    rows = [[r["attribute"], r["group"], r["n"], *(["too few"] + [""] * len(labels) if r["status"] == TOO_FEW else
             [f"{_ci(r, 'auroc')} ({int(r['labels_scored'])} labels)"] + [_ci(r, f"auroc[{n}]") for n in labels])]
            for r in tab.to_dict("records")]
    return (table(["attribute", "group", "n", "macro AUROC [95%]", *[f"AUROC {n} [95%]" for n in labels]], rows)
            + _gap_table(gaps))


def _one(folder: Path, rid: str, manifest: pd.DataFrame, classes, settings: SubgroupSettings) -> str:
    pred = read_predictions(folder, [rid])
    pred = pred[pred["split"] == "test"]
    if pred.empty:
        return "<p class=\"note\">no predictions file for this run.</p>"
    try:
        groups = group_labels(manifest, pred["id"].astype(str).tolist(), settings)
    except DataError as exc:
        return f"<p class=\"note\">{html.escape(str(exc))}.</p>"
    patients = manifest.set_index(manifest["id"].astype(str))["patient_id"].reindex(pred["id"].astype(str))
    patients = patients.fillna("").astype(str).tolist()
    ycols = [c for c in pred.columns if c.startswith("y[") and c.endswith("]")]
    if ycols:  # a multi-label run: per-label and macro AUROC per group
        return _multilabel(pred, [c[2:-1] for c in ycols], groups, settings, patients)
    thr = pred["threshold"].iloc[0]
    tab, gaps = subgroup_metrics(pred["label"].to_numpy(), pred[[proba_column(c) for c in classes]].to_numpy(float),
                                 groups, threshold=float(thr) if len(classes) == 2 and math.isfinite(thr) else None,
                                 settings=settings, patients=patients)
    return _tables(tab, gaps)


_METHOD = ("Intervals (95%): accuracy, sensitivity and specificity Agresti-Coull on the group's images (its positives, "
           "its negatives); AUROC percentile bootstrap; gap = best minus worst scored group (named on the observed "
           "data), percentile interval of the paired difference over the same {n_boot} resamples of the test set's "
           "patients (seed compare.seed).")
_MULTILABEL_METHOD = ("A multi-label study: per group, macro AUROC (the mean over the labels with both classes known in "
                      "the group) and AUROC per label, each with its percentile bootstrap interval (95%) over {n_boot} "
                      "resamples of the test set's patients (seed compare.seed; in a resample, macro AUROC is the mean "
                      "over the labels scored there); gap = macro AUROC of the best minus the worst scored group "
                      "(named on the observed data), percentile interval of the paired difference over the same "
                      "resamples.")


def subgroup_section(results: Path, runs: pd.DataFrame, best: list[dict], *, params, classes, manifest: pd.DataFrame,
                     external_dir: Path = EXTERNAL_DIR) -> str:
    """HTML of the subgroup tables ("" when report.subgroups is empty or no configuration was chosen)."""
    if not params.report.subgroups or not best:
        return ""
    settings = SubgroupSettings.from_params(params.report, seed=params.compare.seed)
    top = max(best, key=lambda b: b["shots"])
    if not top["run_ids"]:
        return ""
    rid = top["run_ids"][0]
    row = runs[runs["run_id"].astype(str) == rid].iloc[0].to_dict()
    parts = [f"<p>Run: <b>{html.escape(top['config'])}</b>, {top['shots']} shots, seed {int(row['seed'])} (the "
             f"configuration chosen on val at the largest shot count, its lowest seed), at its val-chosen threshold. "
             f"Groups with fewer than {settings.min_size} test images are shown as \"too few\" (report.min_subgroup) "
             "and take no part in the gap. "
             + (_MULTILABEL_METHOD if params.data.csv.labels else _METHOD).format(n_boot=settings.n_boot) + "</p>",
             "<h3>internal test</h3>",
             _one(Path(results), rid, manifest, classes, settings)]
    for e in params.evaluate.external:
        folder = Path(results) / EXTERNAL_RESULTS.name / e.name
        if not (folder / RUNS_CSV).is_file():
            continue
        try:
            ext_manifest = read_external(e.name, classes, base=external_dir)
        except DataError as exc:
            parts.append(f"<p class=\"note\">{html.escape(str(exc))}.</p>")
            continue
        parts += [f"<h3>{html.escape(external_test_set(e.name))}</h3>",
                  _one(folder, run_id({**row, "test_set": external_test_set(e.name)}), ext_manifest, classes, settings)]
    return "".join(parts)
