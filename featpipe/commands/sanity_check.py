"""``featpipe sanity-check``: Adebayo et al. (2018) model-randomisation check of a model's Grad-CAM maps."""

from __future__ import annotations

from featpipe.errors import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="FILE",
                        help="saved head (.skops) or fine-tuned model (.safetensors); repeatable "
                             "(default: every model in params gradcam.runs)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--images", nargs="+", metavar="IMAGE", help="check on these image files")
    src.add_argument("--from-test", type=int, metavar="N", dest="from_test",
                     help="N test images per outcome (default: gradcam.per_outcome)")
    parser.add_argument("--manifest", default="data/manifest.csv", metavar="FILE")
    parser.add_argument("--splits", default="data/splits.json", metavar="FILE")
    parser.add_argument("--cache", default="cache", metavar="DIR")
    parser.add_argument("--out", default="reports/gradcam", metavar="DIR",
                        help="the verdict is written to <out>/<run>/sanity.json")
    parser.add_argument("--layer", default=None, metavar="MODULE", help="Grad-CAM layer (default: registered)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a model fails the check")


def run(args, params) -> int:
    from featpipe.explain.run import sanity_model

    g = params.gradcam
    models = list(args.model) or list(g.runs)
    if not models:
        raise ConfigError("no model to check: pass --model FILE or list model files in params gradcam.runs")
    per = args.from_test if args.from_test is not None else g.per_outcome
    failed = 0
    for path in models:
        run_name, result = sanity_model(path, out_dir=args.out, manifest=args.manifest, splits=args.splits,
                                        cache_dir=args.cache, images=args.images, per_outcome=per, seed=g.seed,
                                        layer=args.layer or g.layer, layers=g.sanity_layers,
                                        threshold=g.sanity_threshold)
        failed += not result.passed
        print(f"{run_name}: {result.summary()}")
    return 1 if (failed and args.strict) else 0
