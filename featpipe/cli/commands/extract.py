"""featpipe extract: embeddings of every manifest image with a frozen backbone into the HDF5 feature cache."""

from __future__ import annotations

import dataclasses

from featpipe.cli import executor
from featpipe.core.errors import ConfigError
from featpipe.core.stamps import features_stamp, write_stamp
from featpipe.decoded.cache import DecodeOptions
from featpipe.features.extract import extract
from featpipe.features.shards import parse_shard


def add_arguments(parser) -> None:
    parser.add_argument("--backbone", action="append", default=None, metavar="NAME",
                        help="registered backbone (repeatable; default: every backbone in params extract.backbones)")
    parser.add_argument("--weights", default=None, metavar="W",
                        help="default | imagenet | random | a local .pth/.pt/.safetensors file or HF folder | a hub id")
    parser.add_argument("--layer", default=None, help="cut point (truncated network); see 'featpipe backbones'")
    parser.add_argument("--shard", default=None, metavar="i/n", help="extract only slice i of n (0-based) into its own file")
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest (default: data/manifest.csv)")
    parser.add_argument("--cache-dir", default="cache", help="cache folder (default: cache)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: extract.batch_size)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps (default: extract.device)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                        help="auto = bf16 where the hardware supports it (default: extract.precision)")
    parser.add_argument("--stamp", default=None, metavar="FILE",
                        help="also write a JSON summary of the cache's content (for DVC to depend on)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    executor.add_argument(parser)


def options(args, params):
    """``params.extract`` with the flags given on the command line applied."""
    given = {k: getattr(args, k) for k in ("weights", "layer", "batch_size", "device", "precision")
             if getattr(args, k, None) is not None}
    if given.get("batch_size", 1) < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {given['batch_size']}")
    return dataclasses.replace(params.extract, **given)


def run(args, params) -> int:
    opts = options(args, params)
    shard = parse_shard(args.shard)
    stamps = {}
    with executor.from_args(args, params) as engine:
        for name in args.backbone or params.extract.backbones:
            result = extract(args.manifest, backbone=name, dataset=params.data.name, cache_dir=args.cache_dir,
                             params=opts, decode=DecodeOptions.from_params(params), shard=shard,
                             progress=not args.no_progress, engine=engine)
            print(result.summary())
            if args.stamp and shard is None:
                stamps[name] = features_stamp(result.path)
    if args.stamp:
        write_stamp(args.stamp, stamps)
    return 0
