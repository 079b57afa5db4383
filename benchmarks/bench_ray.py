"""The Ray engine's overhead against the local engine on one machine (paired, alternating, one process).

Data: the 3,166 images of ``../shared/data/pneumoniamnist_balanced_28.npz`` (``featpipe prepare`` with
``data.source=npz`` in a temporary folder; the decoded caches are built once before timing, so both
engines read the same decoded cache and the figures are extraction only). Backbones ``tiny_cnn`` (32 px)
and ``resnet18`` (224 px) with random weights (speed only; pretrained weights cannot be downloaded here),
``precision=auto``, batch 32. Sweep: the 4 heads x the splits' shots x seeds on the resnet18 cache.

One local Ray cluster (``ray.init(num_cpus=<cores>)``) is started once and timed on its own; each
repetition then runs local and Ray back to back, the order alternating between repetitions, and the
ratio Ray / local is taken per pair. Ray's figure includes everything a second ``--engine ray`` command
pays on a running cluster (placement probe, actor start, model load per actor, the pipeline).

    python benchmarks/bench_ray.py [--reps 2] [--warmup] [--backbones tiny_cnn resnet18] [--sweep-backbone B]
        [--no-sweep] [--embed-cpus 1] [--decode-cpus 1] [--out benchmarks/results/ray.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT.parent / "shared" / "data" / "pneumoniamnist_balanced_28.npz"


def prepare(work: Path):
    from featpipe.params.config import load_params
    from featpipe.data.prepare import prepare as run_prepare

    params = load_params(None, ["data.name=pmnist", "data.source=npz", f"data.path={NPZ}",
                                "data.class_names=[normal,pneumonia]", "split.seeds=[0,1,2,3,4]",
                                "split.shots=[1,2,5,10,20,50]", "extract.weights=random", "fit.bootstrap=0",
                                "fit.n_jobs=2", "fit.save_models=false"])
    run_prepare(params, manifest_path=work / "manifest.csv", splits_path=work / "splits.json")
    return params


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_sweep(work: Path, params, xp, ep, *, backbone: str, reps: int, warmup: bool) -> tuple:
    """Local (joblib) vs Ray (tasks of the same plan) sweep on one backbone's cache, paired and alternating."""
    from featpipe.params.config import DecodeParams
    from featpipe.features.extract import extract
    from featpipe.fewshot.fit import sweep

    extract(work / "manifest.csv", backbone=backbone, dataset="pmnist", cache_dir=work / "local", params=xp,
            decode=DecodeParams(workers=2), progress=False)
    pairs, runs = [], [0]
    for rep in range(-1 if warmup else 0, reps):
        got = {}
        for eng in ("local", "ray") if rep % 2 == 0 else ("ray", "local"):
            def go(eng=eng):
                out = sweep(work / "splits.json", params=params, cache_dir=work / "local",
                            results_dir=work / f"results-{eng}-{rep}", models_dir=None, backbones=[backbone],
                            engine=ep if eng == "ray" else None)
                runs[0] = len(out)
            got[eng] = timed(go)
        got["identical"] = ((work / f"results-local-{rep}" / "runs.csv").read_bytes()
                            == (work / f"results-ray-{rep}" / "runs.csv").read_bytes())
        if rep >= 0:
            pairs.append(got)
        print(f"sweep rep {rep}: local {got['local']:.1f} s, ray {got['ray']:.1f} s "
              f"(ratio {got['ray'] / got['local']:.2f}, runs.csv identical: {got['identical']})", flush=True)
    return f"sweep ({backbone} cache, 4 heads x 6 shots x 5 seeds)", runs[0], pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--backbones", nargs="+", default=["tiny_cnn", "resnet18"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray.md"))
    ap.add_argument("--embed-cpus", type=float, default=1.0, help="engine.embed_cpus (default 1)")
    ap.add_argument("--decode-cpus", type=float, default=1.0, help="engine.decode_cpus (default 1)")
    ap.add_argument("--no-sweep", action="store_true", help="extraction only")
    ap.add_argument("--sweep-backbone", default=None, help="the cache the sweep fits on (default: the last backbone)")
    ap.add_argument("--warmup", action="store_true", help="one untimed local + ray pair before the timed ones")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import ray

    from featpipe.engine.ray import RayExecutor, RayOptions
    from featpipe.params.config import DecodeParams, ExtractParams
    from featpipe.decoded.build import build_decoded
    from featpipe.decoded.cache import decoded_path
    from featpipe.backbones.registry import get
    from featpipe.data.manifest import load_manifest
    from featpipe.features.extract import extract

    work = Path(tempfile.mkdtemp(prefix="featpipe-bench-ray-"))
    lines, rows = [], []
    try:
        params = prepare(work)
        df, _ = load_manifest(work / "manifest.csv")
        n = len(df)
        cores = os.cpu_count() or 2
        load0 = os.getloadavg()[0]
        t_init = timed(lambda: ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING"))
        ray.data.DataContext.get_current().enable_progress_bars = False
        ep = RayExecutor(RayOptions(embed_cpus=args.embed_cpus, decode_cpus=args.decode_cpus))
        xp = ExtractParams(weights="random", batch_size=32, precision="auto")
        for b in args.backbones:
            form = get(b).preprocess.decoding  # size and resize filter: the decoded cache extraction reads
            for eng in ("local", "ray"):
                build_decoded(df, size=form, path=decoded_path(work / eng, "pmnist", form), workers=2, progress=False)
            pairs = []
            for rep in range(-1 if args.warmup else 0, args.reps):
                order = ("local", "ray") if rep % 2 == 0 else ("ray", "local")
                got = {}
                for eng in order:
                    def go(eng=eng):
                        r = extract(work / "manifest.csv", backbone=b, dataset="pmnist", cache_dir=work / eng,
                                    params=xp, decode=DecodeParams(workers=2), progress=False,
                                    engine=ep if eng == "ray" else None)
                        got[eng + "_precision"] = r.precision
                        r.path.unlink()  # the next run extracts again
                    got[eng] = timed(go)
                if rep >= 0:
                    pairs.append(got)
                print(f"extract {b} rep {rep}: local {got['local']:.1f} s, ray {got['ray']:.1f} s "
                      f"(ratio {got['ray'] / got['local']:.2f})", flush=True)
            rows.append(("extract " + b, n, pairs))
        if not args.no_sweep:
            rows.append(bench_sweep(work, params, xp, ep, backbone=args.sweep_backbone or args.backbones[-1],
                                    reps=args.reps, warmup=args.warmup))
        load1 = os.getloadavg()[0]
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines += ["# Ray engine overhead vs local (one machine)", "",
              f"Command: `python benchmarks/bench_ray.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
              f"Machine: {platform.processor() or platform.machine()}, {cores} cores (shared: load average "
              f"{load0:.1f} at start, {load1:.1f} at end), no GPU. Ray {ray.__version__}, local cluster started "
              f"once with `ray.init(num_cpus={cores})` in {t_init:.1f} s (not in the figures below). Ray engine "
              f"settings: 1 embedding actor x engine.embed_cpus={args.embed_cpus:g} CPU, read tasks "
              f"engine.decode_cpus={args.decode_cpus:g} CPU; sweep tasks 1 CPU each (local sweep: "
              "joblib, fit.n_jobs=2). Local extraction: torch's default threads in the driver + 1 loader thread.",
              "", "| work | items | rep | local s | ray s | ray / local |", "|---|---|---|---|---|---|"]
    for name, items, pairs in rows:
        for i, p in enumerate(pairs):
            lines.append(f"| {name} | {items} | {i} | {p['local']:.1f} | {p['ray']:.1f} | {p['ray'] / p['local']:.2f} |")
        ratios = [p["ray"] / p["local"] for p in pairs]
        lines.append(f"| {name} | {items} | median | | | **{statistics.median(ratios):.2f}** |")
        if "identical" in pairs[0]:
            lines.append(f"\nSweep results tables (runs.csv) byte-identical local vs Ray in every pair: "
                         f"{all(p['identical'] for p in pairs)}.")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
