"""Benchmark: how much does ``split.val_policy: full`` flatter a few-shot result compared with ``matched``?

``full`` chooses thresholds (and hyper-parameters, early stopping) on the whole val split (270 labelled images of
PneumoniaMNIST) although the run claims k labelled images per class; ``matched`` uses a val subset of k images per
class, the budget a user with k labelled images per class has. Same features, same k-shot subsets, same test set:
only the val images differ.

Data: PneumoniaMNIST (balanced 28 px npz in ../shared/data, its own train 2428 / val 270 / test 468 split).
Features: the 28x28 pixels flattened and scaled to [0, 1] (784-d; no pretrained weights can be downloaded here, so
the numbers are those of pixel features, not of a pretrained backbone). Every run goes through featpipe's own
``featpipe.evaluate_fewshot`` (k-shot subsets, ``heads.scaler``, threshold on val, scoring, degenerate flag), one
call per policy, heads logistic and svc, k in 1, 5, 10, seeds 0..9.

Writes ``<out>/val_policy.md``: per head and k, the mean test balanced accuracy and macro F1 under each policy,
the gap (full - matched), the labelled images each policy used per run (k-shot + val), and the number of runs
flagged degenerate.

    python benchmarks/bench_val_policy.py [--out benchmarks/results] [--seeds 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
DATA = HERE.parent.parent / "shared" / "data" / "pneumoniamnist_balanced_28.npz"
if not DATA.is_file():
    DATA = Path("/work/shared/data/pneumoniamnist_balanced_28.npz")

from featpipe import evaluate_fewshot  # noqa: E402

SHOTS = (1, 5, 10)
HEADS = ("logistic", "svc")


def load():
    d = np.load(DATA)
    X, y, ids = [], [], {}
    for part in ("train", "val", "test"):
        x = d[f"{part}_images"].reshape(len(d[f"{part}_images"]), -1).astype(np.float32) / 255.0
        ids[part] = [f"{part}/{i}" for i in range(len(x))]
        X.append(x)
        y.append(d[f"{part}_labels"].ravel().astype(np.int64))
    return np.concatenate(X), np.concatenate(y), ids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args(argv)
    X, y, ids = load()
    all_ids = ids["train"] + ids["val"] + ids["test"]
    t0 = time.perf_counter()
    frames = []
    for policy in ("full", "matched"):
        runs, _ = evaluate_fewshot(X, y, all_ids, train=ids["train"], val=ids["val"], test=ids["test"],
                                   classes=["normal", "pneumonia"], heads=HEADS, shots=SHOTS,
                                   seeds=range(args.seeds), val_policy=policy)
        frames.append(runs.assign(policy=policy))
    runs = pd.concat(frames, ignore_index=True)
    elapsed = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "val_policy.md").write_text(report(runs, args.seeds, elapsed))
    print((args.out / "val_policy.md").read_text())
    return 0


def report(runs: pd.DataFrame, seeds: int, elapsed: float) -> str:
    runs = runs.assign(labelled=runs["n_train"] + runs["n_val"],
                       degenerate=runs["degenerate"].astype(str).str.lower().isin(("true", "1")))
    lines = ["# Val policy: full vs matched on PneumoniaMNIST (pixel features)", "",
             f"`python benchmarks/bench_val_policy.py --seeds {seeds}`: {len(runs)} runs, {elapsed:.0f} s. "
             "Mean over seeds of the test metric; gap = full - matched (positive: `full` looks better). "
             "Labelled images = k-shot training images + the val images that chose the threshold.", "",
             "| head | k | policy | labelled images per run | test balanced accuracy | test macro F1 | "
             "test AUROC | degenerate runs |", "|---|---|---|---|---|---|---|---|"]
    gaps = []
    for (head, k), g in runs.groupby(["head", "shots"], sort=True):
        means = {}
        for policy, p in g.groupby("policy", sort=True):
            means[policy] = p["balanced_accuracy"].mean()
            lines.append(f"| {head} | {k} | {policy} | {int(p['labelled'].median())} | {p['balanced_accuracy'].mean():.3f} "
                         f"| {p['macro_f1'].mean():.3f} | {p['auroc'].mean():.3f} | {int(p['degenerate'].sum())} of {len(p)} |")
        gaps.append(f"| {head} | {k} | {means['full'] - means['matched']:+.3f} |")
    lines += ["", "Gap in test balanced accuracy (full - matched):", "", "| head | k | gap |", "|---|---|---|", *gaps, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
