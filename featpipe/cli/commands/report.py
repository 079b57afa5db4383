"""featpipe report: reports/report.html (self-contained) and the plots as PNG files."""

from __future__ import annotations

from pathlib import Path

from featpipe.report.build import ReportInputs, build_report


def add_arguments(parser) -> None:
    parser.add_argument("--manifest", default="data/manifest.csv")
    parser.add_argument("--splits", default="data/splits.json")
    parser.add_argument("--rejects", default="data/rejects.csv")
    parser.add_argument("--results", default="results", help="folder with runs.csv and predictions/ (default: results)")
    parser.add_argument("--cache-dir", default="cache", help="feature caches, for provenance (default: cache)")
    parser.add_argument("--gradcam-dir", default="reports/gradcam")
    parser.add_argument("--out", default="reports/report.html")
    parser.add_argument("--external-dir", default="data/external", help="prepared external test sets (evaluate.external)")


def run(args, params) -> int:
    inp = ReportInputs(manifest=Path(args.manifest), splits=Path(args.splits), results=Path(args.results), out=Path(args.out),
                       rejects=Path(args.rejects), cache_dir=Path(args.cache_dir), gradcam_dir=Path(args.gradcam_dir),
                       external_dir=Path(args.external_dir))
    out = build_report(inp, params)
    print(f"report written to {out} (plots in {out.parent / 'plots'})")
    return 0
