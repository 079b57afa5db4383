"""``featpipe sanity-check``: Adebayo et al. (2018) model-randomisation check of a model's Grad-CAM maps."""

from __future__ import annotations

from featpipe.cli.commands.gradcam import add_model_arguments
from featpipe.core.errors import ConfigError
from featpipe.decoded.cache import DecodeOptions
from featpipe.explain.run import empty_branches, resolve_models, sanity_model


def add_arguments(parser) -> None:
    add_model_arguments(parser, out_help="the verdict is written to <out>/<run>/sanity.json")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a model fails the check")


def run(args, params) -> int:
    g = params.gradcam
    models = list(args.model) or resolve_models(g.runs, args.models, skip_branches=empty_branches(params))
    if not models:
        raise ConfigError("no model to check: pass --model FILE or list model files in params gradcam.runs")
    per = args.from_test if args.from_test is not None else g.per_outcome
    failed = 0
    for path in models:
        run_name, result = sanity_model(path, out_dir=args.out, manifest=args.manifest, splits=args.splits,
                                        cache_dir=args.cache, images=args.images, per_outcome=per, seed=g.seed,
                                        layer=args.layer or g.layer, layers=g.sanity_layers,
                                        threshold=g.sanity_threshold,
                                        decode=DecodeOptions.from_params(params, progress=False))
        failed += not result.passed
        print(f"{run_name}: {result.summary()}")
    return 1 if (failed and args.strict) else 0
