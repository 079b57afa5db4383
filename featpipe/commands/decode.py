"""featpipe decode: build or update the decoded-image cache at one input resolution."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, required=True, help="input resolution, e.g. 224 or 448 (a backbone's input size)")
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest to decode (default: data/manifest.csv)")
    parser.add_argument("--cache-dir", default="cache", help="cache folder (default: cache); writes <cache-dir>/<data.name>/decoded-<size>.h5")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args, params) -> int:
    from featpipe.data.manifest import file_sha256, read_manifest
    from featpipe.decoded import build_decoded, build_stats, decoded_path
    from featpipe.errors import ConfigError

    if args.size < 1:
        raise ConfigError(f"--size must be a positive number of pixels, got {args.size}")
    manifest = read_manifest(args.manifest)
    path = build_decoded(
        manifest, size=args.size, path=decoded_path(args.cache_dir, params.data.name, args.size),
        workers=params.decode.workers, draft=params.decode.draft, progress=not args.no_progress,
        max_pixels=params.data.max_image_pixels, manifest_sha256=file_sha256(args.manifest),
    )
    s = build_stats(path)
    rate = s["decoded"] / s["seconds"] if s["seconds"] > 0 else 0.0
    print(f"{path}: {s['images']} images ({s['channels']} channel{'s' if s['channels'] > 1 else ''}), "
          f"decoded {s['decoded']} new, reused {s['reused']}, {s['seconds']:.1f} s, {rate:.1f} images/s")
    return 0
