"""Where a sweep's CPU goes, per phase and head: the benchmark grid of ``bench_sweep.py`` (3 backbones x 4 heads x 8
shot counts, the seeds given) run in this one process (``fit.n_jobs=1``), with the process CPU time of each phase
summed: a run's fit (scaler + head), its scoring of val + test, its record (metrics, curves, predictions frame), the
saved head, the parent's journal write, and the final table + ``metrics.json``; then whole runs by head and shots. Run it from two checkouts to compare
code versions phase by phase (the numbers are CPU seconds, so a busy machine moves them less than wall time).

    python benchmarks/sweep_phases.py --seeds 0 1 [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default=None, help="working folder (default: a temporary one; emptied first)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_sweep as b

    import featpipe.evaluation.table as table
    import featpipe.fewshot.fit as fit
    import featpipe.heads.io as hio
    import featpipe.results.stages as stages
    from featpipe.params.config import load_params

    hio.skops_io()  # imported before the clock starts (a worker imports it once)
    cpu, count, head = collections.defaultdict(float), collections.Counter(), {"now": "-"}
    per_k = collections.defaultdict(float)  # (head, shots) -> CPU seconds of whole runs

    def timed(owner, name: str, label: str, per_head: bool = True) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def wrapper(*a, **k):
            if name == "fit_run":
                head["now"] = k["head"]
            t = time.process_time()
            try:
                return f(*a, **k)
            finally:
                key = (label, head["now"] if per_head else "-")
                cpu[key] += time.process_time() - t
                count[key] += 1
                if name == "fit_run":
                    per_k[(k["head"], k["shots"])] += time.process_time() - t

        setattr(owner, name, wrapper)

    for name, label in [("fit_run", "run (all)"), ("fit_pipeline", "fit"), ("_scores", "score"),
                        ("record_run", "record"), ("save_head", "save")]:
        timed(fit, name, label)
    timed(table.RunJournal, "add", "journal", per_head=False)
    timed(stages, "finish", "table + metrics.json", per_head=False)
    root = Path(args.out or tempfile.mkdtemp(prefix="sweep-phases-"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    b.make_data(root)
    params = load_params(None, ["fit.n_jobs=1"])
    t, w = time.process_time(), time.perf_counter()
    runs = stages.sweep(root / "data/splits.json", params=params, cache_dir=root / "cache", results_dir=root / "results",
                        models_dir=root / "models", backbones=list(b.DIMS), heads=list(b.HEADS), shots=list(b.SHOTS),
                        seeds=args.seeds)
    total = time.process_time() - t
    print(f"{len(runs)} runs: {total:.2f} s CPU ({time.perf_counter() - w:.2f} s wall), "
          f"{total / len(runs) * 1e3:.1f} ms per run")
    for key in sorted(cpu, key=lambda k: -cpu[k]):
        print(f"{key[0]:<22}{key[1]:<10}{cpu[key]:7.2f} s  {count[key]:>5} x {cpu[key] / count[key] * 1e3:8.2f} ms")
    heads, shots = list(b.HEADS), list(b.SHOTS)
    per_cell = len(b.DIMS) * len(args.seeds)
    print("\nCPU ms per whole run (fit, score, record, save), by head and shots:")
    print(f"{'shots':<7}" + "".join(f"{h:>11}" for h in heads))
    for k in shots:
        print(f"{k:<7}" + "".join(f"{per_k[(h, k)] / per_cell * 1e3:11.1f}" for h in heads))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
