"""The report's calibration section: per configuration with calibrated outputs (``calibrated`` in runs.csv:
logistic, MLP, fine-tuning, or any head with ``heads.calibrate: temperature``) the mean test and val ECE over its
seeds (top-label, :data:`~featpipe.evaluation.calibration.ECE_BINS` equal-width bins) with its bootstrap interval
(:mod:`featpipe.results.ece_interval`) and the mean temperature,
and a reliability diagram of the test predictions at the largest shot count (pooled over seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from featpipe.evaluation.calibration import ECE_BINS, reliability
from featpipe.evaluation.table import read_predictions
from featpipe.report.html import table
from featpipe.report.plots import wrap
from featpipe.results.ece_interval import ece_interval, method
from featpipe.results.predictions import TestPredictions
from featpipe.results.summary import config_labels

MAX_DIAGRAMS = 6


def reliability_diagram(panels: Sequence[tuple[str, dict]], *, title: str) -> Figure:
    """One panel per (label, :func:`~featpipe.evaluation.calibration.reliability` bins): accuracy per bin as
    bars at the bin's mean confidence, the diagonal = perfect calibration, the bin counts on top."""
    fig = Figure(figsize=(3.2 * max(1, len(panels)), 3.4))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels))))
    for ax, (label, r) in zip(axes, panels):
        width = 1.0 / (len(r["edges"]) - 1)
        full = r["count"] > 0
        ax.bar(r["edges"][:-1][full], r["accuracy"][full], width=width, align="edge", color="C0", alpha=0.7,
               edgecolor="white", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect")
        ax.plot(r["confidence"][full], r["accuracy"][full], "o", color="C3", ms=3, label="mean confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("confidence (top class probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(wrap(label, 3.2, 8), fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(wrap(title, fig.get_figwidth()), fontsize=10)
    fig.tight_layout()
    return fig


def calibration_section(runs: pd.DataFrame, results_dir: Path, classes: Sequence[str], *,
                        save: Callable[[Figure, Path], Path], img: Callable[[Path, str], str], plots_dir: Path) -> str:
    if "ece" not in runs.columns or "calibrated" not in runs.columns:
        return "<p>These runs record no calibration error (written by an earlier featpipe).</p>"
    cal = runs[runs["calibrated"].astype(bool)].copy()
    intro = (f"<p>Expected calibration error (ECE): top-label, {ECE_BINS} equal-width confidence bins, "
             "|accuracy − mean confidence| weighted by the bin's share of images, on the arg-max prediction. Reported "
             "only for outputs that are probabilities (logistic, MLP, fine-tuning, or a head with "
             "<code>heads.calibrate: temperature</code>, whose T is fitted on val by NLL and never changes the predicted class nor, with two classes, "
             "any rank); "
             "the SVC's, prototype's and kNN's scores without it are monotone scores and have no ECE.</p>")
    if cal.empty:
        return intro + "<p>No run has calibrated outputs.</p>"
    cal["config"] = config_labels(cal)
    rows, preds = [], TestPredictions(results_dir, pd.DataFrame({"id": [], "patient_id": []}), classes)
    for (config, shots), g in cal.groupby(["config", "shots"], sort=True):
        t = g["temperature"] if "temperature" in g.columns else pd.Series(dtype=float)
        how = g["calibration"].iloc[0] if "calibration" in g.columns and isinstance(g["calibration"].iloc[0], str) else "none"
        iv = ece_interval(preds, g["run_id"].astype(str).tolist()) if "run_id" in g.columns else {}
        rows.append([config, int(shots), len(g), f"{g['ece'].mean():.3f}",
                     f"[{iv['ci_low']:.3f}, {iv['ci_high']:.3f}]" if iv else "–", f"{g['val_ece'].mean():.3f}", how,
                     f"{t.mean():.2f}" if t.notna().any() else "–"])
    html_ = intro + table(["configuration", "shots", "seeds", "test ECE (mean)", "95% interval", "val ECE (mean)",
                           "calibration", "temperature (mean)"], rows)
    html_ += f"<p class=\"note\">The ECE interval: {method('images')} (as in metrics.json).</p>"
    top = int(cal["shots"].max())
    at_top = cal[cal["shots"] == top]
    panels = []
    for config, g in list(at_top.groupby("config", sort=True))[:MAX_DIAGRAMS]:
        pred = read_predictions(results_dir, g["run_id"].astype(str))
        pred = pred[pred["split"] == "test"]
        if pred.empty or not all(f"p[{c}]" in pred.columns for c in classes):  # none, or multi-label (per label)
            continue
        proba = pred[[f"p[{c}]" for c in classes]].to_numpy(float)
        scaled = ", T-scaled" if "calibration" in g.columns and (g["calibration"] == "temperature").all() else ""
        panels.append((f"{config} ({len(g)} seeds{scaled})", reliability(pred["label"].to_numpy(int), proba)))
    if panels:
        fig = reliability_diagram(panels, title=f"Reliability at {top} shots (test, pooled over seeds)")
        html_ += img(save(fig, plots_dir / "reliability.png"), f"reliability diagrams at {top} shots")
    return html_
