"""A fitted head as a torch module: its scores equal scikit-learn's (decision_function, predict_proba)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from featpipe.params.config import HeadsParams
from featpipe.params.heads import MlpParams, SvcParams
from featpipe.heads.torch_twin import FrozenWithHead, torch_head
from featpipe.heads.registry import make_head

FAST = replace(HeadsParams(), cv_folds=0, mlp=MlpParams(hidden=32, epochs=60))  # no CV: fast, same maths
LINEAR_SVC = replace(FAST, svc=SvcParams(kernel="linear"))
from featpipe.heads import registry as _heads  # noqa: E402

HEADS = [(name, FAST) for name in _heads.names()] + [("svc", LINEAR_SVC)]  # every registered head, + a linear SVC


def _blobs(n_classes: int, seed: int = 0, n: int = 60, d: int = 24):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = rng.standard_normal((n, d)) + 1.5 * np.eye(n_classes, d)[y] * 2 + 3.0  # offset: the scaler matters
    return X, y, rng.standard_normal((20, d)) + 3.0


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("name,params", HEADS, ids=_heads.names() + ["svc-linear"])
def test_torch_head_equals_sklearn(name, params, l2, n_classes):
    X, y, Xt = _blobs(n_classes)
    pipe = make_head(name, replace(params, l2_normalize=l2), seed=0).fit(X, y)
    head = torch_head(pipe)
    d = head.decision(torch.from_numpy(Xt)).numpy()
    np.testing.assert_allclose(d, pipe.decision_function(Xt), atol=1e-9, rtol=0)
    np.testing.assert_allclose(head.predict_proba(torch.from_numpy(Xt)).numpy(), pipe.predict_proba(Xt), atol=1e-9)
    assert head(torch.from_numpy(Xt)).shape == (len(Xt), n_classes)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_rbf_svc_kernel_expansion_matches_decision_function(n_classes):
    """Support vectors, dual coefficients, gamma and intercept: binary and one-vs-one multi-class."""
    X, y, Xt = _blobs(n_classes, seed=3, n=80)
    pipe = make_head("svc", replace(FAST, svc=SvcParams(kernel="rbf", gamma=0.05, C_grid=(1.0,))), seed=0).fit(X, y)
    head = torch_head(pipe)
    assert head.kind == "svc-rbf"
    assert head.core.sv.shape[0] == pipe[-1].svc_.support_vectors_.shape[0]
    np.testing.assert_allclose(head.decision(torch.from_numpy(Xt)).numpy(), pipe.decision_function(Xt),
                               atol=1e-9, rtol=0)
    # differentiable: the gradient of a score with respect to the features exists and is not zero
    x = torch.from_numpy(Xt[:3]).requires_grad_(True)
    head(x)[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["logistic", "svc", "mlp", "prototype"])
def test_frozen_backbone_plus_head_matches_head_on_real_features(pneumoniamnist, name):
    """tiny_cnn features of real PneumoniaMNIST images: images -> FrozenWithHead == head(features)."""
    from featpipe.backbones import registry
    from featpipe.backbones.model import build
    from featpipe.backbones.modelinput import to_tensor_batch
    from featpipe.imaging.decode import decode

    spec = registry.get("tiny_cnn")
    pre = spec.preprocess
    idx = list(range(0, 2400, 40))  # 60 training images, both classes
    data = np.load(pneumoniamnist)
    y = data["train_labels"][idx, 0].astype(int)
    px = np.stack([decode(f"{pneumoniamnist}#train_images/{i}", size=pre.input_size) for i in idx])
    x = to_tensor_batch(px, pre.mean, pre.std)
    fm = build(spec)
    with torch.inference_mode():  # as the feature cache is made
        feats = fm(x).numpy()
    assert np.unique(y).size == 2
    pipe = make_head(name, FAST, seed=0).fit(feats[:40], y[:40])
    model = FrozenWithHead(fm, torch_head(pipe)).eval()
    with torch.no_grad():
        got = model.decision(x[40:]).numpy()
        proba = torch.softmax(model(x[40:]), dim=1).numpy()
    np.testing.assert_allclose(got, pipe.decision_function(feats[40:]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(proba, pipe.predict_proba(feats[40:]), atol=1e-5, rtol=0)


def test_every_registered_head_has_a_torch_twin():
    """Grad-CAM can explain every registered head: each has its converter in torch_twin.TWINS, and nothing else does."""
    from featpipe.heads.torch_twin import TWINS

    assert set(TWINS) == set(_heads.names())
