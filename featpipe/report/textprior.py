"""The report's text-prior section: the text-initialised logistic head (``textlogistic``: logistic regression
pulled towards the zero-shot classifier of ``zeroshot.prompts``) against the plain logistic head on the same
backbone (weights, layer), per shot count. Both fit the same k-shot subset for a seed, so they are **paired by
seed** (:func:`featpipe.results.compare.seed_comparisons` with the text-prior head as the reference): the mean
difference, its 95% t-interval over seeds and the exact paired permutation p (not corrected for multiplicity;
the comparisons section's Holm family is the place for that)."""

from __future__ import annotations

import html

import pandas as pd

from featpipe.report.html import table
from featpipe.results.compare import seed_comparisons
from featpipe.results.summary import config_labels

TEXT, PLAIN = "textlogistic", "logistic"


def textprior_section(runs: pd.DataFrame, metric: str) -> str:
    """The section's HTML; "" when no run is of the text-initialised head."""
    if "head" not in runs.columns or not (runs["head"] == TEXT).any() or metric not in runs.columns:
        return ""
    t = runs[runs["head"].isin((TEXT, PLAIN))].assign(config=lambda d: config_labels(d).to_numpy())
    rows, lonely = [], []
    for (backbone, weights_id, layer), g in t.groupby(["backbone", "weights_id", t["layer"].fillna("")], sort=True):
        text = sorted(set(g.loc[g["head"] == TEXT, "config"]))
        if not (g["head"] == PLAIN).any():
            lonely.append(backbone)
            continue
        plain, mean = set(g.loc[g["head"] == PLAIN, "config"]), g.groupby(["config", "shots"])[metric].mean()
        for ref in text:
            comp = seed_comparisons(g, metrics=[metric], reference=ref)
            for r in (r for r in comp.to_dict("records") if r["config_b"] in plain):
                rows.append([r["shots"], backbone, r["config_b"], f"{mean[(ref, r['shots'])]:.3f}",
                             f"{mean[(r['config_b'], r['shots'])]:.3f}", f"{r['mean_diff']:+.3f}",
                             f"[{r['seed_ci_low']:+.3f}, {r['seed_ci_high']:+.3f}]", r["n_seeds"], f"{r['p_value']:.3g}"])
    intro = (f"<p>The text-initialised logistic head (<code>{TEXT}</code>: its weights pulled towards the zero-shot "
             "classifier of the class prompts) against the plain logistic head on the same backbone, test "
             f"{html.escape(metric)}. Paired by seed (both fit the same k-shot subset): mean of text − plain, its 95% "
             "t-interval over seeds, and the exact paired permutation p (uncorrected).</p>")
    note = (f"<p class=\"note\">No plain logistic head to set beside the text prior on {html.escape(', '.join(lonely))}: "
            "add logistic to fit.heads.</p>") if lonely else ""
    if not rows:
        return intro + note
    return intro + table(["shots", "backbone", "plain head", f"text prior {metric}", f"plain {metric}",
                          "mean difference", "95% interval (seeds)", "paired seeds", "p (permutation)"], rows) + note
