"""featpipe finetune: fine-tune a backbone on the same splits and k-shot subsets as the frozen heads."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from featpipe.cli import executor
from featpipe.core.errors import ConfigError
from featpipe.cli.output import elapsed, print_summary
from featpipe.data.splits import load_splits
from featpipe.finetune.run import Job, Paths, arm_jobs, decode_options, grid, resolve_job, run_jobs
from featpipe.results.stages import per_class_results, summarize_results
from featpipe.results.summary import degenerate_lines, split_note, write_metrics_json


def add_arguments(parser) -> None:
    parser.add_argument("--backbone", help="registered backbone (default: every one in finetune.backbones)")
    parser.add_argument("--strategy", choices=("scratch", "head", "layerwise", "full", "truncated"),
                        help="what trains (default: every one in finetune.strategies)")
    parser.add_argument("--shots", type=int, help="k-shot subset size per class (default: finetune.shots)")
    parser.add_argument("--seed", type=int, help="k-shot draw and training seed (default: finetune.seeds)")
    parser.add_argument("--layer", help="cut point for --strategy truncated (default: finetune.layer)")
    parser.add_argument("--weights", help="pretrained weights (default: finetune.weights; scratch is always random)")
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest (default: data/manifest.csv)")
    parser.add_argument("--splits", default="data/splits.json", help="splits (default: data/splits.json)")
    parser.add_argument("--cache-dir", default="cache", help="cache folder holding decoded-<size>.h5 (default: cache)")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--models", default="models", help="models folder (default: models)")
    parser.add_argument("--arm", action="append", default=None, metavar="NAME",
                        help="run this arm of finetune.arms (its own backbone, strategy and settings); repeatable "
                             "(default without --backbone/--strategy: backbones x strategies and every arm)")
    parser.add_argument("--quiet", action="store_true",
                        help="no per-epoch lines (a line per finished run, with the elapsed time, stays)")
    executor.add_argument(parser)


def run(args, params) -> int:
    p = params.finetune
    if args.layer and args.strategy not in (None, "truncated"):
        raise ConfigError(f"--layer applies to the truncated strategy only, not {args.strategy!r}")
    if args.weights:
        p = replace(p, weights=args.weights)
    if args.layer:
        p = replace(p, layer=args.layer)
    if not p.shots:  # finetune.shots: [] = every subset of the splits file (k shots or split.fractions)
        p = replace(p, shots=tuple(load_splits(args.splits).subset_keys()))
    one = (args.backbone, args.strategy, args.shots, args.seed)
    if args.arm:
        if args.backbone or args.strategy:
            raise ConfigError("--arm names its own backbone and strategy: drop --backbone/--strategy")
        p = replace(p, **{k: (v,) for k, v in zip(("shots", "seeds"), one[2:]) if v is not None})
        jobs = arm_jobs(p, args.arm)
    elif all(v is not None for v in one):
        jobs = [Job(args.backbone, args.strategy, args.shots, args.seed, p.layer if args.strategy == "truncated" else None)]
    else:
        p = replace(p, **{k: (v,) for k, v in zip(("backbones", "strategies", "shots", "seeds"), one) if v is not None})
        jobs = grid(p) + (arm_jobs(p) if args.backbone is None and args.strategy is None else [])
    paths = Paths(Path(args.manifest), Path(args.splits), Path(args.cache_dir), Path(args.results), Path(args.models))
    build = decode_options(params, args.manifest)
    ep = params.engine

    t0, done = time.perf_counter(), []

    def say(job, row):
        done.append(job)
        print(f"[{len(done)}/{len(jobs)} runs, {elapsed(time.perf_counter() - t0)}] "
              f"{resolve_job(job).name(row['dataset'])}: test balanced_accuracy={row['balanced_accuracy']:.3f} "
              f"auroc={row['auroc']:.3f} (best epoch {row['best_epoch']} of {row['epochs_run']})"
              + (f" -> {row['model_path']}" if row.get("model_path") else ""))

    with executor.from_args(args, params) as engine:
        rows = run_jobs(jobs, p, paths, build=build, progress=not args.quiet, engine=engine, on_row=say,
                        cpus=ep.finetune_cpus, gpus=ep.finetune_gpus)
    sha = load_splits(args.splits).sha256
    write_metrics_json(args.results, clinical=params.clinical, split_sha256=sha, select_metric=params.report.metric)
    if rows:  # the summary across seeds of these runs, as fit and sweep print it
        print_summary(summarize_results(rows, params=params), params=params, verbose=args.verbose,
                      per_class=per_class_results(rows, params=params))
    for line in degenerate_lines(rows):
        print(line)
    if split_note(args.results, sha):
        print(f"note: {split_note(args.results, sha)}")
    return 0
