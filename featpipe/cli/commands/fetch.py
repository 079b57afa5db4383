"""featpipe fetch: make the data source available and write its fingerprint (what prepare depends on), and
optionally the stamp of featpipe's own code (what every DVC stage depends on)."""

from __future__ import annotations

from pathlib import Path

from featpipe.core.codestamp import write_code_stamp
from featpipe.data.changes import against_manifest
from featpipe.data.external import external_params
from featpipe.data.fetch import write_fingerprint
from featpipe.data.prepare import load_records


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="data/source.json", help="fingerprint file (default: data/source.json)")
    parser.add_argument("--code-stamp", default=None, metavar="FILE",
                        help="also write featpipe's version and a hash of its sources to FILE (the DVC stages "
                             "depend on it, so a change to the code reruns them)")
    parser.add_argument("--manifest", default="data/manifest.csv",
                        help="the current manifest: say which images were added, removed, changed or relabelled "
                             "since it was written (default: data/manifest.csv)")
    parser.add_argument("--branch-dirs", nargs="*", default=[], metavar="DIR",
                        help="make these folders if missing (the DVC pipeline's results/models folders: a branch "
                             "a study leaves empty, e.g. finetune.backbones: [], is then an empty folder, not a "
                             "missing dependency)")
    parser.add_argument("--external", default=None, metavar="NAME",
                        help="fingerprint the external test set NAME of evaluate.external instead (its CSV and image "
                             "root, folder or npz file) into --out: what 'prepare --external NAME' depends on in dvc.yaml")


def run(args, params) -> int:
    if args.external:
        fp = write_fingerprint(external_params(params, args.external).data, args.out)
        print(f"external set '{args.external}': {fp['source']} source {fp['path']}: {fp['files']} files, "
              f"fingerprint {fp['sha256'][:12]}")
        return 0
    fp = write_fingerprint(params.data, args.out)
    print(f"{fp['source']} source {fp['path']}: {fp['files']} files, fingerprint {fp['sha256'][:12]}")
    changes = against_manifest(load_records(params.data), args.manifest)
    if changes is not None:
        print(changes.line(args.manifest))
    if args.code_stamp:
        stamp = write_code_stamp(args.code_stamp)
        print(f"featpipe {stamp['featpipe_version']}: {stamp['files']} source files, "
              f"sha256 {stamp['sources_sha256'][:12]}")
    for folder in args.branch_dirs:
        Path(folder).mkdir(parents=True, exist_ok=True)
    return 0
