"""Bad parameters and hostile names are one line before any work (issue 21, failures 5, 6, 9 and 10):
ranges, NaN, empty lists, names that would leave the project, params files that are folders, not UTF-8
or endless; seeds the splits file does not have; a damaged splits file; joblib's negative --n-jobs; a
comparison missing a run's predictions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from featpipe.cli.main import main
from featpipe.fewshot import fit as fitmod
from tests.conftest import copy_project, extracted_project

BAD = [
    ("split.seeds=[-5]", "split.seeds"), ("heads.svc.C=-1", "heads.svc.C"), ("heads.svc.C=0", "heads.svc.C"),
    ("heads.logistic.max_iter=-1", "heads.logistic.max_iter"),
    ("heads.prototype.temperature=0", "heads.prototype.temperature"), ("fit.n_jobs=0", "fit.n_jobs"),
    ("extract.batch_size=0", "extract.batch_size"), ("finetune.batch_size=0", "finetune.batch_size"),
    ("finetune.lr=nan", "finetune.lr"), ("finetune.lr=.inf", "finetune.lr"), ("report.metric=nope", "report.metric"),
    ("finetune.lr=-1", "finetune.lr"), ("finetune.epochs=0", "finetune.epochs"),
    ("compare.bootstrap=-5", "compare.bootstrap"), ("split.shots=[]", "split.shots"),
    ("split.val_fraction=0.85", "split.val_fraction + split.test_fraction"),
    ("heads.svc.C_grid=[1,-1]", "heads.svc.C_grid"), ("compare.metrics=[auroc,nope]", "compare.metrics"),
    ("data.name=../../X", "data.name"), ("data.name=/tmp/X", "data.name"), ("data.name=a/b", "data.name"),
    ("data.name=..", "data.name"), ("data.name=" + "x" * 200, "data.name"),
    ("engine.pool_min_seconds=-1", "engine.pool_min_seconds"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[b[0][:40] for b in BAD])
def test_bad_params_are_one_line_naming_the_key(tmp_path, monkeypatch, capsys, override, key):
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "-S", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "Traceback" not in err, err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("kind", ["folder", "latin-1", "endless"])
def test_params_files_that_are_not_params_files_are_refused(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.chdir(tmp_path)
    if kind == "folder":
        Path("p").mkdir()
        path = "p"
    elif kind == "latin-1":
        Path("p.yaml").write_bytes("data: {name: caf\xe9}\n".encode("latin-1"))
        path = "p.yaml"
    else:
        path = "/dev/zero"
    assert main(["backbones", "--params", path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path in err, err


PARAMS = ("data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 16, size: 32}}\n"
          "split: {seeds: [0, 1], shots: [2, 5], val_fraction: 0.2, test_fraction: 0.2}\n"
          "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 32}\n"
          "fit: {n_jobs: 1, heads: [logistic, prototype], save_models: false}\n"
          "compare: {bootstrap: 50}\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return extracted_project(tmp_path_factory.mktemp("checks"), PARAMS, "--no-progress")


@pytest.fixture
def project(base, tmp_path, monkeypatch):
    return copy_project(base, tmp_path, monkeypatch)


def _no_fits(monkeypatch) -> list:
    calls = []
    real = fitmod.fit_run
    monkeypatch.setattr(fitmod, "fit_run", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_seeds_the_splits_do_not_have_are_refused_before_any_fit(project, monkeypatch, capsys):
    calls = _no_fits(monkeypatch)
    assert main(["sweep", "-S", "fit.seeds=[7]"]) == 1
    err = capsys.readouterr().err.strip()
    assert calls == [] and len(err.splitlines()) == 1 and "seed 7" in err and "prepare" in err, err
    assert main(["sweep", "-S", "fit.seeds=[0]", "-S", "fit.shots=[3]"]) == 1
    assert "no 3-shot subset for seed 0" in capsys.readouterr().err and calls == []


def test_an_edited_splits_file_is_one_line(project, monkeypatch, capsys):
    obj = json.loads(Path("data/splits.json").read_text())
    obj["fewshot"]["0"]["2"][0] = "no/such/image.png"
    Path("data/splits.json").write_text(json.dumps(obj))
    calls = _no_fits(monkeypatch)
    assert main(["sweep"]) == 1
    err = capsys.readouterr().err.strip()
    assert calls == [] and len(err.splitlines()) == 1 and "no/such/image.png" in err and "prepare" in err, err


def test_joblib_negative_n_jobs_runs_the_same_sweep(project, capsys):
    assert main(["sweep", "--n-jobs", "1", "--results", "serial"]) == 0
    assert main(["sweep", "--n-jobs", "-2", "--results", "minus2"]) == 0
    assert main(["sweep", "-S", "fit.n_jobs=-1", "--results", "minus1"]) == 0
    a = pd.read_csv("serial/runs.csv")
    for other in ("minus2", "minus1"):
        pd.testing.assert_frame_equal(a.drop(columns=["model_path"], errors="ignore"),
                                      pd.read_csv(f"{other}/runs.csv").drop(columns=["model_path"], errors="ignore"))


def test_compare_refuses_a_comparison_missing_a_runs_predictions(project, capsys):
    assert main(["sweep"]) == 0
    assert main(["compare"]) == 0
    victim = sorted(Path("results/predictions").glob("*.fpruns"))[0]  # the sweep's run log: every run's predictions
    victim.unlink()
    capsys.readouterr()
    assert main(["compare"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no test predictions" in err and "compare.bootstrap=0" in err, err


def test_a_task_run_in_the_parent_itself_does_not_end_it():
    """joblib runs tasks in the calling process when it has one CPU to use (``-2`` on two CPUs,
    ``JOBLIB_MULTIPROCESSING=0``): the worker's parent watch must not end the parent (it used to exit 1)."""
    from featpipe.core.workers import die_with_parent

    die_with_parent(os.getpid(), pdeathsig=False)  # as engine.local._worker calls it; returns


def test_compare_states_the_seeds_a_configuration_lacks(project, capsys):
    assert main(["sweep", "-S", "compare.bootstrap=0"]) == 0
    df = pd.read_csv("results/runs.csv")
    df = df[~((df["head"] == "prototype") & (df["seed"] == 1) & (df["shots"] == 5))]
    df.to_csv("results/runs.csv", index=False)
    Path("results/metrics.json").unlink()
    capsys.readouterr()
    assert main(["compare", "-S", "compare.bootstrap=0"]) == 0
    notes = [x for x in capsys.readouterr().out.splitlines() if x.startswith("note: ")]
    assert len(notes) == 1 and "prototype at k=5 has no run of seed(s) 1" in notes[0], notes
    assert main(["report", "-S", "compare.bootstrap=0"]) == 0  # the report prints the same statement
    page = "".join(p.read_text() for p in Path("reports").rglob("*.html"))
    assert "prototype at k=5 has no run of seed(s) 1" in page


@pytest.mark.parametrize("damage", ["not a run log", "bytes flipped inside a record"])
def test_a_damaged_predictions_file_is_one_line_naming_it(project, capsys, damage):
    assert main(["sweep"]) == 0
    victim = sorted(Path("results/predictions").glob("*.fpruns"))[0]
    data = bytearray(victim.read_bytes())
    if damage == "not a run log":
        data = bytearray(b"not a run log at all")
    else:
        mid = len(data) // 2
        data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["compare"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(victim) in err and "damaged" in err, err
