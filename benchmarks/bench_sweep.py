"""Benchmark: the full default sweep grid on cached features vs a naive reload-and-refit loop.

Grid: 3 backbones (synthetic features of dims 2208, 2048, 1152, like DenseNet161, ResNet50 and
MedSigLIP) x 4 heads (svc, logistic, mlp, prototype) x shots (1, 2, 5, 10, 20, 50, 100, 200) x 10 seeds
= 960 runs, on a binary data set with 2,000 train, 200 val and a 624-image test split (234/390 like
the Kaggle chest X-ray test set).

featpipe: ``featpipe.results.stages.sweep`` (each cache read once, runs in parallel with joblib, CV on Gram /
span coordinates, numpy MLP in the span of the training embeddings).
Naive: per run, reload the HDF5 cache, select rows, fit ``GridSearchCV(Pipeline(StandardScaler, SVC or
LogisticRegression))`` on the raw embeddings, a full-width torch MLP (D x 512, 200 epochs of Adam),
a prototype classifier; timed on a subset and extrapolated (printed as such).

    python benchmarks/bench_sweep.py [--out DIR] [--naive-seeds 1] [--no-models] [--heads H ...] [--n-jobs 2] [-S KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

DIMS = {"densenet161": 2208, "resnet50": 2048, "medsiglip": 1152}
SHOTS = (1, 2, 5, 10, 20, 50, 100, 200)
SEEDS = tuple(range(10))
HEADS = ("svc", "logistic", "mlp", "prototype")
MANIFEST_SHA = "b" * 64


def make_data(root: Path) -> dict:
    rng = np.random.default_rng(0)
    n_train, n_val, test = 2000, 200, (234, 390)
    ids, y = [], []
    for i in range(n_train):
        ids.append(f"train/{i}"), y.append(i % 2)
    for i in range(n_val):
        ids.append(f"val/{i}"), y.append(i % 2)
    for c, n in enumerate(test):
        for i in range(n):
            ids.append(f"test/{c}-{i}"), y.append(c)
    y = np.array(y)
    for b, d in DIMS.items():
        # signal in 20 directions, strength differing by backbone; correlated noise like real embeddings
        sig = {"densenet161": 0.35, "resnet50": 0.30, "medsiglip": 0.45}[b]
        dirs = rng.normal(size=(20, d)) / np.sqrt(d) * np.sqrt(d / 20)
        latent = rng.normal(size=(len(ids), 20)) + sig * (2 * y[:, None] - 1)
        X = latent @ dirs + rng.normal(size=(len(ids), d)) * 0.8 + rng.normal(size=d)
        path = root / "cache" / "bench" / f"{b}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f["features"] = X.astype(np.float32)
            f["ids"] = np.asarray(ids, dtype=object).astype(h5py.string_dtype("utf-8"))
            f["labels"] = y.astype(np.int64)
            for k, v in {"backbone": b, "weights": "default", "weights_id": f"synthetic:{b}", "layer": "",
                         "preprocess": "{}", "manifest_sha256": MANIFEST_SHA, "embedding_dim": d,
                         "precision": "fp32", "complete": True}.items():
                f.attrs[k] = v
    train = [i for i in ids if i.startswith("train/")]
    by_class = {c: [k for k in train if int(k.split("/")[1]) % 2 == c] for c in (0, 1)}
    fewshot = {}
    for s in SEEDS:
        r = np.random.default_rng(1000 + s)
        order = {c: list(r.permutation(v)) for c, v in by_class.items()}
        fewshot[str(s)] = {str(k): order[0][:k] + order[1][:k] for k in SHOTS}
    splits = {"format": 1, "dataset": "bench", "classes": ["normal", "pneumonia"], "manifest_sha256": MANIFEST_SHA,
              "params": {}, "train": train, "val": [i for i in ids if i.startswith("val/")],
              "test": [i for i in ids if i.startswith("test/")], "fewshot": fewshot, "capped": {}, "excluded": []}
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "splits.json").write_text(json.dumps(splits))
    return splits


def naive_run(cache: Path, splits: dict, head: str, k: int, seed: int) -> None:
    """What a straightforward script does: reload, refit with a fresh grid search, score."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from featpipe.features.cache import read_features
    from featpipe.evaluation.metrics import choose_threshold, score

    fs = read_features(cache)
    tr, va, te = (fs.select(splits["fewshot"][str(seed)][str(k)]), fs.select(splits["val"]), fs.select(splits["test"]))
    grid = {"clf__C": [0.01, 0.1, 1.0, 10.0, 100.0]}
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    if head in ("svc", "logistic"):
        clf = SVC(class_weight="balanced") if head == "svc" else LogisticRegression(class_weight="balanced", max_iter=2000)
        from sklearn.pipeline import Pipeline

        pipe = Pipeline([("scale", StandardScaler()), ("clf", clf)])
        model = GridSearchCV(pipe, grid, cv=cv, scoring="balanced_accuracy").fit(tr.features, tr.labels) if k >= 5 \
            else pipe.fit(tr.features, tr.labels)
        f = model.decision_function if head == "svc" else (lambda X: model.predict_proba(X)[:, 1])
        pv, pt = f(va.features), f(te.features)
        pv, pt = 1 / (1 + np.exp(-pv)) if head == "svc" else pv, 1 / (1 + np.exp(-pt)) if head == "svc" else pt
    elif head == "mlp":
        import torch

        torch.manual_seed(seed)
        sc = StandardScaler().fit(tr.features)
        net = torch.nn.Sequential(torch.nn.Linear(tr.features.shape[1], 512), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                  torch.nn.Linear(512, 2))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        x, yy = torch.tensor(sc.transform(tr.features), dtype=torch.float32), torch.tensor(tr.labels)
        for _ in range(200):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), yy).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            pv = torch.softmax(net(torch.tensor(sc.transform(va.features), dtype=torch.float32)), 1)[:, 1].numpy()
            pt = torch.softmax(net(torch.tensor(sc.transform(te.features), dtype=torch.float32)), 1)[:, 1].numpy()
    else:
        sc = make_pipeline(StandardScaler()).fit(tr.features)
        Z = sc.transform(tr.features)
        P = np.stack([Z[tr.labels == c].mean(0) for c in (0, 1)])
        P /= np.linalg.norm(P, axis=1, keepdims=True)
        def sim(X):
            Xn = sc.transform(X)
            Xn /= np.linalg.norm(Xn, axis=1, keepdims=True)
            s = Xn @ P.T * 10
            return np.exp(s[:, 1]) / np.exp(s).sum(1)
        pv, pt = sim(va.features), sim(te.features)
    score(te.labels, pt, classes=["n", "p"], threshold=choose_threshold(va.labels, pv))


def _cpu_seconds() -> dict:
    """User + system CPU seconds of this process and of its live child processes (the engine's workers stay up
    after the sweep: joblib reuses them), so that the sweep's work is measured apart from the machine's load."""
    import psutil

    me = psutil.Process()
    kids = 0.0
    for c in me.children(recursive=True):
        try:
            t = c.cpu_times()
            kids += t.user + t.system
        except psutil.Error:
            continue
    t = me.cpu_times()
    return {"self": t.user + t.system, "workers": kids}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--naive-seeds", type=int, default=1, help="seeds of one backbone timed for the naive loop")
    ap.add_argument("--no-models", action="store_true", help="do not save model files in the featpipe sweep")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--n-jobs", type=int, default=2, help="fit.n_jobs of the featpipe sweep (1: in this process)")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a params override for the featpipe sweep, as the CLI's -S (repeatable)")
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS,
                    help="heads of the featpipe sweep (default: all four; '--heads prototype' measures the per-run "
                         "cost a sweep pays whatever its head: scoring, record, saved head, journal, workers)")
    args = ap.parse_args(argv)
    from featpipe.params.config import load_params
    from featpipe.results.stages import sweep

    root = Path(args.out or tempfile.mkdtemp(prefix="bench-sweep-"))
    t = time.perf_counter()
    splits = make_data(root)
    print(f"synthetic caches written in {time.perf_counter() - t:.1f} s under {root}")
    overrides = [f"fit.n_jobs={args.n_jobs}"] + (["fit.save_models=false"] if args.no_models else []) + args.set
    params = load_params(None, overrides)
    cpu0, load0 = _cpu_seconds(), os.getloadavg()[0]
    t = time.perf_counter()
    runs = sweep(root / "data/splits.json", params=params, cache_dir=root / "cache", results_dir=root / "results",
                 models_dir=root / "models", backbones=list(DIMS), heads=list(args.heads), shots=list(SHOTS),
                 seeds=list(SEEDS))
    wall = time.perf_counter() - t
    print(f"featpipe sweep: {len(runs)} runs in {wall:.1f} s wall (n_jobs={params.fit.n_jobs}, models saved: "
          f"{not args.no_models}{', overrides: ' + ' '.join(args.set) if args.set else ''})")
    cpu = {k: v - cpu0.get(k, 0.0) for k, v in _cpu_seconds().items()}
    print(f"featpipe sweep CPU: {cpu['self']:.1f} s in this process + {cpu['workers']:.1f} s in its worker processes "
          f"= {cpu['self'] + cpu['workers']:.1f} s; load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} CPUs)")
    import pandas as pd

    table = pd.read_csv(root / "results/runs.csv")
    print(table.groupby(["backbone", "head", "shots"])["accuracy"].mean().unstack("shots").round(3).to_string())
    if args.skip_naive:
        return 0
    backbone = "densenet161"
    per_cell = {}
    t_all = time.perf_counter()
    for head in HEADS:
        for k in SHOTS:
            t = time.perf_counter()
            for s in range(args.naive_seeds):
                naive_run(root / "cache/bench" / f"{backbone}.h5", splits, head, k, s)
            per_cell[(head, k)] = (time.perf_counter() - t) / args.naive_seeds
            print(f"naive {head:<10} k={k:<4} {per_cell[(head, k)]:.2f} s/run", flush=True)
    measured = time.perf_counter() - t_all
    total = sum(per_cell.values()) * len(SEEDS) * len(DIMS)
    print(f"naive loop: measured {measured:.1f} s for {len(per_cell) * args.naive_seeds} runs "
          f"({backbone}, {args.naive_seeds} seed(s)); extrapolated to {len(per_cell) * len(SEEDS) * len(DIMS)} runs: "
          f"{total:.0f} s single process (x {len(SEEDS)} seeds x {len(DIMS)} backbones, at the largest dimension)")
    print(f"speed-up vs naive single process: {total / wall:.0f}x; vs naive on 2 cores (ideal /2): {total / 2 / wall:.0f}x")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
