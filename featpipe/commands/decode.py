"""featpipe decode: build or update the decoded-image cache at each input resolution the pipeline needs."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, action="append", default=None,
                        help="input resolution, e.g. 224 (repeatable; default: the input size of every backbone in "
                             "extract.backbones and finetune.backbones)")
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest to decode (default: data/manifest.csv)")
    parser.add_argument("--cache-dir", default="cache", help="cache folder (default: cache); writes <cache-dir>/<data.name>/decoded-<size>.h5")
    parser.add_argument("--stamp", default=None, metavar="FILE", help="also write a JSON summary of the caches (for DVC)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def needed_sizes(params) -> list[int]:
    from featpipe import backbones

    names = list(params.extract.backbones) + list(params.finetune.backbones)
    return sorted({backbones.get(n).preprocess.input_size for n in names})


def run(args, params) -> int:
    from featpipe.data.manifest import file_sha256, read_manifest
    from featpipe.decoded import build_decoded, build_stats, decoded_path
    from featpipe.errors import ConfigError
    from featpipe.stamps import decoded_stamp, write_stamp

    sizes = args.size or needed_sizes(params)
    if any(s < 1 for s in sizes):
        raise ConfigError(f"--size must be a positive number of pixels, got {sizes}")
    manifest = read_manifest(args.manifest)
    stamps = {}
    for size in sizes:
        path = build_decoded(
            manifest, size=size, path=decoded_path(args.cache_dir, params.data.name, size),
            workers=params.decode.workers, draft=params.decode.draft, progress=not args.no_progress,
            max_pixels=params.data.max_image_pixels, manifest_sha256=file_sha256(args.manifest),
        )
        s = build_stats(path)
        rate = s["decoded"] / s["seconds"] if s["seconds"] > 0 else 0.0
        print(f"{path}: {s['images']} images ({s['channels']} channel{'s' if s['channels'] > 1 else ''}), "
              f"decoded {s['decoded']} new, reused {s['reused']}, {s['seconds']:.1f} s, {rate:.1f} images/s")
        stamps[str(size)] = decoded_stamp(path)
    if args.stamp:
        write_stamp(args.stamp, stamps)
    return 0
