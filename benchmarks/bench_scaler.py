"""Benchmark: which ``heads.scaler`` default (pool | kshot | center | none) gives better val/test AUROC at k = 1..50.

Data (read in place from ../shared/data, never copied):
- PneumoniaMNIST (balanced 28 px npz; its own train 2428 / val 270 / test 468 split);
- Figure 1 COVID-19 chest X-rays (55 images, metadata.csv: finding "COVID-19" vs every other row, empty
  findings included, through featpipe's CSV source; patient = file stem without its trailing letter).

Features (no pretrained weights can be downloaded here, so none are used):
- ``pixels``: the decoded 28x28 grayscale image, flattened (784-d, /255), from featpipe's decoded cache;
- ``resnet18-random``: featpipe extract of ResNet18 with seeded random weights (``--weights random``,
  512-d, 224 px).
Numbers on these features say which scaler behaves better for few-shot heads; they are not the accuracy
of pretrained embeddings.

Every run goes through featpipe's own code: prepare (splits, k-shot subsets), decode, extract, and
``featpipe.fewshot.fit.run_grid`` with ``heads.scaler`` set; AUROC on val (the split's val, threshold-free) and
test. Writes ``<out>/scaler.md`` (summary + per-k table) and ``<out>/scaler.csv`` (every run).

    python benchmarks/bench_scaler.py [--out benchmarks/results] [--seeds 5] [--heads svc logistic prototype mlp]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
SCALERS = ("pool", "kshot", "center", "none")


def figure1_csv(work: Path) -> Path:
    meta = pd.read_csv(DATA / "figure1-covid-cxr" / "metadata.csv", encoding="latin-1")
    finding = dict(zip(meta["patientid"], meta["finding"].fillna("")))
    rows = []
    for f in sorted((DATA / "figure1-covid-cxr" / "images").iterdir()):
        stem = f.stem
        patient = stem[:-1] if stem[-1].isalpha() else stem
        if patient not in finding:
            continue
        rows.append({"path": f.name, "label": "covid" if finding[patient] == "COVID-19" else "other", "patient": patient})
    out = work / "figure1.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def dataset_params(name: str, work: Path, seeds: int):
    from featpipe.params.config import load_params

    common = [f"split.seeds={list(range(seeds))}", "decode.workers=2", "fit.save_models=false", "fit.curves=false",
              "fit.n_jobs=2", f"data.name={name}"]
    if name == "pneumoniamnist":
        over = ["data.source=npz", f"data.path={DATA / 'pneumoniamnist_balanced_28.npz'}",
                "data.class_names=[normal, pneumonia]", "split.shots=[1, 2, 5, 10, 20, 50]"]
    else:
        over = ["data.source=csv", f"data.path={figure1_csv(work)}", f"data.csv.root={DATA / 'figure1-covid-cxr' / 'images'}",
                "data.csv.patient_col=patient", "data.class_names=[other, covid]", "split.shots=[1, 2, 5]",
                "split.shots_policy=cap", "split.test_fraction=0.25", "split.val_fraction=0.2"]
    return load_params(None, common + over)


def pixel_cache(splits, manifest, cache_dir: Path, name: str):
    from featpipe.decoded.build import build_decoded
    from featpipe.decoded.cache import DecodedImages, decoded_path
    from featpipe.fewshot.fit import CacheData

    path = decoded_path(cache_dir, name, 28)
    build_decoded(manifest, size=28, path=path, workers=2, progress=False)
    ids = list(dict.fromkeys([*splits.train, *splits.val, *splits.test]))
    with DecodedImages(path) as d:
        imgs = d.read(d.index_of(ids))
    X = imgs.reshape(len(ids), -1).astype(np.float32) / 255.0
    label = dict(zip(manifest["id"].astype(str), manifest["label"].astype(int)))
    row = {k: i for i, k in enumerate(ids)}
    return CacheData(path, "pixels", "none", "", "", "none", {"weights_id": "pixels28"}, X,
                     np.array([label[i] for i in ids], dtype=np.int64), row,
                     np.array([row[k] for k in splits.val]), np.array([row[k] for k in splits.test]))


def run_dataset(name: str, work: Path, *, seeds: int, heads: list[str]) -> pd.DataFrame:
    from featpipe.data.manifest import read_manifest
    from featpipe.data.prepare import prepare
    from featpipe.data.splits import load_splits
    from featpipe.features.extract import extract
    from featpipe.fewshot.fit import load_cache, run_grid

    params = dataset_params(name, work, seeds)
    d = work / name
    summary = prepare(params, manifest_path=d / "manifest.csv", splits_path=d / "splits.json")
    print("\n".join(summary.lines()), flush=True)
    splits = load_splits(d / "splits.json")
    manifest = read_manifest(d / "manifest.csv")
    caches = [pixel_cache(splits, manifest, d / "cache", name)]
    t0 = time.perf_counter()
    extract(d / "manifest.csv", backbone="resnet18", dataset=name, cache_dir=d / "cache",
            params=dataclasses.replace(params.extract, weights="random", batch_size=64, precision="fp32"),
            decode=params.decode, progress=False)
    print(f"{name}: resnet18 (random weights) features in {time.perf_counter() - t0:.0f} s", flush=True)
    caches.append(load_cache(d / "cache", splits, "resnet18", weights="random"))
    shots = sorted(splits.fewshot[0])
    rows = []
    for scaler in SCALERS:
        p = dataclasses.replace(params, heads=dataclasses.replace(params.heads, scaler=scaler))
        t0 = time.perf_counter()
        runs = run_grid(splits, caches, heads=heads, shots=shots, seeds=list(range(seeds)), params=p, n_jobs=2)
        print(f"{name}: scaler={scaler}: {len(runs)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
        for r in runs:
            x = r.row
            rows.append({"dataset": name, "features": "pixels" if x["backbone"] == "pixels" else "resnet18-random",
                         "head": x["head"], "scaler": scaler, "shots": x["shots"], "seed": x["seed"],
                         "val_auroc": x["val_auroc"], "test_auroc": x["auroc"], "degenerate": x["degenerate"],
                         "n_val": x["n_val"], "n_test": x["n_test"]})
    return pd.DataFrame(rows)


def _cell(g: pd.DataFrame) -> str:
    return f"{g['val_auroc'].mean():.3f} / {g['test_auroc'].mean():.3f}"


def markdown(df: pd.DataFrame, command: str, seconds: float) -> str:
    lines = ["# heads.scaler: pool vs kshot vs center vs none", "",
             f"Command: `{command}` ({seconds:.0f} s on the shared 2-core CPU, no GPU).", "",
             "Cells: mean val AUROC / mean test AUROC over seeds (and over k in the summary); `degen` = runs flagged",
             "degenerate (mostly tied scores or one class for >= 95% of images). Features: `pixels` = decoded 28x28",
             "grayscale pixels (784-d); `resnet18-random` = ResNet18 with seeded **random** weights (512-d) - no",
             "pretrained weights are available offline here, so these are not pretrained-embedding accuracies.", "",
             "Figure 1 (`figure1`): 55 images; 'covid' = finding COVID-19, 'other' = every other row *including",
             "empty findings* (unlabelled in the source), so 'other' is partly unknown; the test split has only a",
             "dozen images and k is capped at what the train split holds: its numbers are very noisy and only say",
             "whether a scaler breaks at tiny k, not which is more accurate.", ""]
    heads = sorted(df["head"].unique())
    lines += ["## Summary (mean over k and seeds)", "",
              "| dataset | features | head | " + " | ".join(SCALERS) + " | degen (" + "/".join(SCALERS) + ") |",
              "|---|---|---|" + "---|" * (len(SCALERS) + 1)]
    for (ds, feat, head), g in df.groupby(["dataset", "features", "head"], sort=True):
        cells = [_cell(g[g["scaler"] == s]) for s in SCALERS]
        degen = "/".join(str(int(g[g["scaler"] == s]["degenerate"].sum())) for s in SCALERS)
        lines.append(f"| {ds} | {feat} | {head} | " + " | ".join(cells) + f" | {degen} |")
    lines += ["", "## All heads pooled, per k", "", "| dataset | features | k | " + " | ".join(SCALERS) + " |",
              "|---|---|---|" + "---|" * len(SCALERS)]
    for (ds, feat, k), g in df.groupby(["dataset", "features", "shots"], sort=True):
        lines.append(f"| {ds} | {feat} | {k} | " + " | ".join(_cell(g[g["scaler"] == s]) for s in SCALERS) + " |")
    lines += ["", "## Per head and k (test AUROC)", "", "| dataset | features | head | k | " + " | ".join(SCALERS) + " |",
              "|---|---|---|---|" + "---|" * len(SCALERS)]
    for (ds, feat, head, k), g in df.groupby(["dataset", "features", "head", "shots"], sort=True):
        lines.append(f"| {ds} | {feat} | {head} | {k} | "
                     + " | ".join(f"{g[g['scaler'] == s]['test_auroc'].mean():.3f}" for s in SCALERS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--heads", nargs="+", default=["svc", "logistic", "prototype", "mlp"])
    ap.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "figure1"])
    args = ap.parse_args(argv)
    os.environ.setdefault("FEATPIPE_OFFLINE", "1")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featpipe-bench-scaler-") as tmp:
        df = pd.concat([run_dataset(n, Path(tmp), seeds=args.seeds, heads=args.heads) for n in args.datasets],
                       ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "scaler.csv", index=False, float_format="%.5g")
    command = "python benchmarks/bench_scaler.py " + " ".join(sys.argv[1:])
    text = markdown(df, command.strip(), time.perf_counter() - t0)
    (out / "scaler.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
