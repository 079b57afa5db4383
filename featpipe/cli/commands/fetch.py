"""featpipe fetch: make the data source available and write its fingerprint (what prepare depends on)."""

from __future__ import annotations
from featpipe.data.fetch import write_fingerprint


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="data/source.json", help="fingerprint file (default: data/source.json)")


def run(args, params) -> int:
    fp = write_fingerprint(params.data, args.out)
    print(f"{fp['source']} source {fp['path']}: {fp['files']} files, fingerprint {fp['sha256'][:12]}")
    return 0
