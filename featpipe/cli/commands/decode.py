"""featpipe decode: make the decoded-image caches every configured backbone reads current for the manifest."""

from __future__ import annotations

from featpipe.backbones.modelinput import ensure_decoded
from featpipe.backbones.spec import Preprocess
from featpipe.core.errors import ConfigError
from featpipe.core.stamps import decoded_stamp, write_stamp
from featpipe.data.manifest import read_manifest
from featpipe.decoded.cache import DecodeOptions
from featpipe.params.config import configured_backbones


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, action="append", default=None,
                        help="decode size, e.g. 256, resized bilinearly (repeatable; default: the decoded form of every "
                             "backbone in extract.backbones and finetune.backbones, from its preprocessing: its "
                             "resize_size and interpolation)")
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest to decode (default: data/manifest.csv)")
    parser.add_argument("--cache-dir", default="cache",
                        help="cache folder (default: cache); writes <cache-dir>/<data.name>/decoded-<size>.h5 "
                             "(decoded-<size>-<filter>.h5 for a backbone that resizes with another filter than bilinear)")
    parser.add_argument("--stamp", default=None, metavar="FILE", help="also write a JSON summary of the caches (for DVC)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def report_lines(result) -> list[str]:
    out = []
    for form, path in sorted(result.paths.items()):
        s = result.stats[form]
        what = (f"decoded {s['decoded']} new, reused {s['reused']}" if s["rewritten"]
                else "already current (not rewritten)")
        out.append(f"{path}: {s['images']} images ({s['channels']} channel{'s' if s['channels'] > 1 else ''}), "
                   f"{what}")
    rate = result.decoded / result.seconds if result.seconds > 0 else 0.0
    out.append(f"decoded {result.decoded} image(s) once for {len(result.paths)} size(s) in {result.seconds:.1f} s"
               + (f", {rate:.1f} images/s" if result.decoded else ""))
    return out


def run(args, params) -> int:
    if args.size and any(s < 1 for s in args.size):
        raise ConfigError(f"--size must be a positive number of pixels, got {args.size}")
    wanted = ([Preprocess(input_size=s, resize_size=s) for s in args.size] if args.size
              else configured_backbones(params))
    opts = DecodeOptions.from_params(params, progress=not args.no_progress)
    result = ensure_decoded(read_manifest(args.manifest), wanted, cache_dir=args.cache_dir, dataset=params.data.name,
                            options=opts)
    for line in report_lines(result):
        print(line)
    if args.stamp:
        write_stamp(args.stamp, {form.label: decoded_stamp(p) for form, p in sorted(result.paths.items())})
    return 0
