"""Saved heads: load without pickle, reproduce predictions, refuse tampered files and mismatched features."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from featpipe.params.config import HeadsParams
from featpipe.params.heads import MlpParams
from featpipe.core.errors import CacheError
from featpipe.core.fileio import seal
from featpipe.heads.io import UnsafeModelError, check_compatible, load_head, save_head, sidecar
from featpipe.heads.registry import HEADS, make_head

from conftest import fit_tiny_project

META = {"backbone": "toy", "weights_id": "random:seed0", "layer": "", "embedding_dim": 12,
        "preprocess": {"input_size": 28, "mean": [0.5, 0.5, 0.5]}, "classes": ["a", "b", "c"]}


def fitted(name: str):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    X = rng.normal(size=(30, 12)) + 2 * np.eye(12)[y]
    return make_head(name, HeadsParams(l2_normalize=True, mlp=MlpParams(epochs=20)), seed=1).fit(X, y), X


def rewrite(path, data: bytes, *, fix_hash: bool = True) -> None:
    path.write_bytes(data)
    if fix_hash:  # an attacker who also edits the sidecar: the content checks alone must refuse it
        side = json.loads(sidecar(path).read_text())
        side["model_sha256"] = hashlib.sha256(data).hexdigest()
        sidecar(path).write_text(seal(side))  # ... and recomputes the sidecar's own hash


@pytest.mark.parametrize("name", sorted(HEADS))
def test_round_trip_without_pickle(name, tmp_path, monkeypatch):
    model, X = fitted(name)
    path = save_head(tmp_path / f"{name}.skops", model, META)
    assert json.loads(sidecar(path).read_text())["backbone"] == "toy"

    def no_pickle(*a, **k):
        raise AssertionError("pickle used while loading a head")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    loaded = load_head(path)
    assert np.array_equal(loaded.pipeline.predict_proba(X), model.predict_proba(X))
    assert loaded.meta["classes"] == ["a", "b", "c"]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_the_compact_archive_holds_what_skops_own_dumps_holds(name, tmp_path):
    from featpipe.heads.io import skops_io

    sio = skops_io()
    model, X = fitted(name)
    ours = zipfile.ZipFile(save_head(tmp_path / f"{name}.skops", model, META))
    theirs = zipfile.ZipFile(io.BytesIO(sio.dumps(model)))
    assert b"\n" not in ours.read("schema.json")  # compact (skops indents it)

    def plain(z):  # object ids (node ids, member names) differ between any two saves: compare the rest
        def walk(node):
            if isinstance(node, dict):
                return {k: (hashlib.sha256(z.read(v)).hexdigest() if k == "file" else walk(v))
                        for k, v in node.items() if k != "__id__"}
            return [walk(v) for v in node] if isinstance(node, list) else node
        return walk(json.loads(z.read("schema.json")))

    assert plain(ours) == plain(theirs)
    assert len(ours.namelist()) == len(theirs.namelist())
    data = (tmp_path / f"{name}.skops").read_bytes()
    loaded = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_a_pickle_in_place_of_the_head_is_refused(tmp_path):
    model, _ = fitted("logistic")
    path = save_head(tmp_path / "h.skops", model, META)
    rewrite(path, pickle.dumps(model))
    with pytest.raises(UnsafeModelError, match="is a pickle"):
        load_head(path)


def _replace_member(data: bytes, pick, new: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        names = src.namelist()
        target = pick(names)
        for n in names:
            dst.writestr(n, new if n == target else src.read(n))
    return out.getvalue()


def test_a_pickled_array_or_extra_member_inside_the_archive_is_refused(tmp_path):
    model, _ = fitted("svc")
    path = save_head(tmp_path / "h.skops", model, META)
    good = path.read_bytes()
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    rewrite(path, _replace_member(good, lambda ns: next(n for n in ns if n.endswith(".npy")), buf.getvalue()))
    with pytest.raises(UnsafeModelError, match="Python objects"):
        load_head(path)
    src = zipfile.ZipFile(io.BytesIO(good))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, src.read(n))
        dst.writestr("payload.pkl", pickle.dumps(model))
    rewrite(path, out.getvalue())
    with pytest.raises(UnsafeModelError, match="unexpected member"):
        load_head(path)


def test_untrusted_type_in_the_schema_is_refused(tmp_path):
    model, _ = fitted("prototype")
    path = save_head(tmp_path / "h.skops", model, META)
    good = path.read_bytes()
    schema = zipfile.ZipFile(io.BytesIO(good)).read("schema.json").decode()
    evil = schema.replace('"NearestPrototype"', '"system"').replace('"featpipe.heads"', '"os"')
    assert evil != schema
    rewrite(path, _replace_member(good, lambda ns: "schema.json", evil.encode()))
    with pytest.raises(UnsafeModelError, match="not trusted"):
        load_head(path)


def test_modified_file_without_matching_sidecar_is_refused(tmp_path):
    model, _ = fitted("prototype")
    path = save_head(tmp_path / "h.skops", model, META)
    other, _ = fitted("logistic")
    good_other = save_head(tmp_path / "o.skops", other, META).read_bytes()
    rewrite(path, good_other, fix_hash=False)
    with pytest.raises(UnsafeModelError, match="modified after saving"):
        load_head(path)


def test_features_from_another_backbone_are_refused():
    check_compatible(META, {"backbone": "toy", "weights_id": "random:seed0", "layer": None, "embedding_dim": 12,
                            "preprocess": json.dumps({"mean": [0.5, 0.5, 0.5], "input_size": 28})})
    with pytest.raises(CacheError, match="backbone 'other'"):
        check_compatible(META, {"backbone": "other"})
    with pytest.raises(CacheError, match="weights_id"):
        check_compatible(META, {"backbone": "toy", "weights_id": "torchvision:X"})
    with pytest.raises(CacheError, match="embedding_dim"):
        check_compatible(META, {"embedding_dim": 24})
    with pytest.raises(CacheError, match="preprocess"):
        check_compatible(META, {"preprocess": {"input_size": 224, "mean": [0.5, 0.5, 0.5]}})


def test_predict_on_training_images_reproduces_the_scores(tmp_path, monkeypatch, capsys):
    """prepare -> extract (tiny_cnn) -> fit -> predict on the k-shot training image files."""
    import pandas as pd

    from featpipe.cli.main import main
    from featpipe.features.cache import read_features

    model = fit_tiny_project(tmp_path, monkeypatch, precision="fp32")
    head = load_head(model)
    ids = head.meta["train_ids"]
    from featpipe.data.manifest import read_manifest

    manifest = read_manifest("data/manifest.csv").set_index("id")  # paths joined to the recorded data root
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--out", "pred.csv", "--batch-size", "4", *manifest.loc[ids, "path"]]) == 0
    out, err = capsys.readouterr()
    assert "10 images classified" in out
    # progress on stderr, in plain lines: the model loaded, then one line per batch of 4 (4, 8, 10 of 10)
    progress = [ln for ln in err.splitlines() if ln.startswith("featpipe: predict: ")]
    assert "model loaded" in progress[0] and "10 image file(s) to classify" in progress[0]
    assert [ln.split()[2] for ln in progress[1:]] == ["4/10", "8/10", "10/10"] and "\r" not in err
    pred = pd.read_csv("pred.csv")
    fs = read_features(next(Path("cache/demo").glob("tiny_cnn*.h5"))).select(ids)
    expected = head.pipeline.predict_proba(fs.features)
    cols = [f"p[{c}]" for c in head.meta["classes"]]
    np.testing.assert_allclose(pred[cols].to_numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_head_saved_when_the_heads_were_one_module_still_loads(name, tmp_path):
    """Heads saved when every head class lived in ``featpipe.heads`` name it so in their schema: they load,
    predict as saved, and nothing but the trusted head classes is rewritten."""
    model, X = fitted(name)
    path = save_head(tmp_path / f"{name}.skops", model, META)
    good = path.read_bytes()
    schema = zipfile.ZipFile(io.BytesIO(good)).read("schema.json").decode()
    module = type(model[-1]).__module__
    old = schema.replace(f'"{module}"', '"featpipe.heads"')
    assert old != schema and module != "featpipe.heads"
    rewrite(path, _replace_member(good, lambda ns: "schema.json", old.encode()))
    loaded = load_head(path).pipeline
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert type(loaded[-1]).__module__ == module
