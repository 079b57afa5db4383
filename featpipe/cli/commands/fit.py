"""featpipe fit: one head at k shots on every seed; prints the summary table across seeds (``--verbose``: mean, std,
95% CI, min, max and spread of every metric)."""

from __future__ import annotations

from featpipe.cli.output import print_summary
from featpipe.heads.registry import names as _head_names
from featpipe.results.stages import bootstrap_table, fit, per_class_results
from featpipe.results.summary import degenerate_lines, split_note

HEAD_CHOICES = tuple(_head_names())  # the head registry


def add_arguments(parser, *, head_flag: bool = True) -> None:
    if head_flag:
        parser.add_argument("--head", required=True, help=f"head to fit ({', '.join(HEAD_CHOICES)})")
    parser.add_argument("--shots", type=int, required=True, metavar="K", help="labelled images per class")
    parser.add_argument("--backbone", default=None, help="backbone whose cached features to use (default: first of extract.backbones)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="k-shot seeds (default: fit.seeds, else all in the splits file)")
    parser.add_argument("--layer", default=None, help="cut point of the cache to use (default: extract.layer)")
    parser.add_argument("--weights", default=None, help="weights of the cache to use (default: extract.weights)")
    parser.add_argument("--splits", default="data/splits.json", help="splits file (default: data/splits.json)")
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest, for patient ids in --bootstrap-seed (default: data/manifest.csv)")
    parser.add_argument("--cache-dir", default="cache", help="feature cache folder (default: cache)")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--models", default="models", help="folder for saved heads (default: models)")
    parser.add_argument("--n-jobs", type=int, default=None, help="parallel runs (default: fit.n_jobs)")
    parser.add_argument("--bootstrap-seed", type=int, default=None, metavar="SEED",
                        help="also print patient-level bootstrap 95%% intervals for the run of this seed")


def run(args, params, head: str | None = None) -> int:
    head = head or args.head
    runs, summary = fit(args.splits, head=head, shots=args.shots, seeds=args.seeds, params=params,
                        backbone=args.backbone, cache_dir=args.cache_dir, results_dir=args.results,
                        models_dir=args.models, layer=args.layer, weights=args.weights, n_jobs=args.n_jobs)
    print_summary(summary, params=params, verbose=args.verbose, per_class=per_class_results(runs, params=params))
    print_notes(runs, args.results)
    print(f"wrote {len(runs)} rows to {args.results}/runs.csv and {args.results}/metrics.json"
          + (f"; heads in {args.models}/" if params.fit.save_models else ""))
    if args.bootstrap_seed is not None:
        print(bootstrap_table(runs, seed=args.bootstrap_seed, manifest_path=args.manifest, n_boot=params.fit.bootstrap))
    return 0


def print_table(text: str) -> None:
    """Print a table, or nothing when it is empty (no line of its own)."""
    if text:
        print(text)


def print_notes(runs, results_dir) -> None:
    """Degenerate-run warnings and the line on rows of another split set aside (shared by fit and sweep)."""
    for line in degenerate_lines([r.row for r in runs]):
        print(line)
    if runs:
        note = split_note(results_dir, runs[0].row["split_sha256"])
        if note:
            print(f"note: {note}")
