"""featpipe zeroshot: zero-shot configurations (shots = 0) of backbones with a text tower (MedSigLIP)."""

from __future__ import annotations

from featpipe.cli.commands.fit import print_notes
from featpipe.cli.output import print_summary
from featpipe.results.stages import summarize_results, zeroshot


def add_arguments(parser) -> None:
    parser.add_argument("--splits", default="data/splits.json", help="splits file (default: data/splits.json)")
    parser.add_argument("--cache-dir", default="cache", help="feature (and text embedding) cache folder")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--backbones", nargs="+", default=None,
                        help="backbones (default: zeroshot.backbones, else extract.backbones with a text tower)")
    parser.add_argument("--prompts", default=None, help="prompts file (default: zeroshot.prompts)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="skip backbones without a text tower instead of failing (the DVC stage)")


def run(args, params) -> int:
    records = zeroshot(args.splits, params=params, cache_dir=args.cache_dir, results_dir=args.results,
                       backbones=args.backbones, prompts=args.prompts, allow_empty=args.allow_empty)
    if not records:
        print(f"no zero-shot runs (no backbone with a text tower); wrote {args.results}/ZEROSHOT.txt")
        return 0
    print_summary(summarize_results(records, params=params), params=params, verbose=args.verbose)
    print_notes(records, args.results)
    print(f"{len(records)} zero-shot runs; wrote {args.results}/runs.csv and {args.results}/metrics.json")
    return 0
