"""featpipe prepare: manifest, rejects, duplicates and splits from the configured data source; with
``--external NAME`` the manifest of an external test set (``evaluate.external``) in data/external/NAME/."""

from __future__ import annotations

from featpipe.backbones.modelinput import first_pass
from featpipe.data.external import EXTERNAL_DIR, external_params, prepare_external
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
    parser.add_argument("--external", default=None, metavar="NAME",
                        help="prepare the external test set NAME of evaluate.external instead (reads the study's "
                             "--manifest and --splits; writes data/external/NAME/, decoded caches in cache/NAME/)")
    parser.add_argument("--external-dir", default=str(EXTERNAL_DIR), help="where external sets go (default: data/external)")


def run(args, params) -> int:
    if args.external:
        ep = external_params(params, args.external)
        decode = None if args.no_cache else first_pass(ep, cache_dir=args.cache_dir, progress=not args.no_progress)
        summary = prepare_external(params, args.external, splits_path=args.splits, study_manifest=args.manifest,
                                   out_base=args.external_dir, decode=decode)
    else:
        decode = None if args.no_cache else first_pass(params, cache_dir=args.cache_dir, progress=not args.no_progress)
        summary = prepare(params, manifest_path=args.manifest, splits_path=args.splits, rejects_path=args.rejects,
                          duplicates_path=args.duplicates, decode=decode)
    for line in summary.lines():
        print(line)
    return 0
