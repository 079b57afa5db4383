"""Fine-tuning: what each strategy trains, that training learns, early stopping, reproducibility,
rows comparable with the frozen heads, and checkpoints that load without unpickling."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from featpipe.backbones.model import build
from featpipe.params.config import FinetuneParams, load_params
from featpipe.core.errors import ConfigError, DataError
from featpipe.finetune import checkpoint, run, strategies
from featpipe.finetune.augment import Augment, augment_batch
from featpipe.finetune.data import ArrayImages, Labeled, Prep
from featpipe.core.runtime import Runtime
from featpipe.finetune.loop import (
    TrainConfig,
    batches,
    class_weights,
    epoch_order,
    predict_proba,
    train,
)
from featpipe.finetune.strategies import (
    FinetuneModel,
    apply_strategy,
    count_trainable,
    new_head,
    param_groups,
)

CPU32 = Runtime(torch.device("cpu"), "fp32")
AUG = Augment()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread; on a shared 2-core machine two OpenMP threads that
    spin-wait for each other are 10-100x slower. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- strategies on real architectures


@pytest.fixture(scope="module")
def resnet50():
    return FinetuneModel(build("resnet50", weights="random"), new_head(2048, 2))


@pytest.fixture(scope="module")
def densenet161():
    return FinetuneModel(build("densenet161", weights="random"), new_head(2208, 2))


def test_resnet50_trainable_parameters_per_strategy(resnet50):
    m, net = resnet50, resnet50.features.net
    total = _n(m)
    stem_layer1 = _n(net.conv1) + _n(net.bn1) + _n(net.layer1)
    expected = {"scratch": total, "head": 4098, "full": total, "layerwise": total - stem_layer1}
    for strategy, want in expected.items():
        apply_strategy(m, strategy, family="resnet")
        assert count_trainable(m) == want, strategy
    assert expected["layerwise"] == 23_286_786 and total == 23_512_130
    # layerwise: exactly stem + layer1 frozen, layer2 onwards and the head trained
    apply_strategy(m, "layerwise", family="resnet")
    frozen = {n.split(".")[2] for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}
    # frozen BatchNorm keeps its running statistics in training mode
    strategies.set_train_mode(m)
    assert not net.bn1.training and not net.layer1[0].bn1.training and net.layer2[0].bn1.training
    # full: the backbone learns at lr * backbone_lr_factor
    apply_strategy(m, "full", family="resnet")
    groups = {g["name"]: g for g in param_groups(m, "full", lr=1e-4, backbone_lr_factor=0.1)}
    assert groups["head"]["lr"] == pytest.approx(1e-4) and groups["backbone"]["lr"] == pytest.approx(1e-5)
    assert sum(p.numel() for p in groups["backbone"]["params"]) == total - 4098
    apply_strategy(m, "layerwise", family="resnet")
    groups = {g["name"]: g for g in param_groups(m, "layerwise", lr=1e-4, backbone_lr_factor=0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4)


def test_densenet161_trainable_parameters_per_strategy(densenet161):
    m, feats = densenet161, densenet161.features.net.features
    total = _n(m)
    first = _n(feats.conv0) + _n(feats.norm0) + _n(feats.denseblock1)
    for strategy, want in {"scratch": total, "head": 2208 * 2 + 2, "full": total,
                           "layerwise": total - first}.items():
        apply_strategy(m, strategy, family="densenet")
        assert count_trainable(m) == want, strategy
    apply_strategy(m, "layerwise", family="densenet")
    assert all(p.requires_grad for p in feats.transition1.parameters())
    assert not any(p.requires_grad for p in feats.denseblock1.parameters())


def test_truncated_trains_only_up_to_the_cut():
    m, _ = checkpoint.build_model("resnet50", "truncated", 2, weights="random", layer="layer3",
                                     truncated_mode="full")
    net = m.features.net
    used = sum(_n(getattr(net, k)) for k in ("conv1", "bn1", "layer1", "layer2", "layer3"))
    assert count_trainable(m) == used + 1024 * 2 + 2  # layer4 is past the cut: never trained
    assert not any(p.requires_grad for p in net.layer4.parameters())
    apply_strategy(m, "truncated", family="resnet", truncated_mode="layerwise", input_size=64)
    assert count_trainable(m) == used - _n(net.conv1) - _n(net.bn1) - _n(net.layer1) + 2050
    with pytest.raises(ConfigError, match="needs --layer"):
        checkpoint.build_model("tiny_cnn", "truncated", 2, weights="random")
    with pytest.raises(ConfigError, match="truncated strategy only"):
        checkpoint.build_model("tiny_cnn", "full", 2, weights="random", layer="transition1")


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_siglip"])
def test_transformer_layerwise_freezes_embeddings_and_first_layers(name):
    m, _ = checkpoint.build_model(name, "layerwise", 2, weights="random")
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert any("embed" in n or "conv_proj" in n for n in frozen)
    assert any(n.endswith("layers.0.mlp.fc1.weight") or "encoder_layer_0." in n for n in frozen)
    assert all(p.requires_grad for p in m.head.parameters())


# --------------------------------------------------------------------------- the training loop


def _blobs(n: int, seed: int, size: int = 32):
    """Learnable: class 1 has a bright disc in the centre, class 0 a dark one (survives crops/flips)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2
    imgs = rng.normal(128, 25, (n, size, size))
    imgs[:, disc] += np.where(y == 1, 80, -80)[:, None]
    return np.clip(imgs, 0, 255).astype(np.uint8)[..., None], y.astype(np.int64)


def _tiny(strategy="scratch", seed=0):
    model, spec = checkpoint.build_model("tiny_cnn", strategy, 2, weights="random", seed=seed)
    return model, Prep.from_preprocess(spec.preprocess)


def _fit(model, prep, src, tr, va, *, epochs, patience, lr=3e-3, seed=0, aug=AUG):
    opt = torch.optim.AdamW(param_groups(model, "scratch", lr=lr, backbone_lr_factor=1.0), weight_decay=1e-4)
    cfg = TrainConfig(batch_size=16, epochs=epochs, patience=patience, augment=aug)
    return train(model, src, tr, va, optimizer=opt, cfg=cfg, prep=prep, rt=CPU32, seed=seed, n_classes=2)


def _data():
    x, y = _blobs(96, 0)
    ids = [f"im{i}" for i in range(96)]
    src = ArrayImages(ids, x)
    lab = dict(zip(ids, y.tolist()))
    return src, Labeled.of(ids[:48], lab), Labeled.of(ids[48:64], lab), Labeled.of(ids[64:], lab)


def test_training_lowers_the_loss_and_beats_chance():
    src, tr, va, te = _data()
    model, prep = _tiny()
    res = _fit(model, prep, src, tr, va, epochs=6, patience=6)
    losses = [r["train_loss"] for r in res.history]
    assert losses[-1] < 0.6 * losses[0] and losses[-1] == min(losses)
    proba = predict_proba(model, src, te.ids, prep=prep, rt=CPU32)
    assert np.mean(proba.argmax(1) == te.labels) >= 0.8  # chance is 0.5


def test_early_stopping_restores_the_best_epoch():
    src, tr, va, _ = _data()
    flipped = Labeled(va.ids, 1 - va.labels)  # val disagrees with train: val loss rises as training learns
    model, prep = _tiny()
    res = _fit(model, prep, src, tr, flipped, epochs=30, patience=3)
    vl = [r["val_loss"] for r in res.history]
    assert res.best_epoch == int(np.argmin(vl)) + 1
    assert res.stopped_early and res.epochs_run == res.best_epoch + 3 < 30
    # the weights in the model now are the best epoch's, not the last one's
    logits = torch.log(torch.as_tensor(predict_proba(model, src, flipped.ids, prep=prep, rt=CPU32)))
    w = class_weights(flipped.labels, 2)
    now = torch.nn.functional.nll_loss(logits.float(), torch.as_tensor(flipped.labels), weight=w).item()
    assert now == pytest.approx(vl[res.best_epoch - 1], abs=1e-4)
    assert now != pytest.approx(vl[-1], abs=1e-4)


def test_same_seed_same_weights_and_global_rng_untouched():
    src, tr, va, _ = _data()
    state = torch.get_rng_state()
    outs = []
    for seed in (0, 0, 1):
        model, prep = _tiny(seed=seed)
        res = _fit(model, prep, src, tr, va, epochs=2, patience=5, seed=seed)
        outs.append(([r["val_loss"] for r in res.history], model.head.weight.detach().clone()))
    assert outs[0][0] == outs[1][0] and torch.equal(outs[0][1], outs[1][1])
    assert outs[0][0] != outs[2][0]
    assert torch.equal(torch.get_rng_state(), state)


def test_augmentation_is_seeded_and_sampling_balanced():
    x = torch.from_numpy(_blobs(4, 1, size=40)[0]).permute(0, 3, 1, 2)
    a = augment_batch(x, size=32, aug=Augment(), g=torch.Generator().manual_seed(5))
    b = augment_batch(x, size=32, aug=Augment(), g=torch.Generator().manual_seed(5))
    c = augment_batch(x, size=32, aug=Augment(), g=torch.Generator().manual_seed(6))
    assert a.dtype == torch.uint8 and a.shape == (4, 1, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    labels = np.array([0] * 90 + [1] * 10)
    order = epoch_order(labels, balanced=True, g=torch.Generator().manual_seed(0))
    assert 0.35 < labels[order].mean() < 0.65  # 10% of the images, about half of the draws
    assert class_weights(labels, 2).tolist() == pytest.approx([100 / 180, 100 / 20])
    assert [len(b) for b in batches(np.arange(33), 32)] == [33]  # no lone image for BatchNorm


# --------------------------------------------------------------------------- runs on prepared splits


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from featpipe.data.prepare import prepare

    root = tmp_path_factory.mktemp("ftproj")
    params = load_params(None, [
        f"data.path={root / 'synthetic'}", "data.synthetic.images_per_class=30", "data.synthetic.size=32",
        "split.seeds=[0,1]", "split.shots=[2,5]", "split.val_fraction=0.2", "split.test_fraction=0.25",
    ])
    prepare(params, manifest_path=root / "data" / "manifest.csv", splits_path=root / "data" / "splits.json")
    paths = run.Paths(root / "data" / "manifest.csv", root / "data" / "splits.json", root / "cache",
                      root / "results", root / "models")
    return params, paths


FAST = FinetuneParams(epochs=2, patience=2, lr=1e-3, precision="fp32", device="cpu")


def test_rows_use_the_same_test_ids_as_the_frozen_heads(project, monkeypatch):
    from featpipe.params.config import DecodeParams, ExtractParams
    from featpipe.data.splits import load_splits
    from featpipe.features.extract import extract
    from featpipe.results.stages import fit
    from featpipe.evaluation.table import read_runs

    params, paths = project
    seen = []
    real = run.predict_proba
    monkeypatch.setattr(run, "predict_proba", lambda m, s, ids, **kw: seen.append(list(ids)) or real(m, s, ids, **kw))
    row = run.run_job(run.Job("tiny_cnn", "head", 5, 1), FAST, paths, progress=False)
    sp = load_splits(paths.splits)
    assert seen == [sp.val, sp.test]  # threshold from val, scores on exactly the split's test ids
    # the frozen logistic head on the same split, k and seed
    extract(paths.manifest, backbone="tiny_cnn", dataset=sp.dataset, cache_dir=paths.cache_dir,
            params=ExtractParams(precision="fp32", device="cpu"), decode=DecodeParams(workers=1), progress=False)
    (frozen,), _ = fit(paths.splits, head="logistic", shots=5, seeds=[1], params=params, backbone="tiny_cnn",
                       cache_dir=paths.cache_dir, results_dir=paths.results, models_dir=None, n_jobs=1)
    assert frozen.test_ids == seen[1]
    for k in ("dataset", "backbone", "weights", "weights_id", "layer", "shots", "seed", "split_sha256", "ids_sha256",
              "n_classes", "n_train", "n_val", "n_test"):
        assert row[k] == frozen.row[k], k
    table = read_runs(paths.results / "runs.csv")
    both = table[(table["shots"] == 5) & (table["seed"] == 1)]
    assert set(both["head"]) >= {"logistic", "finetune:head"}
    assert both["n_test"].nunique() == 1 and both["ids_sha256"].nunique() == 1
    assert set(table.columns) >= set(frozen.row)  # same columns as the heads' rows
    curve = json.loads(next((paths.results / "training").glob("demo-tiny_cnn-head-k5-s1-*.json")).read_text())
    assert [e["epoch"] for e in curve["epochs"]] == [1, 2] and "val_loss" in curve["epochs"][0]


def test_two_runs_with_the_same_seed_give_identical_metrics(project):
    _, paths = project
    job = run.Job("tiny_cnn", "layerwise", 2, 0)
    a = run.run_job(job, FAST, paths, progress=False)
    first = Path(a["model_path"]).read_bytes()
    b = run.run_job(job, FAST, paths, progress=False)
    keys = ("accuracy", "balanced_accuracy", "auroc", "brier", "threshold", "best_epoch")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert Path(b["model_path"]).read_bytes() == first  # byte-identical weights (stable for DVC too)
    from featpipe.evaluation.table import read_runs

    t = read_runs(paths.results / "runs.csv")
    assert (t["head"] == "finetune:layerwise").sum() == 1  # a re-run replaces its row


def test_checkpoint_round_trips_through_safetensors(project, tmp_path):
    _, paths = project
    row = run.run_job(run.Job("tiny_cnn", "truncated", 2, 0, "transition2"),
                      replace(FAST, truncated_mode="full"), paths, progress=False)
    path = Path(row["model_path"])
    assert path.suffix == ".safetensors" and row["layer"] == "features.transition2"
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte length then a JSON header, no pickle
    model, meta = checkpoint.load_finetuned(path)
    assert meta["strategy"] == "truncated" and meta["classes"] == ["normal", "finding1"]
    assert meta["preprocess"]["input_size"] == 32 and meta["layer"] == "features.transition2"
    x = torch.randn(3, 3, 32, 32)
    # the same run again, kept in memory, must give the same logits as the loaded copy
    again, _ = checkpoint.build_model("tiny_cnn", "truncated", 2, weights="random", layer="transition2",
                                      truncated_mode="full")
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), again.eval()(x))
        assert model(x).shape == (3, 2)
    # predicting from the image files gives what the run's own test pass gives (same pixels, same model)
    from featpipe.data.manifest import read_manifest
    from featpipe.data.splits import load_splits
    from featpipe.finetune.data import CachedImages, Prep

    man = read_manifest(paths.manifest).set_index("id")
    test_ids = load_splits(paths.splits).test[:6]
    from_files = checkpoint.predict_files(model, meta, [man.loc[i, "path"] for i in test_ids])
    cached = CachedImages(paths.cache_dir / "demo" / "decoded-32.h5")
    rt = Runtime(torch.device("cpu"), meta["precision"], channels_last=False)
    from_cache = predict_proba(model, cached, test_ids, prep=Prep.from_preprocess(meta["preprocess"]), rt=rt)
    np.testing.assert_allclose(from_files, from_cache, atol=1e-6)
    # a tensor file that does not match its sidecar is refused
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    (tmp_path / "m.json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(DataError, match="sha256"):
        checkpoint.load_finetuned(bad)


def test_save_load_keeps_every_tensor(tmp_path):
    model, _ = _tiny("full", seed=3)
    with torch.no_grad():
        model.features.net.features.norm0.running_mean.add_(0.5)  # buffers travel too
    meta = {"backbone": "tiny_cnn", "layer": None, "strategy": "full", "classes": ["a", "b"]}
    checkpoint.save_finetuned(model, meta, tmp_path / "x")
    loaded, got = checkpoint.load_finetuned(tmp_path / "x.json")
    assert got["backbone"] == "tiny_cnn" and got["kind"] == "featpipe-finetune"
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_cli_runs_one_job_and_speaks_to_the_user(project, capsys, monkeypatch):
    from featpipe.cli.main import main

    params, paths = project
    monkeypatch.chdir(paths.manifest.parent.parent)
    common = ["--manifest", str(paths.manifest), "--splits", str(paths.splits), "--cache-dir", str(paths.cache_dir),
              "--results", str(paths.results), "--models", str(paths.models), "--quiet",
              "-S", "finetune.epochs=1", "-S", "finetune.precision=fp32", "-S", "finetune.save_models=false",
              "-S", f"data.path={params.data.path}"]
    assert main(["finetune", "--backbone", "tiny_cnn", "--strategy", "scratch", "--shots", "2", "--seed", "1",
                 *common]) == 0
    table = pd.read_csv(paths.results / "runs.csv")
    r = table[(table["head"] == "finetune:scratch")].iloc[0]
    assert r["weights"] == "random" and r["shots"] == 2 and r["seed"] == 1
    assert (paths.results / "metrics.json").is_file()
    capsys.readouterr()
    assert main(["finetune", "--backbone", "tiny_cnn", "--strategy", "truncated", "--shots", "2", "--seed", "1",
                 *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--layer" in err[0]
    assert main(["finetune", "--backbone", "tiny_cnn", "--strategy", "head", "--shots", "3", "--seed", "1",
                 *common]) == 1
    assert "no 3-shot subset" in capsys.readouterr().err


def test_cli_progress_lines_per_epoch_and_run_and_a_summary_across_seeds(project, capsys, monkeypatch):
    """Fine-tuning speaks as it goes, in plain lines (DVC logs them): a line when a run starts, one per epoch, one
    per finished run with the count and the elapsed time; then one summary row per configuration over its seeds.
    ``--quiet`` drops the per-epoch lines only."""
    import re

    from featpipe.cli.main import main

    params, paths = project
    monkeypatch.chdir(paths.manifest.parent.parent)
    common = ["finetune", "--backbone", "tiny_cnn", "--strategy", "head", "--shots", "2", "--manifest",
              str(paths.manifest), "--splits", str(paths.splits), "--cache-dir", str(paths.cache_dir), "--results",
              str(paths.results / "progress"), "--models", str(paths.models), "-S", "finetune.epochs=2",
              "-S", "finetune.patience=2", "-S", "finetune.seeds=[0,1]", "-S", "finetune.precision=fp32",
              "-S", "finetune.save_models=false", "-S", f"data.path={params.data.path}"]
    capsys.readouterr()
    assert main(common) == 0
    lines = capsys.readouterr().out.splitlines()
    name = "tiny_cnn-head-k2-s{}"
    for seed in (0, 1):
        mine = [ln for ln in lines if name.format(seed) in ln]
        assert "training on 4 images, at most 2 epochs" in mine[0]
        assert [m for ln in mine for m in re.findall(r" epoch (\d+/\d+): train_loss", ln)] == ["1/2", "2/2"]
    done = [ln for ln in lines if re.match(r"\[\d/2 runs, [^\]]+ s\] ", ln)]
    assert [ln[:9] for ln in done] == ["[1/2 runs", "[2/2 runs"] and name.format(1) in done[1]
    runs = pd.read_csv(paths.results / "progress" / "runs.csv")
    row = next(ln for ln in lines if "/finetune:head/k2" in ln)
    assert row.split()[2] == "2" and f"{runs['balanced_accuracy'].mean():.3f}" in row  # the summary across seeds
    assert main([*common, "--quiet"]) == 0
    quiet = capsys.readouterr().out
    assert not re.search(r" epoch \d+/\d+:", quiet) and "training on" not in quiet and "[2/2 runs, " in quiet


def test_stdout_is_line_buffered_when_it_is_not_a_terminal(monkeypatch):
    """Under ``dvc repro`` stdout is a pipe: each progress line is written when printed, not at exit."""
    import io
    import sys

    from featpipe.cli.main import main

    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stream)
    assert main(["backbones"]) == 0
    assert stream.line_buffering
