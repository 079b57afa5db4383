"""Benchmark: small fits as a user runs them (``featpipe fit --head H --shots K``, 10 seeds, one backbone), with the
local engine's default (a grid estimated under ``engine.pool_min_seconds`` of work runs in the command's own
process) against always starting ``fit.n_jobs`` = 2 worker processes (``-S engine.pool_min_seconds=0``, what
every sweep did before). Each command is a fresh process (imports and worker start-up included, as at the
prompt); the two settings alternate, ``--rounds`` times, on the synthetic caches of ``bench_sweep.py``. Prints a
table and writes it to ``benchmarks/results/small_fit.md`` (``--md``). Also checks that both settings wrote the
same ``runs.csv`` (all columns but the model paths).

    python benchmarks/bench_small_fit.py [--rounds 3] [--out DIR] [--md FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [("svc", 10), ("logistic", 10), ("mlp", 10), ("svc", 200), ("mlp", 200), ("prototype", 200)]
SETTINGS = {"default": [], "always workers": ["-S", "engine.pool_min_seconds=0"]}


def run(root: Path, head: str, k: int, extra: list[str], tag: str) -> tuple[float, float]:
    res = root / f"results-{head}-{k}-{tag}"
    cmd = [sys.executable, "-m", "featpipe", "fit", "--head", head, "--shots", str(k), "--backbone", "densenet161",
           "--results", str(res), "--models", str(root / f"models-{tag}"), *extra]
    t0, c0 = time.perf_counter(), os.times()
    subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c1 = os.times()
    return time.perf_counter() - t0, (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--md", default=str(HERE / "results" / "small_fit.md"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    import bench_sweep
    import pandas as pd

    root = Path(args.out or tempfile.mkdtemp(prefix="bench-small-fit-"))
    root.mkdir(parents=True, exist_ok=True)
    bench_sweep.make_data(root)
    times = {(c, s): [] for c in CASES for s in SETTINGS}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for head, k in CASES:
            order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
            for s in order:
                times[((head, k), s)].append(run(root, head, k, SETTINGS[s], f"{s.replace(' ', '_')}-{r}"))
    load.append(os.getloadavg()[0])
    lines = ["| command (10 seeds, densenet161-size caches) | default: wall / CPU | always 2 workers: wall / CPU | "
             "wall ratio | same runs.csv |", "|---|---:|---:|---:|---|"]
    for head, k in CASES:
        d = times[((head, k), "default")]
        w = times[((head, k), "always workers")]
        wd, ww = statistics.median(t for t, _ in d), statistics.median(t for t, _ in w)
        cd, cw = statistics.median(c for _, c in d), statistics.median(c for _, c in w)
        a = pd.read_csv(root / f"results-{head}-{k}-default-0" / "runs.csv").drop(columns="model_path")
        b = pd.read_csv(root / f"results-{head}-{k}-always_workers-0" / "runs.csv").drop(columns="model_path")
        same = a.equals(b)
        lines.append(f"| `featpipe fit --head {head} --shots {k}` | {wd:.2f} s / {cd:.2f} s | {ww:.2f} s / {cw:.2f} s | "
                     f"{ww / wd:.2f}x | {'yes' if same else 'NO'} |")
    text = "\n".join(lines)
    head = (f"Medians of {args.rounds} alternating rounds, each command a fresh process (`python -m featpipe fit ...`), "
            f"{os.cpu_count()} CPUs, load average {load[0]:.1f} before, {load[1]:.1f} after. CPU = user + system of "
            "the command and its worker processes.\n\n    python benchmarks/bench_small_fit.py --rounds "
            f"{args.rounds}\n\n")
    print(head + text)
    Path(args.md).write_text("# Small fits: the command's own process against two worker processes\n\n" + head + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
