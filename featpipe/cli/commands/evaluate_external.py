"""featpipe evaluate-external: every saved model scored on the external test sets (results/external/<name>/)."""

from __future__ import annotations

from featpipe.core.errors import ConfigError
from featpipe.data.external import EXTERNAL_DIR
from featpipe.evaluation.table import EXTERNAL_RESULTS
from featpipe.saved.external import evaluate_external


def add_arguments(parser) -> None:
    parser.add_argument("--external", action="append", default=[], metavar="NAME",
                        help="an external set of evaluate.external (repeatable; default: every one listed)")
    parser.add_argument("--manifest", default="data/manifest.csv", help="the study's manifest (overlap check)")
    parser.add_argument("--splits", default="data/splits.json")
    parser.add_argument("--runs", default="results/runs.csv", help="the study's results table (its saved models)")
    parser.add_argument("--external-dir", default=str(EXTERNAL_DIR), help="prepared external sets (default: data/external)")
    parser.add_argument("--out", default=str(EXTERNAL_RESULTS), help="results per external set (default: results/external)")
    parser.add_argument("--cache-dir", default="cache",
                        help="decoded-image caches: <cache-dir>/NAME/ as 'prepare --external NAME' filled them are read "
                             "instead of decoding the files again where they match (default: cache)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)


def run(args, params) -> int:
    names = args.external or [e.name for e in params.evaluate.external]
    if not names:
        raise ConfigError("no external set: list one in evaluate.external or pass --external NAME")
    for name in names:
        params.evaluate.external_set(name)  # an unknown name: one line before any work
    for name in names:
        result = evaluate_external(name, splits_path=args.splits, manifest_path=args.manifest, runs_path=args.runs,
                                   out_base=args.out, external_base=args.external_dir, device=args.device,
                                   batch_size=args.batch_size, max_pixels=params.data.max_image_pixels,
                                   cache_dir=args.cache_dir)
        for line in result.lines():
            print(line)
    return 0
