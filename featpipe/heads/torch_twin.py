"""A fitted head as a differentiable torch module, and a frozen backbone plus that head as one model.

:func:`torch_head` turns a fitted head pipeline (``StandardScaler`` -> optional L2 ``Normalizer`` ->
a registered head, :mod:`featpipe.heads.registry`, each converted by its twin in :data:`TWINS`) into a :class:`TorchHead` whose :meth:`TorchHead.decision`
equals the pipeline's ``decision_function`` on the same features (float64 inside, so to ~1e-12) and whose
``forward`` returns per-class logits whose softmax equals the pipeline's ``predict_proba``:

- logistic regression and linear SVC (binary): one ``nn.Linear`` with the scaler folded in;
- RBF SVC: the kernel expansion ``sum_i a_i exp(-gamma |x - sv_i|^2) + b`` over the support vectors,
  binary or one-vs-one multi-class (scikit-learn's vote + confidence "ovr" shape, whose confidence
  part carries the gradient); a multi-class linear SVC is the same expansion with a linear kernel;
- MLP: its two layers (the span projection folded into the first);
- nearest prototype: cosine similarity to the class means (logits = similarity / temperature);
- kNN: the temperature-weighted soft vote over the k most similar training images (logits = log votes); the
  choice of the k neighbours is piecewise constant, the gradient flows through their similarities.

Binary heads have one decision value d; their logits are ``[-d/2, d/2]`` (times 1/temperature for the
prototype), so that softmax gives the head's sigmoid probability and the map of class 0 explains -d.

:class:`FrozenWithHead` chains a backbone :class:`~featpipe.backbones.model.FeatureModel` and a
:class:`TorchHead`: normalised images -> class logits, the model Grad-CAM explains.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC
from torch import nn

from featpipe.core.errors import ConfigError, FeatpipeError
from featpipe.heads.registry import spec_for

DTYPE = torch.float64


def _t(a) -> torch.Tensor:
    return torch.tensor(np.array(a, dtype=np.float64), dtype=DTYPE)


class Affine(nn.Module):
    """``(x - mean) / scale`` (a fitted StandardScaler)."""

    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", _t(mean))
        self.register_buffer("scale", _t(scale))

    def forward(self, x):
        return (x - self.mean) / self.scale


class L2Normalize(nn.Module):
    def forward(self, x):
        return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-300)


class KernelExpansion(nn.Module):
    """libsvm's decision values: one per class pair (i, j), i < j, positive = class i.

    ``dual`` (C-1, n_sv), ``sv`` (n_sv, D), ``n_support`` per class, ``intercept`` (pairs,). Binary
    models use scikit-learn's public sign (positive = class 1) and give one value.
    """

    def __init__(self, sv, dual, intercept, n_support, *, kernel: str, gamma: float):
        super().__init__()
        self.kernel, self.gamma = kernel, float(gamma)
        self.sv = nn.Parameter(_t(sv), requires_grad=False)
        self.dual = nn.Parameter(_t(dual), requires_grad=False)
        self.intercept = nn.Parameter(_t(intercept), requires_grad=False)
        self.n_support = [int(n) for n in n_support]

    def _kernel(self, x):
        dot = x @ self.sv.T
        if self.kernel == "linear":
            return dot
        sq = (x * x).sum(1, keepdim=True) + (self.sv * self.sv).sum(1)[None, :] - 2.0 * dot
        return torch.exp(-self.gamma * sq.clamp_min(0.0))

    def forward(self, x):
        K = self._kernel(x)
        n = len(self.n_support)
        if n == 2:
            return K @ self.dual[0] + self.intercept[0]
        start = np.concatenate([[0], np.cumsum(self.n_support)])
        out, p = [], 0
        for i in range(n):
            for j in range(i + 1, n):
                si, sj = slice(start[i], start[i + 1]), slice(start[j], start[j + 1])
                out.append(K[:, si] @ self.dual[j - 1, si] + K[:, sj] @ self.dual[i, sj] + self.intercept[p])
                p += 1
        return torch.stack(out, dim=1)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random dual coefficients of the same scale (the sanity check's re-initialisation)."""
        with torch.no_grad():
            std = float(self.dual.std()) if self.dual.numel() > 1 else 1.0
            self.dual.copy_(torch.randn(self.dual.shape, generator=generator, dtype=DTYPE) * std)


def ovr_from_ovo(dec: torch.Tensor, n_classes: int) -> torch.Tensor:
    """scikit-learn's ``_ovr_decision_function(dec < 0, -dec, n)``: votes + confidences / (3(|c| + 1))."""
    votes = torch.zeros(dec.shape[0], n_classes, dtype=dec.dtype, device=dec.device)
    conf = torch.zeros_like(votes)
    k = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            d = dec[:, k]
            conf[:, i] = conf[:, i] + d
            conf[:, j] = conf[:, j] - d
            votes[:, i] += (d >= 0).to(dec.dtype)  # dec < 0 votes for j, else i
            votes[:, j] += (d < 0).to(dec.dtype)
            k += 1
    return votes + conf / (3.0 * (conf.abs() + 1.0))


class Prototypes(nn.Module):
    """Cosine similarity to each (unit) class prototype, (B, C)."""

    def __init__(self, prototypes):
        super().__init__()
        self.prototypes = nn.Parameter(_t(prototypes), requires_grad=False)

    def forward(self, x):
        xn = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
        return xn @ self.prototypes.T

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            p = torch.randn(self.prototypes.shape, generator=generator, dtype=DTYPE)
            self.prototypes.copy_(p / torch.linalg.vector_norm(p, dim=1, keepdim=True))


class SoftVote(nn.Module):
    """log of the kNN head's votes, (B, C): the ``k`` most cosine-similar training images (unit rows ``train``, kept
    as ``references``; labels ``labels``) vote with ``exp(similarity / temperature)``; a class without a vote gets log(1e-300)."""

    def __init__(self, train, labels, n_classes: int, *, k: int, temperature: float):
        super().__init__()
        self.references = nn.Parameter(_t(train), requires_grad=False)
        self.register_buffer("onehot", torch.nn.functional.one_hot(torch.as_tensor(np.asarray(labels, dtype=np.int64)),
                                                                   n_classes).to(DTYPE))
        self.k, self.temperature = int(min(k, len(labels))), float(temperature)

    def forward(self, x):
        xn = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
        s = xn @ self.references.T
        # a stable descending sort (ties: lower training index first), as the scikit-learn head
        idx = torch.sort(-s.detach(), dim=1, stable=True).indices[:, :self.k]
        w = torch.exp(torch.gather(s, 1, idx) / self.temperature)
        votes = torch.einsum("bk,bkc->bc", w, self.onehot[idx])
        return torch.log(votes.clamp_min(1e-300))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            p = torch.randn(self.references.shape, generator=generator, dtype=DTYPE)
            self.references.copy_(p / torch.linalg.vector_norm(p, dim=1, keepdim=True))


class TorchHead(nn.Module):
    """Features (B, D) -> class logits (B, C); :meth:`decision` = the head's ``decision_function``.

    ``kind`` names the head (``logistic``, ``svc-linear``, ``svc-rbf``, ``mlp``, ``prototype``);
    ``classes`` are the fitted ``classes_``. Computes in float64; inputs of any float dtype are cast.
    """

    def __init__(self, pre: nn.Module, core: nn.Module, *, kind: str, classes, decision_kind: str,
                 temperature: float = 1.0):
        super().__init__()
        self.pre, self.core = pre, core
        self.kind = kind
        self.classes = list(np.asarray(classes).tolist())
        self.decision_kind = decision_kind  # "binary" | "scores" | "ovo"
        self.temperature = float(temperature)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        z = self.core(self.pre(x.to(DTYPE)))
        if self.decision_kind == "ovo":
            return ovr_from_ovo(z, self.n_classes)
        if self.decision_kind == "binary" and z.ndim == 2:
            z = z[:, 0] if z.shape[1] == 1 else z[:, 1] - z[:, 0]
        if self.decision_kind == "similarity" and self.n_classes == 2:
            z = z[:, 1] - z[:, 0]
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.decision(x)
        if d.ndim == 1:
            d = torch.stack([-d / 2, d / 2], dim=1)
        return d / self.temperature

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x), dim=1)


class FrozenWithHead(nn.Module):
    """``feature_model`` (normalised images -> embeddings) then ``head`` (a :class:`TorchHead`): images ->
    class logits. The backbone's parameters stay frozen; Grad-CAM gets its gradients through the input."""

    def __init__(self, feature_model: nn.Module, head: TorchHead):
        super().__init__()
        self.features = feature_model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.decision(self.features(x))


# --------------------------------------------------------------------------- conversion


def _preprocessing(steps) -> tuple[list[nn.Module], tuple[np.ndarray, np.ndarray] | None]:
    mods: list[nn.Module] = []
    for name, step in steps:
        if step is None or step == "passthrough":
            continue
        if isinstance(step, StandardScaler):
            mean = step.mean_ if step.with_mean and step.mean_ is not None else np.zeros(step.n_features_in_)
            scale = step.scale_ if step.with_std and step.scale_ is not None else np.ones(step.n_features_in_)
            mods.append(Affine(mean, scale))
        elif isinstance(step, Normalizer) and step.norm == "l2":
            mods.append(L2Normalize())
        else:
            raise FeatpipeError(f"cannot explain a head with a '{name}' step ({type(step).__name__}): "
                                "only StandardScaler and an L2 Normalizer are supported")
    return mods, None


def linear(coef, intercept) -> nn.Linear:
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    lin = nn.Linear(coef.shape[1], coef.shape[0], dtype=DTYPE)
    with torch.no_grad():
        lin.weight.copy_(_t(coef))
        lin.bias.copy_(_t(np.ravel(intercept)))
    lin.requires_grad_(False)
    return lin


def fold(pre: list[nn.Module], lin: nn.Linear) -> tuple[list[nn.Module], nn.Linear]:
    """Fold a trailing Affine (scaler) into the linear layer: W/s, b - W @ (m/s)."""
    if not pre or not isinstance(pre[-1], Affine):
        return pre, lin
    aff = pre[-1]
    with torch.no_grad():
        w = lin.weight / aff.scale
        b = lin.bias - w @ aff.mean
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return pre[:-1], lin


# --------------------------------------------------------------------------- one twin per registered head
# Each: (fitted classifier, preprocessing modules) -> (pre, core, kind, decision kind, temperature).


def svc_twin(clf, pre):
    """A fitted FewShotSVC or bare ``sklearn.svm.SVC``: a kernel expansion (a linear binary SVC: one Linear)."""
    svc = clf if isinstance(clf, SVC) else clf.svc_
    classes = svc.classes_
    gamma = float(getattr(svc, "_gamma", svc.gamma))
    if svc.kernel == "linear" and len(classes) == 2:
        pre, lin = fold(pre, linear(svc.coef_, svc.intercept_))
        return pre, lin, "svc-linear", "binary", 1.0
    if svc.kernel not in ("linear", "rbf"):
        raise FeatpipeError(f"cannot explain an SVC with kernel {svc.kernel!r} (linear and rbf are supported)")
    core = KernelExpansion(svc.support_vectors_, svc.dual_coef_, svc.intercept_, svc.n_support_,
                           kernel=svc.kernel, gamma=gamma)
    return pre, core, f"svc-{svc.kernel}", "binary" if len(classes) == 2 else "ovo", 1.0


def logistic_twin(clf, pre):
    """A fitted FewShotLogistic or bare LogisticRegression: one Linear, the scaler folded in."""
    est = getattr(clf, "estimator_", clf)
    pre, core = fold(pre, linear(est.coef_, est.intercept_))
    return pre, core, "logistic", "binary" if len(est.classes_) == 2 else "scores", 1.0


def mlp_twin(clf, pre):
    """A fitted MLPHead: its two layers, the span projection folded into the first."""
    w1 = np.asarray(clf.w1_, dtype=np.float64)
    if getattr(clf, "proj_", None) is not None:
        w1 = w1 @ np.asarray(clf.proj_, dtype=np.float64).T
    pre, first = fold(pre, linear(w1, clf.b1_))
    kind = "binary" if len(clf.classes_) == 2 else "scores"
    return pre, nn.Sequential(first, nn.ReLU(), linear(clf.w2_, clf.b2_)), "mlp", kind, 1.0


def prototype_twin(clf, pre):
    """A fitted NearestPrototype: cosine similarity to the class prototypes."""
    return pre, Prototypes(clf.prototypes_), "prototype", "similarity", float(clf.temperature)


def knn_twin(clf, pre):
    """A fitted KNNHead: the soft vote over its k nearest training images (logits = log votes)."""
    core = SoftVote(clf.train_, clf.y_, len(clf.classes_), k=clf.k_, temperature=clf.temperature)
    return pre, core, "knn", "similarity", 1.0


def textlogistic_twin(clf, pre):
    """A fitted TextPriorLogistic: one Linear (binary: the class-1 minus class-0 row), the scaler folded in."""
    pre, core = fold(pre, linear(clf.coef_, clf.intercept_))
    return pre, core, "textlogistic", "binary" if len(clf.classes_) == 2 else "scores", 1.0


TWINS = {"knn": knn_twin, "textlogistic": textlogistic_twin, "logistic": logistic_twin, "mlp": mlp_twin, "prototype": prototype_twin, "svc": svc_twin}


def _core(clf, pre: list[nn.Module]):
    """(pre, core, kind, decision kind, temperature) of a fitted classifier: the registered head's twin
    (a bare scikit-learn ``SVC`` / ``LogisticRegression`` through the head that wraps it)."""
    try:
        spec = spec_for(clf)
    except ConfigError:
        raise FeatpipeError(f"cannot explain a head of type {type(clf).__name__} (known: {', '.join(TWINS)})"
                            ) from None
    return TWINS[spec.name](clf, pre)


def torch_head(pipeline) -> TorchHead:
    """The fitted head ``pipeline`` (or a bare fitted classifier) as a :class:`TorchHead` (eval mode)."""
    steps = list(pipeline.steps) if hasattr(pipeline, "steps") else [("clf", pipeline)]
    clf = steps[-1][1]
    if not hasattr(clf, "classes_"):
        raise FeatpipeError("the head is not fitted: nothing to explain")
    pre, _ = _preprocessing(steps[:-1])
    pre, core, kind, dk, temperature = _core(clf, pre)
    head = TorchHead(nn.Sequential(*pre), core, kind=kind, classes=clf.classes_, decision_kind=dk,
                     temperature=temperature)
    return head.eval().requires_grad_(False)
