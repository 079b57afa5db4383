"""featpipe study: run a shipped study preset (studies/<name>.yaml) on your data in its own DVC workspace."""

from __future__ import annotations

from featpipe.cli.demo import dvc
from featpipe.cli.study import describe, presets, setup_study
from featpipe.core.errors import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", help="the preset (featpipe study --list shows them)")
    parser.add_argument("--data", help="your data: an image folder, a CSV, an npz file or CheXpert's folder")
    parser.add_argument("--list", action="store_true", help="list the presets and what each reproduces")
    parser.add_argument("--dir", default=None, help="the study's workspace (default: ./study-<name>)")
    parser.add_argument("--project", default=".", help="the featpipe checkout holding dvc.yaml and studies/ (default: .)")
    parser.add_argument("--smoke", action="store_true",
                        help="the preset's whole graph at test size: tiny backbones of the same families, 2 seeds, "
                             "2 shot counts, 1 epoch")
    parser.add_argument("--setup-only", action="store_true", help="write the workspace, do not run dvc repro")


def run(args, params) -> int:
    if args.list or not args.name:
        for name, path in presets(args.project).items():
            print(f"{name:<16}{describe(path)}")
        return 0
    if not args.data:
        raise ConfigError(f"featpipe study {args.name}: pass --data with your image folder, CSV or npz file")
    work = setup_study(args.project, args.name, args.data, args.dir or f"study-{args.name}", smoke=args.smoke,
                       overrides=args.overrides)
    print(f"study {args.name} on {args.data}: {work}/params.yaml and dvc.yaml written")
    if args.setup_only:
        print(f"run it with: cd {work} && dvc repro")
        return 0
    dvc(["repro"], work)
    report = work / "reports" / "report.html"
    print(f"study {args.name} finished in {work}" + (f": open {report}" if report.is_file() else ""))
    return 0
