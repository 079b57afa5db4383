"""Benchmark: does the worst-group gap's 95% interval (featpipe.results.subgroups) cover the true gap?

A simulated study: one run's test predictions on ``n`` images in two groups (``a``: 60%, ``b``: 40%), labels 50/50.
For AUROC, scores are ``sigmoid(y delta_g + N(0, 1) - delta_g / 2)``: a group's true AUROC is ``Phi(delta_g / sqrt 2)``.
For accuracy, each image is right with probability ``acc_g`` (its score 0.75 or 0.25 on the right or wrong side of
the 0.5 threshold). Truth: ``AUROC_a - AUROC_b`` and ``acc_a - acc_b``. Cells: a real gap, no gap, a real gap on
fewer images. The interval is featpipe's own (:func:`featpipe.results.subgroups.subgroup_metrics`: percentile
bootstrap of the paired difference of the two groups named on the observed data); coverage is counted with the sign
of the named difference (best - worst), so a no-gap truth of 0 is covered when the interval holds 0.

Writes ``<out>/subgroup_gap.md``.

    python benchmarks/bench_subgroup_gap.py [--studies 200] [--boot 200] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featpipe.results.subgroups import SubgroupSettings, subgroup_metrics  # noqa: E402

CELLS = (  # (name, n images, AUROC deltas (a, b), accuracies (a, b))
    ("gap", 300, (2.0, 1.2), (0.85, 0.70)),
    ("no gap", 300, (1.5, 1.5), (0.80, 0.80)),
    ("gap, small", 120, (2.0, 1.2), (0.85, 0.70)),
)


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _study(rng, n, deltas, accs):
    g = np.where(rng.random(n) < 0.6, "a", "b")
    y = rng.integers(0, 2, n)
    d = np.where(g == "a", deltas[0], deltas[1])
    score = 1 / (1 + np.exp(-(y * d + rng.normal(0, 1, n) - d / 2)))  # AUROC per group: Phi(d / sqrt(2))
    right = rng.random(n) < np.where(g == "a", accs[0], accs[1])
    acc_p = np.where(right == (y == 1), 0.75, 0.25)  # for accuracy: right side of 0.5 with probability acc_g
    return g, y, score, acc_p


def run(studies: int, boot: int) -> list[list]:
    rows = []
    for name, n, deltas, accs in CELLS:
        truth = {"auroc": _phi(deltas[0] / math.sqrt(2)) - _phi(deltas[1] / math.sqrt(2)), "accuracy": accs[0] - accs[1]}
        hits = {"auroc": 0, "accuracy": 0}
        t0 = time.perf_counter()
        for s in range(studies):
            rng = np.random.default_rng(s)
            g, y, score, acc_p = _study(rng, n, deltas, accs)
            settings = SubgroupSettings(("g",), min_size=10, n_boot=boot, seed=s)
            for metric, p in (("auroc", score), ("accuracy", acc_p)):
                _, gaps = subgroup_metrics(y, p, {"g": g}, threshold=0.5, settings=settings)
                r = gaps[gaps["metric"] == metric].iloc[0]
                sign = 1 if r["best_group"] == "a" else -1
                hits[metric] += bool(r["gap_low"] <= sign * truth[metric] <= r["gap_high"])
        secs = time.perf_counter() - t0
        for m in ("auroc", "accuracy"):
            rows.append([name, n, m, f"{truth[m]:.3f}", f"{hits[m] / studies:.3f}", studies, f"{secs:.0f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    rows = run(a.studies, a.boot)
    head = ["cell", "images", "metric", "true gap", "coverage of the 95% interval", "studies", "seconds (cell)"]
    lines = ["# Worst-group gap interval: coverage in simulated studies", "",
             f"`python benchmarks/bench_subgroup_gap.py --studies {a.studies} --boot {a.boot}`; "
             f"Monte-Carlo error of a coverage near 0.95: about +-{1.96 * math.sqrt(0.95 * 0.05 / a.studies):.3f}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    out = Path(a.out) / "subgroup_gap.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
