"""featpipe demo: set up ./demo (dvc.yaml + params.demo.yaml) and run `dvc repro` there."""

from __future__ import annotations

from featpipe.cli.demo import run_demo


def add_arguments(parser) -> None:
    parser.add_argument("--project", default=".", help="the featpipe checkout holding dvc.yaml (default: .)")
    parser.add_argument("--workdir", default="demo", help="demo workspace (default: ./demo)")


def run(args, params) -> int:
    work = run_demo(args.project, args.workdir)
    report = work / "reports" / "report.html"
    print(f"demo finished in {work}" + (f": open {report}" if report.is_file() else ""))
    return 0
