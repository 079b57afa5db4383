"""The HDF5 feature cache: documented layout, atomic writes, partial rows that survive a kill."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from featpipe.features import cache as featcache
from featpipe.core.errors import CacheError

ATTRS = {"backbone": "tiny_cnn", "weights": "random", "weights_id": "random:seed0", "layer": "",
         "preprocess": {"input_size": 32, "resize_size": 32}, "manifest_sha256": "ab" * 32, "precision": "fp32"}


def _write(path, n=5, d=4, dtype="float32", **kw):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    ids = [f"img/{i}.png" for i in range(n)]
    featcache.write_features(path, ids=ids, features=feats, labels=[i % 2 for i in range(n)],
                             attrs={**ATTRS, **kw}, sha256=[f"{i:064x}" for i in range(n)], dtype=dtype)
    return ids, feats


def test_roundtrip_and_layout_readable_with_plain_h5py(tmp_path):
    path = featcache.cache_path(tmp_path, "demo", "densenet161", layer="features.denseblock3", weights_tag="random")
    assert path == tmp_path / "demo" / "densenet161@features.denseblock3+random.h5"
    ids, feats = _write(path, dtype="float16")
    fs = featcache.read_features(path)
    assert fs.ids.tolist() == ids and fs.labels.dtype == np.int64 and fs.labels.tolist() == [0, 1, 0, 1, 0]
    assert fs.features.dtype == np.float32 and np.allclose(fs.features, feats, atol=2e-3)
    assert fs.attrs["preprocess"] == ATTRS["preprocess"] and fs.attrs["complete"] is True
    assert fs.attrs["embedding_dim"] == 4
    with h5py.File(path, "r") as f:  # no featpipe needed to read it
        assert f["features"].dtype == np.float16 and f["features"].chunks[1] == 4
        assert f["ids"].asstr()[2] == "img/2.png" and f.attrs["backbone"] == "tiny_cnn"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    sub = fs.select(["img/3.png", "img/0.png"])
    assert sub.ids.tolist() == ["img/3.png", "img/0.png"] and np.array_equal(sub.features, fs.features[[3, 0]])
    with pytest.raises(CacheError, match="not in the feature cache"):
        fs.select(["img/9.png"])


def test_missing_incomplete_and_foreign_files_are_errors(tmp_path):
    with pytest.raises(CacheError, match="run 'featpipe extract'"):
        featcache.read_features(tmp_path / "nope.h5")
    path = tmp_path / "x.h5"
    _write(path)
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(CacheError, match="incomplete"):
        featcache.read_features(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        featcache.read_features(tmp_path / "junk.h5")


def test_provenance_mismatch_names_the_key():
    attrs = {**ATTRS, "preprocess": '{"input_size": 32, "resize_size": 32}', "embedding_dim": 4}
    assert featcache.provenance_mismatch(attrs, {**ATTRS, "embedding_dim": 4}) is None
    assert "weights_id" in featcache.provenance_mismatch(attrs, {**ATTRS, "weights_id": "sha256:00"})
    assert "preprocess" in featcache.provenance_mismatch(attrs, {**ATTRS, "preprocess": {"input_size": 28}})


def test_lazy_reader_pickles_and_reads_rows_in_any_order(tmp_path):
    path = tmp_path / "x.h5"
    _, feats = _write(path)
    lazy = pickle.loads(pickle.dumps(featcache.LazyFeatures(path)))  # as a DataLoader worker gets it
    assert len(lazy) == 5 and np.array_equal(lazy[[4, 1, 4]], feats[[4, 1, 4]])


def test_merge_refuses_mixed_provenance(tmp_path):
    _write(tmp_path / "a.h5")
    _write(tmp_path / "b.h5", weights_id="sha256:00")
    with pytest.raises(CacheError, match="weights_id"):
        featcache.merge_files([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5")
    with pytest.raises(CacheError, match="overlap"):
        featcache.merge_files([tmp_path / "a.h5", tmp_path / "a.h5"], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_partial_rows_resume_at_the_last_whole_batch(tmp_path):
    final = tmp_path / "c.h5"
    plan = {"backbone": "x", "ids": [str(i) for i in range(10)]}
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    p = featcache.PartialRows(final, plan, dim=4, batch_size=3)
    p.append(rows[:3])
    p.append(rows[3:6])
    with pytest.raises(CacheError, match="another process"):
        featcache.PartialRows(final, plan, dim=4, batch_size=3)
    p.close()
    with open(p.data, "ab") as f:  # a kill in the middle of the third batch's write
        f.write(rows[6:8].tobytes()[:-5])
    q = featcache.PartialRows(final, plan, dim=4, batch_size=3)
    assert q.done == q.resumed == 6 and np.array_equal(q.rows(), rows[:6])
    q.append(rows[6:9])
    q.append(rows[9:])
    assert np.array_equal(q.rows(), rows)
    q.close()
    other = featcache.PartialRows(final, {**plan, "backbone": "y"}, dim=4, batch_size=3)  # another request
    assert other.done == 0 and other.discarded == 10
    other.remove()
    assert not other.dir.exists()
