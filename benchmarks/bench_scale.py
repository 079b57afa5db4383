"""How cost grows toward CheXpert's 224,316 images: wall time and peak memory of every stage on synthetic sets.

    python benchmarks/bench_scale.py                          # 10,000 and 100,000 images + the CheXpert-size sweep
    python benchmarks/bench_scale.py --sizes 2000 20000 --out /tmp/scale.md
    python benchmarks/bench_scale.py --sizes 10000 30000 --chexpert-runs 0   # without the CheXpert-size sweep

For each size N: a MedMNIST-layout npz of N grey 32 x 32 images (2 classes, 80/10/10 train/val/test, one image per
patient), then the stages as ``dvc repro`` runs them, each in its own process (``featpipe prepare`` with its first
pass, ``decode``, ``extract`` with ``tiny_cnn``, ``sweep`` (logistic + prototype, k = 1, 5, 20, 3 seeds), ``compare``,
``report``), timed and measured (peak RSS of the stage's process, from ``wait4``). The fitted growth between the two
sizes (time and memory per image) is projected to 224,316 images (CheXpert). Sizes of the files each stage writes
(caches, predictions) are listed, since a sweep writes one prediction per test image per run. CPU seconds (user +
system of the stage's process and its children) are given beside wall time: the machine may be shared.

Then a sweep on synthetic features of CheXpert's size (224,316 rows of 512 dims, 80/10/10 train/val/test, one
run per (head, k, seed) of logistic + prototype, k = 5 and 50, two seeds) in its own process: wall, CPU, peak RSS,
the predictions' bytes per run and projected to the default 960-run grid, and the cost of reading them back.
Writes ``benchmarks/results/scale.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHEXPERT = 224_316
STAGES = (
    ("prepare", ["prepare"]),
    ("decode", ["decode", "--no-progress"]),
    ("extract", ["extract", "--no-progress"]),
    ("sweep", ["sweep"]),
    ("compare", ["compare"]),
    ("report", ["report"]),
)


def make_set(folder: Path, n: int) -> Path:
    """N random grey 32 x 32 images, two classes with a faint mean shift, in MedMNIST's npz layout."""
    rng = np.random.default_rng(0)
    parts = {"train": int(n * 0.8), "val": int(n * 0.1)}
    parts["test"] = n - parts["train"] - parts["val"]
    out = {}
    for split, m in parts.items():
        y = (np.arange(m) % 2).astype(np.int64)
        x = rng.integers(0, 200, (m, 32, 32), dtype=np.uint8) + (y[:, None, None] * 40).astype(np.uint8)
        out[f"{split}_images"], out[f"{split}_labels"] = x, y[:, None]
    path = folder / "data" / "scale.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return path


def params(folder: Path, npz: Path) -> None:
    p = {"data": {"name": "scale", "source": "npz", "path": str(npz), "class_names": ["a", "b"]},
         "split": {"seeds": [0, 1, 2], "shots": [1, 5, 20], "min_source_val_per_class": 1},
         "decode": {"workers": 2},
         "extract": {"backbones": ["tiny_cnn"], "batch_size": 256, "device": "cpu"},
         "fit": {"heads": ["logistic", "prototype"], "n_jobs": 2},
         "finetune": {"backbones": []}}
    (folder / "params.yaml").write_text(yaml.safe_dump(p))


def run(folder: Path, argv: list[str], *, code: str | None = None) -> tuple[float, float, int, float]:
    """(seconds, peak RSS in MiB, exit status, CPU seconds) of ``featpipe <argv>`` (or of ``python -c code
    <argv>``) run in ``folder``."""
    env = dict(os.environ, FEATPIPE_OFFLINE="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "featpipe", *argv] if code is None else [sys.executable, "-c", code, *argv]
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
    proc.stderr.close()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        print(f"  {' '.join(cmd[:3])} {' '.join(argv)} exited {rc}: {err[-1] if err else ''}", flush=True)
    return seconds, usage.ru_maxrss / 1024, rc, usage.ru_utime + usage.ru_stime


def sizes_of(folder: Path) -> dict[str, float]:
    out = {}
    for sub in ("cache", "results", "reports", "data"):
        files = [p for p in (folder / sub).rglob("*") if p.is_file()]
        out[sub] = sum(p.stat().st_size for p in files) / 2**20
    return out


def measure(n: int, tmp: Path) -> dict:
    folder = tmp / f"n{n}"
    folder.mkdir()
    _in_child(make_set, folder, n)  # the data in a child: this process stays small (see :func:`_in_child`)
    params(folder, folder / "data" / "scale.npz")
    stages = {}
    for name, argv in STAGES:
        stages[name] = run(folder, argv)
        print(f"N={n:,} {name}: {stages[name][0]:.1f} s wall, {stages[name][3]:.1f} s CPU, {stages[name][1]:.0f} MiB",
              flush=True)
    return {"n": n, "stages": stages, "sizes": sizes_of(folder)}


CHEX_HEADS, CHEX_SHOTS, CHEX_SEEDS, CHEX_DIM = ("logistic", "prototype"), (5, 50), (0, 1), 512
SWEEP = """
import sys
from featpipe.params.config import load_params
from featpipe.results.stages import sweep
sweep("data/splits.json", params=load_params(None, ["fit.n_jobs=2"]), cache_dir="cache", results_dir="results",
      models_dir="models", backbones=["chex"], heads=sys.argv[1].split(","), shots=[int(k) for k in sys.argv[2].split(",")],
      seeds=[int(s) for s in sys.argv[3].split(",")])
"""
READ = """
from featpipe.evaluation.table import read_predictions
df = read_predictions("results")
assert df["run_id"].nunique() > 0
"""


def chexpert_features(folder: Path, n: int = CHEXPERT, dim: int = CHEX_DIM) -> None:
    """A feature cache of ``n`` synthetic embeddings and a splits file (80/10/10, few-shot subsets of every
    (seed, k)), as ``extract`` and ``prepare`` would write them."""
    import json

    import h5py

    rng = np.random.default_rng(0)
    n_train, n_val = int(n * 0.8), int(n * 0.1)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    y = (rng.random(n) < 0.3).astype(np.int64)  # a minority positive class, like most CheXpert findings
    ids = [f"{s}/{i}" for i, s in enumerate(split)]
    path = folder / "cache" / "chexsize" / "chex.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        X = f.create_dataset("features", (n, dim), dtype=np.float32)
        for a in range(0, n, 50_000):
            b = min(n, a + 50_000)
            X[a:b] = (rng.normal(size=(b - a, dim)) + 0.3 * y[a:b, None]).astype(np.float32)
        f["ids"] = np.asarray(ids, dtype=object).astype(h5py.string_dtype("utf-8"))
        f["labels"] = y
        for k, v in {"backbone": "chex", "weights": "default", "weights_id": "synthetic:chex", "layer": "",
                     "preprocess": "{}", "manifest_sha256": "c" * 64, "embedding_dim": dim, "precision": "fp32",
                     "complete": True}.items():
            f.attrs[k] = v
    train = np.asarray(ids)[split == "train"]
    by_class = {c: train[y[split == "train"] == c] for c in (0, 1)}
    fewshot = {}
    for s in CHEX_SEEDS:
        r = np.random.default_rng(1000 + s)
        order = {c: list(r.permutation(v)[: max(CHEX_SHOTS)]) for c, v in by_class.items()}
        fewshot[str(s)] = {str(k): order[0][:k] + order[1][:k] for k in CHEX_SHOTS}
    splits = {"format": 1, "dataset": "chexsize", "classes": ["negative", "positive"], "manifest_sha256": "c" * 64,
              "params": {}, "train": list(train), "val": list(np.asarray(ids)[split == "val"]),
              "test": list(np.asarray(ids)[split == "test"]), "fewshot": fewshot, "capped": {}, "excluded": []}
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "splits.json").write_text(json.dumps(splits))


def chexpert_sweep(tmp: Path, rows: int = CHEXPERT) -> dict:
    """The CheXpert-size sweep: time, CPU, peak RSS, predictions bytes per run, and reading them back."""
    folder = tmp / "chexpert"
    folder.mkdir()
    t = time.perf_counter()
    _in_child(chexpert_features, folder, rows)
    made = time.perf_counter() - t
    grid = [",".join(CHEX_HEADS), ",".join(map(str, CHEX_SHOTS)), ",".join(map(str, CHEX_SEEDS))]
    sweep = run(folder, grid, code=SWEEP)
    n_runs = len(CHEX_HEADS) * len(CHEX_SHOTS) * len(CHEX_SEEDS)
    pred_bytes = sum(p.stat().st_size for p in (folder / "results").rglob("predictions/*") if p.is_file())
    read = run(folder, [], code=READ)
    out = {"rows": rows, "made": made, "sweep": sweep, "read": read, "runs": n_runs, "pred_bytes": pred_bytes,
           "cache_mib": sum(p.stat().st_size for p in (folder / "cache").rglob("*.h5")) / 2**20}
    print(f"CheXpert-size sweep: {n_runs} runs {sweep[0]:.1f} s wall {sweep[3]:.1f} s CPU {sweep[1]:.0f} MiB; "
          f"predictions {pred_bytes / n_runs / 2**20:.2f} MiB per run; read back {read[0]:.1f} s {read[1]:.0f} MiB",
          flush=True)
    return out


def chexpert_lines(c: dict) -> list[str]:
    per_run, n = c["pred_bytes"] / c["runs"], c["rows"]
    sw, rd = c["sweep"], c["read"]
    return ["", f"## A sweep on synthetic features of CheXpert's size ({n:,} rows)", "",
            f"{n:,} synthetic {CHEX_DIM}-d float32 embeddings (feature cache {c['cache_mib']:.0f} MiB, made in "
            f"{c['made']:.0f} s), 80/10/10 train/val/test ({int(n * 0.1):,} val and "
            f"{n - int(n * 0.8) - int(n * 0.1):,} test images per run's predictions); "
            f"{' + '.join(CHEX_HEADS)} x k = {', '.join(map(str, CHEX_SHOTS))} x {len(CHEX_SEEDS)} seeds = "
            f"{c['runs']} runs, `fit.n_jobs=2`, models saved.", "",
            "| | wall | CPU | peak RSS |", "|---|---|---|---|",
            f"| sweep ({c['runs']} runs, one process + 2 workers) | {sw[0]:.1f} s | {sw[3]:.1f} s | {sw[1]:.0f} MiB |",
            f"| read every run's predictions back (`read_predictions`) | {rd[0]:.1f} s | {rd[3]:.1f} s | {rd[1]:.0f} MiB |",
            "", f"Predictions kept: **{per_run / 2**20:.2f} MiB per run** (val + test rows, float64, ids stored once per "
            f"run log); the default 960-run grid would keep **{per_run * 960 / 2**30:.2f} GiB** "
            f"({960 * (n - int(n * 0.8)):,} rows)."]


def _in_child(fn, *args) -> None:
    """``fn(*args)`` in a forked child process. A stage's peak RSS is read from ``wait4``, and Linux carries the
    parent's resident size at fork into the child's high-water mark (kept across exec): data generated in this
    process would become the floor of every stage's peak RSS measured after it."""
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=fn, args=args)
    proc.start()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"{fn.__name__} failed (exit {proc.exitcode})")


def growth(a: dict, b: dict, key: int) -> dict[str, float]:
    """Per-stage slope between two sizes: (value at b - value at a) / (images b - images a)."""
    return {s: (b["stages"][s][key] - a["stages"][s][key]) / (b["n"] - a["n"]) for s in a["stages"]}


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.md")
    ap.add_argument("--chexpert-runs", type=int, default=1, help="0: skip the sweep on CheXpert-size features")
    ap.add_argument("--chexpert-rows", type=int, default=CHEXPERT, help="rows of that sweep's features (a quick check)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        chex = chexpert_sweep(Path(td), a.chexpert_rows) if a.chexpert_runs else None
        runs = [measure(n, Path(td)) for n in sorted(a.sizes)]
    names = [s for s, _ in STAGES]
    lines = [f"# Scale (`python benchmarks/bench_scale.py --sizes {' '.join(map(str, sorted(a.sizes)))}`)", "",
             f"Machine: {os.cpu_count()} cores. Synthetic 32 x 32 grey images (npz), tiny_cnn, sweep of 2 heads x "
             "3 shot counts x 3 seeds; each stage its own process. Wall time / CPU time / peak RSS:", "",
             "| stage | " + " | ".join(f"N = {r['n']:,}" for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for s in names:
        cells = [f"{r['stages'][s][0]:.1f} s / {r['stages'][s][3]:.1f} s / {r['stages'][s][1]:.0f} MiB" + (
                 "" if r["stages"][s][2] == 0 else
                 f" (exit {r['stages'][s][2]})") for r in runs]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Files written (MiB): " + "; ".join(
        f"N = {r['n']:,}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["sizes"].items()) for r in runs)]
    if len(runs) >= 2:
        lo, hi = runs[0], runs[-1]
        dt, dm, dc = growth(lo, hi, 0), growth(lo, hi, 1), growth(lo, hi, 3)
        lines += ["", f"## Growth between N = {lo['n']:,} and {hi['n']:,}, projected to CheXpert ({CHEXPERT:,})", "",
                  "| stage | ms per image (wall) | ms CPU per image | KiB of peak RSS per image | projected time (wall) | "
                  "projected peak RSS |", "|---|---|---|---|---|---|"]
        for s in names:
            t = hi["stages"][s][0] + dt[s] * (CHEXPERT - hi["n"])
            m = hi["stages"][s][1] + dm[s] * (CHEXPERT - hi["n"])
            lines.append(f"| {s} | {dt[s] * 1e3:.3f} | {dc[s] * 1e3:.3f} | {dm[s] * 1024:.3f} | {t:,.0f} s | {m:,.0f} MiB |")
        lines += ["", "A stage whose memory streams has ~0 KiB per image (flat in N); a positive slope is memory that "
                  "grows with the data set (tables, predictions, the manifest)."]
    if chex is not None:
        lines += chexpert_lines(chex)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return a.out


if __name__ == "__main__":
    main()
