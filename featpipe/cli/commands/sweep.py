"""featpipe sweep: backbones x heads x shots x seeds (from params.yaml's fit section) in parallel."""

from __future__ import annotations

import time

from featpipe.cli import executor
from featpipe.cli.commands.fit import print_notes
from featpipe.cli.output import print_summary
from featpipe.results.stages import per_class_results, summarize_results, sweep


def add_arguments(parser) -> None:
    parser.add_argument("--splits", default="data/splits.json", help="splits file (default: data/splits.json)")
    parser.add_argument("--cache-dir", default="cache", help="feature cache folder (default: cache)")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--models", default="models", help="folder for saved heads (default: models)")
    parser.add_argument("--heads", nargs="+", default=None, help="heads (default: fit.heads)")
    parser.add_argument("--backbones", nargs="+", default=None, help="backbones (default: fit.backbones, else extract.backbones)")
    parser.add_argument("--n-jobs", type=int, default=None, help="parallel runs of the local engine (default: fit.n_jobs)")
    parser.add_argument("--text-only", action="store_true",
                        help="only the backbones with a text tower (the text-initialised head's DVC stage); none: "
                             "write <results>/TEXT.txt saying why")
    executor.add_argument(parser)


def run(args, params) -> int:
    t0 = time.perf_counter()
    workers = params.fit.n_jobs if args.n_jobs is None else args.n_jobs
    with executor.from_args(args, params, workers=workers) as engine:
        runs = sweep(args.splits, params=params, cache_dir=args.cache_dir, results_dir=args.results,
                     models_dir=args.models, backbones=args.backbones, heads=args.heads, engine=engine,
                     text_only=args.text_only)
    if not runs and args.text_only:
        print(f"no runs (no backbone with a text tower); wrote {args.results}/TEXT.txt")
        return 0
    print_summary(summarize_results(runs, params=params), params=params, verbose=args.verbose,
                  per_class=per_class_results(runs, params=params))
    print_notes(runs, args.results)
    print(f"{len(runs)} runs in {time.perf_counter() - t0:.1f} s; wrote {args.results}/runs.csv and {args.results}/metrics.json")
    return 0
