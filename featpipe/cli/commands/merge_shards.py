"""featpipe merge-shards: join the shard files of a --shard i/n extraction into one feature cache."""

from __future__ import annotations

from featpipe.cli.commands.extract import options
from featpipe.features.shards import merge_shards


def add_arguments(parser) -> None:
    parser.add_argument("--backbone", action="append", default=None, metavar="NAME",
                        help="backbone whose shards to merge (repeatable; default: params extract.backbones)")
    parser.add_argument("--weights", default=None, help="the --weights the shards were extracted with")
    parser.add_argument("--layer", default=None, help="the --layer the shards were extracted with")
    parser.add_argument("--manifest", default="data/manifest.csv", help="manifest (default: data/manifest.csv)")
    parser.add_argument("--cache-dir", default="cache", help="cache folder (default: cache)")


def run(args, params) -> int:
    opts = options(args, params)
    for name in args.backbone or params.extract.backbones:
        path = merge_shards(args.manifest, backbone=name, dataset=params.data.name, cache_dir=args.cache_dir, params=opts)
        print(f"{name}: merged shards into {path}")
    return 0
