"""A real small study for the report tests (7 classes, 4 heads, 2 shot counts, 3 seeds), built once per module,
and a reader of the report's HTML tables."""

from __future__ import annotations

import os
import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from featpipe.results.summary import config_labels
from tests.conftest import extracted_project

PARAMS = ("data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {classes: 7, images_per_class: 14, "
          "size: 32}}\n"
          "split: {seeds: [0, 1, 2], shots: [2, 4], val_fraction: 0.2, test_fraction: 0.25}\n"
          "decode: {workers: 1}\n"
          "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 64}\n"
          "fit: {n_jobs: 1}\n")
HEADS = ["logistic", "prototype", "knn", "svc"]


def build_study(root: Path) -> Path:
    """prepare, extract, sweep (4 heads), compare and report in ``root``; returns the report's path."""
    from featpipe.cli.main import main

    extracted_project(root, PARAMS, "--no-progress")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["sweep", "--heads", *HEADS]) == 0
        assert main(["compare"]) == 0
        assert main(["report"]) == 0
    finally:
        os.chdir(cwd)
    return root / "reports" / "report.html"


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The study's report, tables, runs (with their configuration label), summary.json and metrics.json; built
    once for the report tests of the session."""
    root = tmp_path_factory.mktemp("report-study")
    out = build_study(root)
    runs = pd.read_csv(root / "results/runs.csv")
    runs["config"] = config_labels(runs.assign(layer=runs["layer"].astype(object).fillna(""))).to_numpy()
    return {"root": root, "report": out, "html": out.read_text(), "tables": Tables(out.read_text()), "runs": runs,
            "summary": json.loads((root / "results/summary.json").read_text()),
            "metrics": json.loads((root / "results/metrics.json").read_text())}


class Tables(HTMLParser):
    """Every ``<table id=...>`` of a page: {id: {"header": [...], "rows": [[cell text, ...], ...],
    "values": [[data-v or None, ...], ...], "classes": [row class, ...]}}; plus the ids of sections in order."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, dict] = {}
        self.sections: list[str] = []
        self._t = self._row = self._cell = None
        self._vals = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "table" and a.get("id"):
            self._t = self.tables.setdefault(a["id"], {"header": [], "rows": [], "values": [], "classes": []})
        elif self._t is not None and tag == "tr":
            self._row, self._vals = [], []
            self._t["classes"].append(a.get("class", ""))
        elif self._t is not None and tag in ("td", "th"):
            self._cell = ""
            self._vals.append(a.get("data-v"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if self._t is None:
            return
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr":
            if self._row and not self._t["header"]:
                self._t["header"] = self._row
                self._t["classes"].pop()
            else:
                self._t["rows"].append(self._row)
                self._t["values"].append(self._vals)
        elif tag == "table":
            self._t = None
