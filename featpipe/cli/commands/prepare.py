"""featpipe prepare: manifest, rejects, duplicates and splits from the configured data source."""

from __future__ import annotations

from featpipe.backbones.modelinput import first_pass
from featpipe.data.prepare import prepare


def add_arguments(parser) -> None:
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest to write (default: data/manifest.csv)")
    parser.add_argument("--splits", default="data/splits.json", help="splits file to write (default: data/splits.json)")
    parser.add_argument("--rejects", default=None, help="rejects report (default: rejects.csv beside the manifest)")
    parser.add_argument("--duplicates", default=None, help="duplicates report (default: duplicates.csv beside the manifest)")
    parser.add_argument("--cache-dir", default="cache",
                        help="where the decoded-image caches go (default: cache): the decode that verifies each image "
                             "also fills <cache-dir>/<data.name>/decoded-<size>.h5 for the configured backbones")
    parser.add_argument("--no-cache", action="store_true", help="verify only; write no decoded-image cache")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args, params) -> int:
    decode = None if args.no_cache else first_pass(params, cache_dir=args.cache_dir, progress=not args.no_progress)
    summary = prepare(params, manifest_path=args.manifest, splits_path=args.splits, rejects_path=args.rejects,
                      duplicates_path=args.duplicates, decode=decode)
    for line in summary.lines():
        print(line)
    return 0
