"""featpipe collect: merge per-stage runs.csv files into results/runs.csv and results/metrics.json; prints the
summary table of every configuration of the current split (``--verbose``: each one's full table)."""

from __future__ import annotations

from featpipe.cli.output import print_summary
from featpipe.data.splits import load_splits
from featpipe.results.collect import collect
from featpipe.results.stages import per_class_results, summarize_results
from featpipe.results.summary import degenerate_lines, split_note


def add_arguments(parser) -> None:
    parser.add_argument("sources", nargs="+", help="runs.csv files or folders searched for them")
    parser.add_argument("--out", default="results", help="folder for runs.csv and metrics.json (default: results)")
    parser.add_argument("--splits", default="data/splits.json",
                        help="the current splits file: summaries cover its rows only (default: data/splits.json)")


def run(args, params) -> int:
    sha = load_splits(args.splits).sha256
    table = collect(args.sources, args.out, clinical=params.clinical, split_sha256=sha, select_metric=params.report.metric)
    print(f"{len(table)} runs from {len(args.sources)} source(s) -> {args.out}/runs.csv, {args.out}/metrics.json")
    rows = table[table["split_sha256"] == sha].to_dict("records")
    print_summary(summarize_results(rows, params=params), params=params, verbose=args.verbose,  # = summary.json
                  per_class=per_class_results(rows, params=params))
    n_degen = len(degenerate_lines(rows, limit=10**9))
    if n_degen:
        print(f"warning: {n_degen} degenerate run(s) of the current split (column 'degenerate' in runs.csv); never chosen as best")
    if split_note(args.out, sha):
        print(f"note: {split_note(args.out, sha)}")
    return 0
