"""featpipe collect: merge per-stage runs.csv files into results/runs.csv and results/metrics.json."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("sources", nargs="+", help="runs.csv files or folders searched for them")
    parser.add_argument("--out", default="results", help="folder for runs.csv and metrics.json (default: results)")


def run(args, params) -> int:
    from featpipe.collect import collect

    table = collect(args.sources, args.out, clinical=params.clinical)
    print(f"{len(table)} runs from {len(args.sources)} source(s) -> {args.out}/runs.csv, {args.out}/metrics.json")
    return 0
