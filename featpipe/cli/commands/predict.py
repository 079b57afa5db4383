"""featpipe predict: class probabilities for images with a saved head (per-image CSV + a summary)."""

from __future__ import annotations

from featpipe.predict import predict


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a saved head (models/<...>.skops, with its .json beside it)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of images")
    parser.add_argument("--out", default="predictions.csv", help="per-image probabilities (default: predictions.csv)")
    parser.add_argument("--device", default="cpu", help="torch device for the backbone (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true", help="no progress lines (one per batch, on stderr)")


def run(args, params) -> int:
    import sys

    def say(line: str) -> None:
        print(f"featpipe: predict: {line}", file=sys.stderr, flush=True)

    result = predict(args.model, args.inputs, out_csv=args.out, device=args.device, batch_size=args.batch_size,
                     max_pixels=params.data.max_image_pixels, progress=None if args.no_progress else say)
    print(result.summary())
    print(f"wrote {args.out}")
    for row in result.rejects.head(10).itertuples():
        print(f"featpipe: skipped {row.path}: {row.reason}", file=sys.stderr)
    if len(result.rejects) > 10:
        print(f"featpipe: ... and {len(result.rejects) - 10} more in {result.rejects_path}", file=sys.stderr)
    return 0
