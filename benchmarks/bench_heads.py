"""Benchmark: CPU time of each head's fit + predict, per shot count, before and after a change, side by side.

The data are ``bench_sweep.py``'s synthetic caches (binary, 2,000 train / 200 val / 624 test images, features
of dims 2208, 2048 and 1152); one run = what ``featpipe.fewshot.fit.fit_run`` computes before recording:
``fit_pipeline`` (the ``pool`` scaler fitted on the train split, then the head with its in-training-set CV)
on the seed's k-shot ids, then ``predict_proba`` on val + test, in one process with BLAS on one thread.

"before" is the ``featpipe`` package of a git revision (``--before``, default the commit this speed work
started from), exported with ``git archive`` and run in a child process; "after" is the working tree, in
another child, alternating backbone by backbone, each measurement repeated (the smallest CPU time is kept: the
machine is shared). Both time the same runs with ``time.process_time`` (CPU seconds: steadier than wall time on a
shared machine) and save their probabilities, so the note also gives the largest difference between the
two versions' probabilities and whether every cross-validated choice (C, gamma) is the same.

    python benchmarks/bench_heads.py [--before REV] [--seeds 2] [--repeats 2] [--out benchmarks/results/heads.md]

The projected sweep time is the per-run CPU time of each (backbone, head, k), times 10 seeds: the fits of
the 960-run default grid in one process, without reading caches or writing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEFORE = "f6b9fdb"  # the commit the head-fitting speed work (issue 22) started from


def child(data_root: Path, out: Path, seeds: int, backbone: str) -> None:
    """Time every (backbone, head, k, seed) run with the ``featpipe`` first on ``sys.path``; write json + npz."""
    import h5py
    from sklearn.preprocessing import StandardScaler

    import featpipe
    from featpipe.heads.base import one_blas_thread
    from featpipe.heads.registry import make_head
    from featpipe.heads.scaling import fit_pipeline
    from featpipe.params.config import load_params

    sys.path.insert(0, str(HERE))
    from bench_sweep import HEADS, SHOTS

    splits = json.loads((data_root / "data/splits.json").read_text())
    params = load_params(None, [])
    cpu, probas, chosen = {}, {}, {}
    b = backbone
    with h5py.File(data_root / "cache/bench" / f"{b}.h5") as f:
        ids = [i.decode() if isinstance(i, bytes) else i for i in f["ids"][:]]
        X, y = f["features"][:], f["labels"][:]
    row = {k: i for i, k in enumerate(ids)}

    def rows(names):
        return np.array([row[k] for k in names])

    pool = StandardScaler().fit(X[rows(splits["train"])].astype(np.float64))
    evaluate = rows(splits["val"] + splits["test"])
    for h in HEADS:
        for i, k in enumerate([SHOTS[0], *SHOTS]):  # the first run is a warm-up (lazy imports), not timed
            warm = i == 0
            total = 0.0
            for s in range(1 if warm else seeds):
                tr = rows(splits["fewshot"][str(s)][str(k)])
                with one_blas_thread():
                    t = time.process_time()
                    model = fit_pipeline(make_head(h, params.heads, seed=s), X[tr], y[tr], kind="pool",
                                         pool=lambda center: pool)
                    p = model.predict_proba(X[evaluate])
                    total += time.process_time() - t
                if not warm:
                    probas[f"{b}/{h}/{k}/{s}"] = p
                    chosen[f"{b}/{h}/{k}/{s}"] = getattr(model[-1], "best_params_", {})
            if not warm:
                cpu[(b, h, k)] = total / seeds
    out.with_suffix(".json").write_text(json.dumps({"featpipe": featpipe.__file__, "chosen": chosen,
                                                    "cpu": [[*key, v] for key, v in cpu.items()]}))
    np.savez(out.with_suffix(".npz"), **{k.replace("/", "|"): v for k, v in probas.items()})


def run_child(tree: Path, data_root: Path, out: Path, seeds: int, backbone: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, __file__, "--child", str(data_root), "--child-out", str(out),
                    "--seeds", str(seeds), "--backbone", backbone], env=env, check=True)
    res = json.loads(out.with_suffix(".json").read_text())
    with np.load(out.with_suffix(".npz")) as z:
        res["proba"] = {k.replace("|", "/"): z[k] for k in z.files}
    res["cpu"] = {(b, h, int(k)): v for b, h, k, v in res["cpu"]}
    return res


def measure(trees: dict, data_root: Path, seeds: int, repeats: int) -> dict:
    """Every tree on every backbone, alternating trees backbone by backbone (a change of the machine's load
    hits both), ``repeats`` times; per (backbone, head, k) the smallest CPU time of the repeats."""
    sys.path.insert(0, str(HERE))
    from bench_sweep import DIMS

    res = {name: {"cpu": {}, "proba": {}, "chosen": {}, "featpipe": ""} for name in trees}
    for rep in range(repeats):
        for b in DIMS:
            for name, tree in trees.items():
                r = run_child(tree, data_root, data_root / f"{name}_{b}_{rep}", seeds, b)
                acc = res[name]
                acc["featpipe"] = r["featpipe"]
                acc["proba"].update(r["proba"])
                acc["chosen"].update(r["chosen"])
                for key, v in r["cpu"].items():
                    acc["cpu"][key] = min(v, acc["cpu"].get(key, np.inf))
    return res


def report(before: dict, after: dict, *, rev: str, seeds: int, repeats: int, command: str) -> str:
    sys.path.insert(0, str(HERE))
    from bench_sweep import DIMS, HEADS, SEEDS, SHOTS

    lines = ["# Head fits: CPU time before / after, side by side", "", "Command (one run):", "", f"    {command}", "",
             (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average at start "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine); one process, BLAS on one thread; "
             f"CPU seconds (`time.process_time`) per run, mean of {seeds} seeds, the smallest of {repeats} "
             "measurements (before and after alternate backbone by backbone, in separate processes). "
             f"before = `featpipe` of git revision `{rev}`, after = the working tree; same data "
             "(bench_sweep.py's synthetic caches: "
             "2,000 train / 200 val / 624 test, binary), one run = `fit_pipeline` (pool scaler, in-training-set CV) "
             "+ `predict_proba` on the 824 val + test images."), ""]
    shots_hdr = " | ".join(f"k={k}" for k in SHOTS)
    for b, d in DIMS.items():
        lines += [f"## {b} ({d}-d): CPU ms per run, before -> after", "", f"| head | {shots_hdr} | sum |",
                  "|---|" + "---:|" * (len(SHOTS) + 1)]
        for h in HEADS:
            cells = [f"{1e3 * before['cpu'][(b, h, k)]:.0f} -> {1e3 * after['cpu'][(b, h, k)]:.0f}" for k in SHOTS]
            sb = sum(before["cpu"][(b, h, k)] for k in SHOTS)
            sa = sum(after["cpu"][(b, h, k)] for k in SHOTS)
            lines.append(f"| {h} | " + " | ".join(cells) + f" | {1e3 * sb:.0f} -> {1e3 * sa:.0f} |")
        lines.append("")
    lines += ["## Projected fits of the 960-run default grid (3 backbones x 4 heads x 8 k x 10 seeds, one process)",
              "", "| head | before (CPU s) | after (CPU s) | speed-up |", "|---|---:|---:|---:|"]
    tb = ta = 0.0
    for h in HEADS:
        sb = sum(v for (b, hh, k), v in before["cpu"].items() if hh == h) * len(SEEDS)
        sa = sum(v for (b, hh, k), v in after["cpu"].items() if hh == h) * len(SEEDS)
        tb, ta = tb + sb, ta + sa
        lines.append(f"| {h} | {sb:.1f} | {sa:.1f} | {sb / sa:.1f}x |")
    lines += [f"| **all** | **{tb:.1f}** | **{ta:.1f}** | **{tb / ta:.1f}x** |", ""]
    diffs = {h: max(float(np.abs(before["proba"][k] - after["proba"][k]).max())
                    for k in after["proba"] if k.split("/")[1] == h) for h in HEADS}
    same = [k for k in after["chosen"] if after["chosen"][k] == before["chosen"][k]]
    lines += ["## Same answers", "",
              f"Cross-validated choices (C, gamma) identical in {len(same)} of {len(after['chosen'])} runs.", "",
              "| head | largest |p_after - p_before| over all runs and images |", "|---|---:|"]
    lines += [f"| {h} | {diffs[h]:.1e} |" for h in HEADS]
    differ = sorted(set(after["chosen"]) - set(same))
    if differ:
        lines += ["", "Runs whose choice differs: " + ", ".join(f"{k} ({before['chosen'][k]} -> {after['chosen'][k]})"
                                                          for k in differ)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default=BEFORE, help="git revision whose featpipe is 'before'")
    ap.add_argument("--seeds", type=int, default=2, help="seeds timed per (backbone, head, k)")
    ap.add_argument("--repeats", type=int, default=2, help="measurements per cell; the smallest CPU time is kept")
    ap.add_argument("--out", default=str(HERE / "results/heads.md"))
    ap.add_argument("--backbone", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(Path(args.child), Path(args.child_out), args.seeds, args.backbone)
        return 0
    sys.path.insert(0, str(HERE))
    from bench_sweep import make_data

    with tempfile.TemporaryDirectory(prefix="bench-heads-") as tmp:
        tmp = Path(tmp)
        make_data(tmp)
        old = tmp / "before"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "featpipe"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        t = time.perf_counter()
        res = measure({"before": old, "after": ROOT}, tmp, args.seeds, args.repeats)
        before, after = res["before"], res["after"]
        print(f"both measured in {time.perf_counter() - t:.0f} s wall")
    assert before["featpipe"].startswith(str(old)) and after["featpipe"].startswith(str(ROOT)), "wrong featpipe"
    command = "python benchmarks/bench_heads.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    text = report(before, after, rev=args.before, seeds=args.seeds, repeats=args.repeats, command=command)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
