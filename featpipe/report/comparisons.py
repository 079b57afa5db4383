"""The report's paired comparisons, collapsed to the ones that matter: per shot count the configuration chosen on
val against the runner-up on val, and every comparison whose answer is a difference; the rest (no detectable
difference) in a collapsed block with their count."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from featpipe.report.html import details, table
from featpipe.report.plots import METRIC_LABELS
from featpipe.results.compare import COMPARISONS_CSV, seed_comparisons, seed_gaps, smallest_p, verdict
from featpipe.results.summary import config_labels, select_best, summarize_runs
from featpipe.results.unpaired import PAIRING

HEADER = ["shots", "chosen on val (A)", "other (B)", "seeds (pairing)", "mean {label} A − B",
          "95% interval (seeds + test patients)", "seed part", "bootstrap (test patients)", "p (permutation)",
          "p (Holm)", "answer"]


def runners_up(summary: Mapping[str, Mapping], chosen: Mapping[int, str], metric: str) -> dict[int, str]:
    """{shots: configuration label} of the second-best on val per shot count (the chosen one set aside)."""
    rest = {n: e for n, e in summary.items() if n not in set(chosen.values())}
    return {k: str(rest[n]["config"]) for k, n in select_best(rest, metric).items()}


def _pairing_cell(r: Mapping) -> str:
    """``n paired`` seeds, or ``n vs m prompt sets (unpaired)`` for a trained head against zero-shot."""
    if r.get("pairing") == PAIRING:
        return f"{int(r['n_seeds'])} vs {int(r['n_b'])} prompt sets (unpaired)"
    return f"{int(r['n_seeds'])} paired"


def _rows(c: pd.DataFrame, best: Sequence[Mapping]) -> list[dict]:
    """The comparisons of each chosen configuration, oriented chosen (A) minus other (B)."""
    out = []
    for b in best:
        a = b["config"]
        sub = c[(c["shots"] == b["shots"]) & ((c["config_a"] == a) | (c["config_b"] == a))]
        for r in sub.sort_values("p_holm").to_dict("records"):
            flip = r["config_b"] == a
            other = r["config_a"] if flip else r["config_b"]
            s = -1 if flip else 1
            d, lo, hi = s * r["mean_diff"], (s * (r["ci_high"] if flip else r["ci_low"])), (s * (r["ci_low"] if flip else r["ci_high"]))
            blo, bhi = (s * r["boot_ci_high"], s * r["boot_ci_low"]) if flip else (r["boot_ci_low"], r["boot_ci_high"])
            slo, shi = ((s * r["seed_ci_high"], s * r["seed_ci_low"]) if flip else (r["seed_ci_low"], r["seed_ci_high"])) \
                if "seed_ci_low" in r else (math.nan, math.nan)
            answer = verdict({**r, "mean_diff": d})
            out.append({"shots": b["shots"], "a": a, "b": other, "answer": answer.replace("A better", "chosen better")
                        .replace("B better", f"{other} better"), "significant": answer.startswith(("A better", "B better")),
                        "degenerate": bool(r["degenerate_b"] if not flip else r["degenerate_a"]),
                        "cells": [b["shots"], a, other, _pairing_cell(r), f"{d:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]",
                                  "–" if not math.isfinite(slo) else f"[{slo:+.3f}, {shi:+.3f}]",
                                  "–" if not math.isfinite(blo) else f"[{blo:+.3f}, {bhi:+.3f}]",
                                  f"{r['p_value']:.3g}", f"{r['p_holm']:.3g}"]})
    return out


def comparison_section(comparisons: pd.DataFrame, best: Sequence[Mapping], metric: str,
                       runner_up: Mapping[int, str]) -> tuple[str, dict[int, str], list[str]]:
    """(HTML, {shots: "<runner-up>: <answer of chosen vs runner-up>"}, [lines of shot counts whose comparisons cannot be
    significant]). Shown: per shot count the chosen configuration against the runner-up on val, and every
    comparison with a detectable difference; the others collapsed (with their count)."""
    if comparisons.empty:
        return "<p>No comparisons (fewer than two configurations per shot count).</p>", {}, []
    c = comparisons[comparisons["metric"] == metric]
    if c.empty:
        c = comparisons[comparisons["metric"] == comparisons["metric"].iloc[0]]
        metric = str(c["metric"].iloc[0])
    rows = _rows(c, best)
    shown = [r for r in rows if r["significant"] or r["b"] == runner_up.get(r["shots"])]
    rest = [r for r in rows if r not in shown]
    verdicts = {r["shots"]: f"{r['b']}: {r['answer']}" for r in rows if r["b"] == runner_up.get(r["shots"])}
    label = METRIC_LABELS.get(metric, metric)
    head = [h.format(label=label) for h in HEADER]
    mk = lambda rs, id_: table(head, [r["cells"] + [r["answer"]] for r in rs],
                               row_classes=["degenerate" if r["degenerate"] else "" for r in rs], attrs=f' id="{id_}"')
    floors, floor_html = _floors(c)
    text = (f"<p>Is the configuration chosen on val better than each other one at k shots? Differences in {html.escape(label)} "
            "are paired by seed (every configuration saw the same labelled images for a seed); p-values come from an exact "
            "paired permutation (sign-flip) test (a trained head against zero-shot is unpaired: its runs are prompt sets, "
            "not seeds; Welch interval and a two-sample permutation p) and are Holm-corrected within the <b>family stated here</b>: per shot "
            "count, the chosen configuration against each of the others (or every one against "
            "<code>compare.reference</code>). " + floor_html + " A difference is called only when the Holm p is "
            "below 0.05 and the 95% interval (seeds + test patients) excludes 0. Grey rows: B has degenerate runs.</p>"
            f"<p>Shown: the chosen configuration against the runner-up on val per shot count, and every comparison "
            f"that found a difference ({sum(r['significant'] for r in rows)} of {len(rows)}).</p>"
            + "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in comparisons.attrs.get("notes", [])))
    out = text + (mk(shown, "comparisons-shown") if shown else "<p>None.</p>")
    if rest:
        out += details(f"{len(rest)} more comparisons, none with a detectable difference", mk(rest, "comparisons-rest"))
    return out, verdicts, floors


def _floors(c: pd.DataFrame) -> tuple[list[str], str]:
    """The smallest Holm p attainable per shot count (family size m, n seeds: m x 2 / 2^n): ([warning lines of
    shot counts where it is not below 0.05], the HTML sentence)."""
    if c.empty:
        return [], ""
    parts, warn = [], []
    for k, g in c.groupby("shots"):
        n, m = int(g["n_seeds"].max()), int(g["family"].max()) if "family" in g.columns else len(g)
        floor = min(1.0, m * smallest_p(n))
        parts.append(f"k = {k}: {m} comparison(s), {n} seeds, smallest attainable Holm p {floor:.3g}"
                     + (f" — <b>cannot be significant with {n} seeds</b>" if floor >= 0.05 else ""))
        if floor >= 0.05:
            warn.append(f"k = {k}: no comparison can be significant with {n} seeds (smallest attainable Holm p "
                        f"{floor:.3g} in a family of {m}): use more seeds to tell configurations apart")
    return warn, "Smallest attainable p with n seeds is 2 / 2^n; " + "; ".join(parts) + "."


def read_comparisons(results_dir: Path, runs: pd.DataFrame, params) -> pd.DataFrame:
    """``<results>/comparisons.csv`` when it was written for these runs (every configuration it names is one of
    them), else the seed comparisons computed now."""
    f = Path(results_dir) / COMPARISONS_CSV
    if f.is_file():
        t = pd.read_csv(f)
        if set(t["config_a"]) | set(t["config_b"]) <= set(config_labels(runs)):
            t.attrs["notes"] = seed_gaps(runs)  # seeds left out of the pairing (a CSV does not keep them)
            return t
    metric = params.report.metric
    summary = summarize_runs(runs, clinical=params.clinical, select_metric=metric)
    chosen = {k: summary[n]["config"] for k, n in select_best(summary, metric).items()}
    return seed_comparisons(runs, metrics=[metric], reference=params.compare.reference, chosen=chosen)
