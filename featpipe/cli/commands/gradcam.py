"""``featpipe gradcam``: Grad-CAM heat maps of saved models, under ``reports/gradcam/<run>/``."""

from __future__ import annotations

import sys

from featpipe.core.errors import ConfigError
from featpipe.decoded.cache import DecodeOptions
from featpipe.explain.run import empty_branches, explain_model, resolve_models


def add_model_arguments(parser, *, out_help: str) -> None:
    """Flags shared by ``gradcam`` and ``sanity-check``: which models, which images, where things are."""
    parser.add_argument("--model", action="append", default=[], metavar="FILE",
                        help="saved head (.skops) or fine-tuned model (.safetensors); repeatable "
                             "(default: every model in params gradcam.runs)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--images", nargs="+", metavar="IMAGE", help="use these image files (no labels)")
    src.add_argument("--from-test", type=int, metavar="N", dest="from_test",
                     help="N test images per outcome (TP, TN, FP, FN; or correct/incorrect per class) "
                          "(default: gradcam.per_outcome)")
    parser.add_argument("--manifest", default="data/manifest.csv", metavar="FILE")
    parser.add_argument("--splits", default="data/splits.json", metavar="FILE")
    parser.add_argument("--cache", default="cache", metavar="DIR", help="where the decoded-image cache is")
    parser.add_argument("--out", default="reports/gradcam", metavar="DIR", help=out_help)
    parser.add_argument("--models", default="models", metavar="DIR", help="where gradcam.runs names are looked up")
    parser.add_argument("--layer", default=None, metavar="MODULE",
                        help="module of the backbone to take Grad-CAM at (default: gradcam.layer, else the "
                             "backbone's registered layer)")


def add_arguments(parser) -> None:
    add_model_arguments(parser, out_help="PNGs, grid.png and index under <out>/<run>/")
    parser.add_argument("--allow-empty", action="store_true",
                        help="with no model given and gradcam.runs empty, render nothing and exit 0 (for the pipeline)")


def run(args, params) -> int:
    g = params.gradcam
    models = list(args.model) or resolve_models(g.runs, args.models, skip_branches=empty_branches(params))
    if not models:
        if not args.allow_empty:
            raise ConfigError("no model to explain: pass --model FILE or list model files in params gradcam.runs")
        from pathlib import Path

        Path(args.out).mkdir(parents=True, exist_ok=True)  # an empty, valid output for the pipeline
        why = ("gradcam.runs is empty" if not g.runs else "every gradcam.runs entry is a run of a branch this study "
               "leaves empty")
        print(f"{why}: nothing to render (name runs there, e.g. tiny_cnn-logistic-k20-s0) -> {args.out}")
        return 0
    per = args.from_test if args.from_test is not None else g.per_outcome
    if per < 1:
        raise ConfigError("--from-test must be at least 1")
    for path in models:
        index = explain_model(path, out_dir=args.out, manifest=args.manifest, splits=args.splits,
                              cache_dir=args.cache, images=args.images, per_outcome=per, seed=g.seed,
                              layer=args.layer or g.layer, max_pixels=params.data.max_image_pixels,
                              decode=DecodeOptions.from_params(params, progress=False))
        info = index["info"]
        for r in info.get("rejects", []):
            print(f"featpipe: skipped {r['path']}: {r['reason']}", file=sys.stderr)
        print(f"{index['run']}: {len(index['images'])} images, Grad-CAM at {info['layer']} "
              f"({info['grid'][0]}x{info['grid'][1]} grid) -> {args.out}/{index['run']}/grid.png")
    return 0
