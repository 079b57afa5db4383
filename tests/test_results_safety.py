"""Nothing lost from the results table (issue 21, failures 3, 7 and 10): collect never leaves the project
without a ``runs.csv`` (damaged source, SIGKILL before its rename) and keeps the rows written straight into
it; ``metrics.json`` carries the hash of the table it summarises and a stale one is refused; a sweep writes
each run as it finishes, so an error or a SIGKILL keeps what was computed; a damaged table is refused
before any fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from featpipe.cli.main import main
from featpipe.core.fileio import file_sha256
from featpipe.evaluation.table import read_predictions
from featpipe.fewshot import fit as fitmod
from tests.conftest import copy_project, extracted_project

REPO = Path(__file__).resolve().parents[1]
PARAMS = ("data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 16, size: 32}}\n"
          "split: {seeds: [0, 1, 2], shots: [2, 5], val_fraction: 0.2, test_fraction: 0.2}\n"
          "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 32}\n"
          "fit: {n_jobs: 1, heads: [logistic, prototype], save_models: false}\n")

# a featpipe CLI process that SIGKILLs itself at a chosen point
RUNNER = r"""
import os, sys, signal
at = os.environ.get("FP_DIE_AT", "")
if at == "collect-rename":  # after the new table is written, before it is renamed onto runs.csv
    _replace = os.replace
    def dying(src, dst, *a, **k):
        if str(dst).endswith("runs.csv"):
            os.kill(os.getpid(), signal.SIGKILL)
        return _replace(src, dst, *a, **k)
    os.replace = dying
elif at.startswith("run-"):  # during the n-th fit of a sweep
    from featpipe.fewshot import fit as f
    _fit, n = f.fit_run, int(at[4:])
    count = [0]
    def dying_fit(*a, **k):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return _fit(*a, **k)
    f.fit_run = dying_fit
from featpipe.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A prepared and extracted synthetic project (no results yet)."""
    return extracted_project(tmp_path_factory.mktemp("results-safety"), PARAMS)


@pytest.fixture
def project(base, tmp_path, monkeypatch):
    return copy_project(base, tmp_path, monkeypatch)


def _spawn(root: Path, *args: str, die_at: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FP_DIE_AT": die_at, "FEATPIPE_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def _keys(path: Path) -> set:
    df = pd.read_csv(path)
    return set(zip(df["head"], df["shots"], df["seed"]))


def test_collect_keeps_rows_written_straight_into_the_table(project, capsys):
    assert main(["fit", "--head", "logistic", "--shots", "2", "--seeds", "0", "1"]) == 0  # into results/runs.csv
    assert main(["fit", "--head", "prototype", "--shots", "5", "--seeds", "0", "--results", "results/fit"]) == 0
    assert main(["collect", "results/fit"]) == 0
    assert _keys(Path("results/runs.csv")) == {("logistic", 2, 0), ("logistic", 2, 1), ("prototype", 5, 0)}


@pytest.mark.parametrize("damage", ["garbage", "no-metric-column", "bad-seed"])
def test_collect_with_a_damaged_source_leaves_the_table_and_names_the_file(project, capsys, damage):
    assert main(["fit", "--head", "logistic", "--shots", "2", "--seeds", "0"]) == 0
    assert main(["fit", "--head", "prototype", "--shots", "2", "--seeds", "0", "--results", "results/fit/a"]) == 0
    before = Path("results/runs.csv").read_bytes()
    bad = Path("results/fit/b/runs.csv")
    bad.parent.mkdir(parents=True)
    good = pd.read_csv("results/fit/a/runs.csv")
    if damage == "garbage":
        bad.write_bytes(b'head,"shots\n\xff\xfe' + os.urandom(300))
    elif damage == "no-metric-column":
        good.drop(columns=["accuracy"]).to_csv(bad, index=False)
    else:
        good.assign(seed="x").to_csv(bad, index=False)
    capsys.readouterr()
    assert main(["collect", "results/fit"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and ("damaged" in err or "empty" in err), err
    assert Path("results/runs.csv").read_bytes() == before


def test_sigkill_of_collect_before_its_rename_leaves_the_old_table(project):
    assert main(["fit", "--head", "logistic", "--shots", "2", "--seeds", "0"]) == 0
    assert main(["fit", "--head", "prototype", "--shots", "2", "--seeds", "0", "--results", "results/fit"]) == 0
    before = Path("results/runs.csv").read_bytes()
    r = _spawn(project, "collect", "results/fit", die_at="collect-rename")
    assert r.returncode == -9, r.stderr
    assert Path("results/runs.csv").read_bytes() == before
    assert main(["collect", "results/fit"]) == 0  # and the next collect cleans up and completes
    assert _keys(Path("results/runs.csv")) == {("logistic", 2, 0), ("prototype", 2, 0)}
    assert not list(Path("results").glob(".runs.csv.tmp-*"))


def test_metrics_json_carries_the_table_hash_and_a_stale_one_is_refused(project, capsys):
    assert main(["fit", "--head", "logistic", "--shots", "2", "--seeds", "0", "1"]) == 0
    prov = json.loads(Path("results/metrics.json").read_text())["_provenance"]
    assert prov["runs_sha256"] == file_sha256("results/runs.csv")
    # a table rewritten without its summary (a writer killed between the two)
    df = pd.read_csv("results/runs.csv")
    df.iloc[:1].to_csv("results/runs.csv", index=False)
    capsys.readouterr()
    assert main(["report"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metrics.json does not summarise" in err and "collect" in err, err


def test_a_sweep_that_fails_midway_keeps_the_runs_it_finished(project, monkeypatch, capsys):
    real, calls = fitmod.fit_run, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise MemoryError("injected")
        return real(*a, **k)

    monkeypatch.setattr(fitmod, "fit_run", failing)
    with pytest.raises(MemoryError):
        main(["sweep"])
    assert len(pd.read_csv("results/runs.csv")) == 3
    assert not list(Path("results").glob(".runs.csv.journal-*"))


def test_a_sigkilled_sweep_keeps_its_finished_runs_for_the_next_write(project, capsys):
    r = _spawn(project, "sweep", die_at="run-5")
    assert r.returncode == -9, r.stderr
    journals = list(Path("results").glob(".runs.csv.journal-*.jsonl"))
    assert len(journals) == 1 and len(journals[0].read_text().splitlines()) == 4
    kept = read_predictions("results")  # written as each run finished, read back from the killed run's log
    rows = [json.loads(line) for line in journals[0].read_text().splitlines()]
    assert set(kept["run_id"]) == {r["run_id"] for r in rows} and len(kept) == 4 * len(kept[kept["run_id"] == rows[0]["run_id"]])
    capsys.readouterr()
    assert main(["fit", "--head", "prototype", "--shots", "5", "--seeds", "2"]) == 0
    assert "recovered 4 row(s) of an interrupted run" in capsys.readouterr().err
    assert len(pd.read_csv("results/runs.csv")) == 5
    assert not list(Path("results").glob(".runs.csv.journal-*"))


def test_a_damaged_table_is_refused_before_any_fit(project, monkeypatch, capsys):
    Path("results").mkdir()
    Path("results/runs.csv").write_text("dataset,backbone\n\"unterminated\n")
    calls = []
    real = fitmod.fit_run
    monkeypatch.setattr(fitmod, "fit_run", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["sweep"]) == 1
    err = capsys.readouterr().err.strip()
    assert calls == [] and "results/runs.csv" in err and len(err.splitlines()) == 1, err
