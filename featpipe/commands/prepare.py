"""featpipe prepare: manifest, rejects, duplicates and splits from the configured data source."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest to write (default: data/manifest.csv)")
    parser.add_argument("--splits", default="data/splits.json", help="splits file to write (default: data/splits.json)")
    parser.add_argument("--rejects", default=None, help="rejects report (default: rejects.csv beside the manifest)")
    parser.add_argument("--duplicates", default=None, help="duplicates report (default: duplicates.csv beside the manifest)")


def run(args, params) -> int:
    from featpipe.data.prepare import prepare

    summary = prepare(params, manifest_path=args.manifest, splits_path=args.splits, rejects_path=args.rejects,
                      duplicates_path=args.duplicates)
    for line in summary.lines():
        print(line)
    return 0
