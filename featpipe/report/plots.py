"""The report's figures, from the results table and the per-run curve files (matplotlib, no display).

Every function takes plain data (a runs DataFrame, curve dicts) and returns a matplotlib Figure; the
caller saves it. Axes are labelled, intervals are shaded, and every line, column and colour is one
configuration by its full identity (:func:`config_keys`: backbone, layer, weights, head and head params),
explained by the report's legend table (:func:`legend_rows`).
"""

from __future__ import annotations

import math
import textwrap
from typing import Mapping, Sequence

import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from featpipe.results.stats import seed_summary
from featpipe.results.summary import config_labels

METRIC_LABELS = {
    "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1", "auroc": "AUROC",
    "auprc": "AUPRC (average precision)", "sensitivity": "sensitivity", "specificity": "specificity", "brier": "Brier score",
}



def _subplots(*grid, figsize):
    """A figure and its axes without pyplot: no global figure registry, no backend switch for the process
    (saved with ``fig.savefig``, which uses the Agg canvas)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid)

def config_keys(runs: pd.DataFrame) -> pd.Series:
    """Each row's configuration label: the full configuration identity (backbone, layer, weights and their
    identity, head and its params; :func:`featpipe.results.summary.config_labels`), the one key of every
    figure, table and legend. Two configurations never share a line or a column."""
    return config_labels(runs) if len(runs) else pd.Series([], dtype=object)


def legend_rows(runs: pd.DataFrame) -> list[list[str]]:
    """The legend table of the figures: one row per configuration label with what it stands for
    (backbone, layer, weights, weights identity, head, head params)."""
    if runs.empty:
        return []
    f = runs.assign(config=config_keys(runs).to_numpy())
    rows = []
    for name, g in f.groupby("config", sort=True):
        r = g.iloc[0]
        ids = sorted(set(g["weights_id"].astype(str)))
        wid = ids[0] if len(ids) == 1 else f"{len(ids)} identities (one per seed: {ids[0]}, ...)"
        rows.append([name, r["backbone"], r.get("layer") or "final", r["weights"], wid, r["head"],
                     str(r.get("head_params") or "{}")])
    return rows


LEGEND_HEADER = ["label", "backbone", "layer", "weights", "weights identity", "head", "head params"]


def by_config(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (config, shots): mean, std, 95% interval, min, max, spread of ``metric`` across seeds
    (:func:`featpipe.results.stats.seed_summary`, the interval of the table's summaries and metrics.json);
    ``config`` is the configuration's full-identity label (:func:`config_keys`); ``x`` the figures' x value:
    the shots, or the training-set fraction of a ``split.fractions`` study."""
    if metric not in runs.columns or runs.empty:
        return pd.DataFrame(columns=["config", "shots", "x", "mean", "std", "ci_low", "ci_high", "min", "max", "spread", "n"])
    rows = []
    keys = ["backbone", "layer", "weights", "head", "head_params"]
    labelled = runs.assign(config=config_keys(runs).to_numpy())
    for (name, shots), g in labelled.groupby(["config", "shots"], sort=True):
        fraction = g["fraction"].dropna() if "fraction" in g.columns else g["shots"].iloc[:0]
        row = {"config": name, **{k: g[k].iloc[0] for k in keys}, "shots": shots,
               "x": float(fraction.iloc[0]) if len(fraction) else shots}  # split.fractions: the fraction
        rows.append({**row, **seed_summary(g, metric)})
    return pd.DataFrame(rows)


_MARKERS = "os^DvPX"


def _look(i: int) -> dict:
    """Colour and marker of the i-th configuration: ten colours, then the next marker (70 distinct looks)."""
    return {"color": f"C{i % 10}", "marker": _MARKERS[(i // 10) % len(_MARKERS)]}


def _order(names) -> list[str]:
    """Configurations in one order, so a configuration has the same look in every figure."""
    return sorted(set(names))


def looks(runs: pd.DataFrame) -> list[tuple[str, dict]]:
    """(configuration label, {"color", "marker"}) of every configuration of ``runs``, in the figures' order: the
    look each one has in every figure (matplotlib colour names)."""
    return [(name, _look(i)) for i, name in enumerate(_order(config_keys(runs)))]


def is_finetune(name: str) -> bool:
    """A fine-tuned configuration (dashed in the figures)."""
    return _is_finetune(name)


def x_label(table: pd.DataFrame) -> str:
    """The x axis of a :func:`by_config` table: shots, or the fraction of the training set."""
    return _xlabel(table)


def _xlabel(table: pd.DataFrame) -> str:
    """The x axis: shots, or the fraction of the training set (``split.fractions``)."""
    if len(table) and (table["x"] != table["shots"]).any():
        return "fraction of the training set (stratified by class)"
    return "labelled images per class (shots)"


def subset_words(runs: pd.DataFrame, shots: int) -> str:
    """``5 shots``, or ``fraction 0.1 (30 images)`` for the rows of a ``split.fractions`` study."""
    f = runs.loc[runs["shots"] == shots, "fraction"].dropna() if "fraction" in runs.columns else []
    return f"fraction {float(f.iloc[0]):g} ({int(shots)} images)" if len(f) else f"{int(shots)} shots"


def _is_finetune(name: str) -> bool:
    return "/finetune:" in name


def wrap(text: str, width_in: float, fontsize: float = 10) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` points (long configuration names
    in titles wrap instead of being cut at the figure's edge)."""
    chars = max(16, int(0.9 * width_in * 72 / (0.65 * fontsize)))  # DejaVu Sans: ~0.65 em per character
    return "\n".join(textwrap.wrap(text, chars, break_long_words=True, break_on_hyphens=False)) or text


def _style(ax, *, xlabel: str, ylabel: str, title: str, shots: Sequence[float] = ()) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    width = ax.get_position().width * ax.figure.get_figwidth()
    wrapped = wrap(title, width, 12)
    ax.set_title(wrapped, fontsize=10 if "\n" in wrapped else None)
    if len(shots):
        fractions = any(0 < float(k) < 1 for k in shots) or xlabel.startswith("fraction")
        # log-spaced shots; zero-shot configurations (k = 0) sit at 0 on a linear stretch below 1
        if 0 in {float(k) for k in shots}:
            ax.set_xscale("symlog", linthresh=1, linscale=0.5)
        else:
            ax.set_xscale("log")
        ax.set_xticks(sorted(float(k) for k in shots))
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=None) if fractions
                                     else matplotlib.ticker.FormatStrFormatter("%d"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(True, alpha=0.3)


def learning_curve(runs: pd.DataFrame, metric: str) -> Figure:
    """Mean ``metric`` vs shots, one line per configuration, with the 95% interval across seeds shaded."""
    table = by_config(runs, metric)
    fig, ax = _subplots(figsize=(10.5, 5))
    for name, g in table.groupby("config", sort=True):
        i = _order(table["config"]).index(name)
        g = g.sort_values("x")
        ls = "--" if _is_finetune(name) else "-"
        line, = ax.plot(g["x"], g["mean"], ls, ms=4, label=name, **_look(i))
        lo = g["ci_low"].fillna(g["mean"])
        hi = g["ci_high"].fillna(g["mean"])
        ax.fill_between(g["x"], lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    label = METRIC_LABELS.get(metric, metric)
    over = "seeds; k = 0: prompt sets" if (table["x"] == 0).any() else "seeds"  # zero-shot varies its prompts
    _style(ax, xlabel=_xlabel(table), ylabel=f"{label} on test (mean, 95% CI over {over})",
           title=f"Learning curve: {label}", shots=table["x"].unique())
    if metric != "brier":
        ax.set_ylim(max(0.0, ax.get_ylim()[0]), min(1.02, max(1.0, ax.get_ylim()[1])))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="configuration (legend table in the report)",
              title_fontsize=8)
    fig.tight_layout()
    return fig


def lottery_spread(runs: pd.DataFrame, metric: str) -> Figure:
    """The seed lottery: max - min of ``metric`` across seeds, vs shots, per configuration."""
    table = by_config(runs, metric)
    fig, ax = _subplots(figsize=(10.5, 5))
    for name, g in table.groupby("config", sort=True):
        i = _order(table["config"]).index(name)
        g = g.sort_values("x")
        ax.plot(g["x"], 100 * g["spread"], "--" if _is_finetune(name) else "-", ms=4, label=name, **_look(i))
    label = METRIC_LABELS.get(metric, metric)
    _style(ax, xlabel=_xlabel(table), ylabel=f"spread of {label} across seeds (points, max - min)",
           title="Classification lottery: how much the labelled images you drew matter", shots=table["x"].unique())
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="configuration (legend table in the report)",
              title_fontsize=8)
    fig.tight_layout()
    return fig


def seed_strip(runs: pd.DataFrame, metric: str, shots: int) -> Figure:
    """Every seed's ``metric`` at one shot count, one column per configuration (the lottery, raw)."""
    sub = runs.assign(_config=config_keys(runs).to_numpy())
    order = _order(sub["_config"])
    sub = sub[sub["shots"] == shots]
    names = sorted(set(sub["_config"]))
    fig, ax = _subplots(figsize=(max(6, 0.9 * len(names) + 2), 5))
    rng = np.random.default_rng(0)
    degen = lambda r: str(r.get("degenerate", "")).lower() in ("true", "1", "1.0")
    for i, name in enumerate(names):
        recs = [r for r in sub.to_dict("records") if r["_config"] == name]
        vals = [r[metric] for r in recs]
        ok = [r[metric] for r in recs if not degen(r)]
        bad = [r[metric] for r in recs if degen(r)]
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(ok)), ok, s=18, alpha=0.8, **_look(order.index(name)))
        if bad:  # degenerate runs: grey crosses
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(bad)), bad, s=30, marker="x", color="0.6",
                       label="degenerate run" if not ax.get_legend_handles_labels()[1] else None)
        ax.hlines(np.nanmean(vals), i - 0.25, i + 0.25, color="k", lw=1.5)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    label = METRIC_LABELS.get(metric, metric)
    _style(ax, xlabel="configuration", ylabel=f"{label} on test, one dot per seed", title=f"Per-seed {label} at {subset_words(sub, shots)} (bar: mean)")
    fig.tight_layout()
    return fig


def roc_pr(curves_by_seed: Sequence[Mapping], *, title: str, prevalence: float | None = None) -> Figure:
    """ROC and precision-recall curves of one configuration, one faint line per seed."""
    fig, (roc, pr) = _subplots(1, 2, figsize=(10, 4.5))
    classes = sorted({c for cur in curves_by_seed for c in cur})
    for ci, cls in enumerate(classes):
        for j, cur in enumerate(curves_by_seed):
            if cls not in cur:
                continue
            x, y = np.asarray(cur[cls]["roc"]).T
            roc.plot(x, y, color=f"C{ci}", alpha=0.5, lw=1, label=f"{cls}" if j == 0 else None)
            r, p = np.asarray(cur[cls]["pr"]).T
            pr.plot(r, p, color=f"C{ci}", alpha=0.5, lw=1, label=f"{cls}" if j == 0 else None)
    roc.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    if prevalence is not None and not math.isnan(prevalence):
        pr.axhline(prevalence, ls=":", color="grey", label=f"prevalence {prevalence:.2f}")
    _style(roc, xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)", title="ROC")
    _style(pr, xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall")
    for ax in (roc, pr):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="lower right" if ax is roc else "lower left", title="positive class, one line per seed",
                  title_fontsize=7)
    fig.suptitle(wrap(title, fig.get_figwidth()), fontsize=10)
    fig.tight_layout()
    return fig


def roc_auc(points) -> float:
    """The area under ROC curve points ``[[fpr, tpr], ...]`` (trapezoids): the AUROC the per-class panels and
    the per-class table show."""
    x, y = np.asarray(points, dtype=float).T
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def roc_pr_per_class(curves_by_seed: Sequence[Mapping], *, title: str) -> Figure:
    """One small panel per class (one-vs-rest), its ROC curves in the upper block of rows and its
    precision-recall curves in the lower block, one faint line per seed; a ROC panel's title gives the class and
    its mean AUROC over seeds (:func:`roc_auc`). Many classes stay readable: no panel holds two classes."""
    classes = list(dict.fromkeys(c for cur in curves_by_seed for c in cur))
    ncols = min(4, max(1, len(classes)))
    nrows = max(1, math.ceil(len(classes) / ncols))
    fig = Figure(figsize=(2.6 * ncols + 0.6, 2.3 * 2 * nrows + 0.8))
    axes = fig.subplots(2 * nrows, ncols, squeeze=False)
    for block, kind in enumerate(("roc", "pr")):
        flat = axes[block * nrows:(block + 1) * nrows].ravel()
        for ax, cls in zip(flat, classes):
            seeds = [cur[cls][kind] for cur in curves_by_seed if cls in cur]
            for pts in seeds:
                x, y = np.asarray(pts).T
                ax.plot(x, y, color="C0" if kind == "roc" else "C1", alpha=0.6, lw=1)
            if kind == "roc":
                ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
                ax.set_title(wrap(f"ROC {cls}: AUROC {np.mean([roc_auc(p) for p in seeds]):.3f}", 2.6, 8), fontsize=8)
            else:
                ax.set_title(wrap(f"PR {cls}", 2.6, 8), fontsize=8)
            ax.set_xlabel("false positive rate" if kind == "roc" else "recall", fontsize=7)
            ax.set_ylabel("true positive rate" if kind == "roc" else "precision", fontsize=7)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
        for ax in flat[len(classes):]:
            ax.set_visible(False)
    suptitle = wrap(title + " — one panel per class (one-vs-rest), one line per seed", fig.get_figwidth())
    fig.suptitle(suptitle, fontsize=10)
    height = fig.get_figheight()  # fixed margins: tight_layout over 2 x classes panels costs seconds
    fig.subplots_adjust(left=0.5 / fig.get_figwidth() + 0.02, right=0.98, bottom=0.45 / height,
                        top=1 - (0.45 + 0.2 * (suptitle.count("\n") + 1)) / height, wspace=0.35, hspace=0.55)
    return fig


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], *, title: str) -> Figure:
    m = np.asarray(matrix, dtype=float)
    fig, ax = _subplots(figsize=(1.2 * len(classes) + 3, 1.1 * len(classes) + 2.5))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)))
    ax.set_yticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=30, ha="right")
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(wrap(title, fig.get_figwidth(), 9), fontsize=9)
    fig.tight_layout()
    return fig


def training_curves(curves: Sequence[Mapping], *, title: str) -> Figure:
    """Fine-tuning: train and val loss per epoch, one line pair per run."""
    fig, ax = _subplots(figsize=(8, 4.5))
    for i, cur in enumerate(curves):
        label = cur.get("label", f"run {i}")
        ep = cur.get("epoch") or list(range(1, len(cur.get("train_loss", [])) + 1))
        if cur.get("train_loss"):
            ax.plot(ep, cur["train_loss"], color=f"C{i % 10}", alpha=0.6, label=f"{label} train")
        if cur.get("val_loss"):
            ax.plot(ep, cur["val_loss"], "--", color=f"C{i % 10}", label=f"{label} val")
    _style(ax, xlabel="epoch", ylabel="cross-entropy loss", title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
