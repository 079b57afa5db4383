"""featpipe compare: paired comparisons of configurations (by seed, plus a patient bootstrap) -> comparisons.csv;
prints the significant ones (at most 20; ``--verbose``: every comparison)."""

from __future__ import annotations

from featpipe.results.compare import compare, verdict


def add_arguments(parser) -> None:
    parser.add_argument("--results", default="results", help="folder with runs.csv and the predictions (default: results)")
    parser.add_argument("--splits", default="data/splits.json", help="the current splits file (default: data/splits.json)")
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest, for patient ids (default: data/manifest.csv)")
    parser.add_argument("--out", default=None, help="output CSV (default: <results>/comparisons.csv)")


def run(args, params) -> int:
    from pathlib import Path

    table = compare(args.results, splits_path=args.splits, manifest_path=args.manifest, params=params, out=args.out)
    out = args.out or str(Path(args.results) / "comparisons.csv")
    sig = table[table["p_holm"] < 0.05]
    loose = int((table["pairing"] != "seeds").sum()) if "pairing" in table.columns else 0
    print(f"{len(table)} paired comparisons ({table['metric'].nunique()} metric(s), "
          f"{table['shots'].nunique()} shot count(s)) -> {out}; {len(sig)} with Holm p < 0.05")
    if loose:
        print(f"  {loose} of them set zero-shot (k = 0) against trained heads UNPAIRED: its runs are prompt sets, not "
              "seeds (Welch interval, two-sample permutation p; column pairing)")
    blind = table[table["min_p_holm"] >= 0.05]
    if len(blind):
        print(f"  {len(blind)} comparison(s) cannot be significant with their seeds: the smallest attainable Holm p "
              f"(family x 2 / 2^n) is >= 0.05 (column min_p_holm); run more seeds")
    shown = (table if args.verbose else sig).sort_values(["metric", "shots"])  # --verbose: every comparison
    for r in (shown if args.verbose else shown.head(20)).to_dict("records"):
        print(f"  k={r['shots']} {r['metric']}: {r['config_a']} - {r['config_b']} = {r['mean_diff']:+.3f} "
              f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] over {r['n_seeds']} seeds: {verdict(r)}")
    for line in table.attrs.get("notes", []):
        print(f"note: {line}")
    return 0
