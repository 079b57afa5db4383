"""A fine-tuned model's identity is complete (issue 21, failure 4): its file name carries a hash of every
setting that changes it, so two configurations never share a file and each row points to its own model;
two processes saving one name never leave a sidecar that describes the other one's tensors."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from featpipe.backbones.model import build
from featpipe.finetune import checkpoint, run
from featpipe.params.config import FinetuneParams, load_params


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from featpipe.data.prepare import prepare

    root = tmp_path_factory.mktemp("identity")
    params = load_params(None, [f"data.path={root / 'synthetic'}", "data.synthetic.images_per_class=16",
                                "data.synthetic.size=32", "split.seeds=[0]", "split.shots=[2]"])
    prepare(params, manifest_path=root / "data" / "manifest.csv", splits_path=root / "data" / "splits.json")
    return run.Paths(root / "data" / "manifest.csv", root / "data" / "splits.json", root / "cache",
                     root / "results", root / "models")


FAST = FinetuneParams(epochs=1, patience=1, lr=1e-3, precision="fp32", device="cpu", augment=False)


def test_two_configurations_write_two_models_each_row_pointing_to_its_own(paths):
    job = run.Job("tiny_cnn", "head", 2, 0)
    a = run.run_job(job, FAST, paths, progress=False)
    b = run.run_job(job, replace(FAST, epochs=2, patience=2), paths, progress=False)
    assert a["model_path"] != b["model_path"] and Path(a["model_path"]).is_file()
    for row, epochs in ((a, 1), (b, 2)):
        _, meta = checkpoint.load_finetuned(row["model_path"])
        assert meta["params"]["epochs"] == epochs
    c = run.run_job(job, replace(FAST, lr=2e-3), paths, progress=False)
    assert c["model_path"] not in (a["model_path"], b["model_path"])
    assert Path(a["model_path"]).name.startswith("demo-tiny_cnn-head-k2-s0-")


def test_two_saves_of_one_name_never_mix_tensors_and_sidecar(tmp_path, monkeypatch):
    models, metas = {}, {}
    for who, seed in (("slow", 1), ("fast", 2)):
        models[who], spec = checkpoint.build_model("tiny_cnn", "head", 2, weights="random", seed=seed)
        metas[who] = {"backbone": "tiny_cnn", "layer": None, "strategy": "head", "classes": ["a", "b"],
                      "preprocess": spec.preprocess.to_dict(), "threshold": 0.5, "precision": "fp32",
                      "family": spec.family, "weights_id": build(spec, weights="random").weights_id, "who": who}
    real = checkpoint.atomic_write
    between, fast_done = threading.Event(), threading.Event()

    def paused_write(path, data):
        """The slow writer stops between its tensors and its sidecar until the fast one has written both (an
        unprotected pair would mix here, every time) or, as the lock makes it wait, for a few seconds: the
        outcome never depends on the machine's speed, only how long a correct run waits."""
        out = real(path, data)
        who = threading.current_thread().name
        if str(path).endswith(".safetensors") and who == "slow":
            between.set()
            fast_done.wait(timeout=3)
        elif str(path).endswith(".json") and who == "fast":
            fast_done.set()
        return out

    monkeypatch.setattr(checkpoint, "atomic_write", paused_write)
    stem = tmp_path / "m" / "demo-tiny_cnn-head-k2-s0-0000aaaa"
    slow = threading.Thread(target=checkpoint.save_finetuned, args=(models["slow"], metas["slow"], stem), name="slow")
    fast = threading.Thread(target=checkpoint.save_finetuned, args=(models["fast"], metas["fast"], stem), name="fast")
    slow.start()
    assert between.wait(timeout=600)  # the fast writer starts once the slow one holds half its pair
    fast.start()
    slow.join()
    fast.join()
    model, meta = checkpoint.load_finetuned(stem)
    want = models[meta["who"]].state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items()), f"sidecar of {meta['who']}, other tensors"


def test_gradcam_run_names_find_a_fine_tuned_model_by_its_run_name(tmp_path):
    from featpipe.explain.run import resolve_models

    for name in ("demo-tiny_cnn-layerwise-k5-s0-1a2b3c4d.safetensors", "tiny_cnn-logistic-k5-s0-demo-5e6f7a8b.skops"):
        (tmp_path / name).write_bytes(b"x")
    got = resolve_models(["tiny_cnn-layerwise-k5-s0", "tiny_cnn-logistic-k5-s0"], tmp_path)
    assert [p.name for p in got] == ["demo-tiny_cnn-layerwise-k5-s0-1a2b3c4d.safetensors",
                                     "tiny_cnn-logistic-k5-s0-demo-5e6f7a8b.skops"]
