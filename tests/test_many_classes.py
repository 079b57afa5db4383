"""Many classes (issue 21, failure 12: 10,000 classes, one sweep run did not finish in 400 s, 3.3 GB): a task with
more classes than ``fit.max_classes`` (default 1,000) is refused in one line naming the limit, before any fit."""

from __future__ import annotations

import pytest

from featpipe.cli.main import main
from featpipe.fewshot import fit as fitmod
from featpipe.params.config import load_params
from tests.conftest import copy_project, extracted_project

PARAMS = ("data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {classes: 3, images_per_class: 12, "
          "size: 32}}\n"
          "split: {seeds: [0], shots: [2], val_fraction: 0.2, test_fraction: 0.2}\n"
          "decode: {workers: 1}\n"
          "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 32}\n"
          "fit: {n_jobs: 1, heads: [prototype]}\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return extracted_project(tmp_path_factory.mktemp("manycls"), PARAMS, "--no-progress")


@pytest.fixture
def project(base, tmp_path, monkeypatch):
    return copy_project(base, tmp_path, monkeypatch)


@pytest.mark.parametrize("command", [["fit", "--head", "prototype", "--shots", "2", "--seeds", "0"], ["sweep"]])
def test_more_classes_than_the_limit_are_refused_before_any_fit(project, monkeypatch, capsys, command):
    calls = []
    monkeypatch.setattr(fitmod, "fit_run", lambda *a, **k: calls.append(1))
    capsys.readouterr()
    assert main([*command, "-S", "fit.max_classes=2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "3 classes, more than fit.max_classes = 2" in err and "fit.max_classes=3" in err
    assert calls == [] and not (project / "results" / "runs.csv").exists()


def test_at_the_limit_the_task_runs_and_the_default_limit_is_1000(project, capsys):
    assert load_params(None, []).fit.max_classes == 1000
    assert main(["fit", "--head", "prototype", "--shots", "2", "--seeds", "0", "-S", "fit.max_classes=3"]) == 0
    assert (project / "results" / "runs.csv").is_file()
    capsys.readouterr()
    assert main(["fit", "--head", "prototype", "--shots", "2", "-S", "fit.max_classes=0"]) == 2
    assert "fit.max_classes" in capsys.readouterr().err
