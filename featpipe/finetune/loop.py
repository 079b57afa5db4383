"""The training loop: AdamW, class-weighted loss or balanced sampling, train-only augmentation,
bf16 autocast and channels_last where supported (the run's :class:`~featpipe.core.runtime.Runtime`, as
extraction decides it), early stopping on val loss with the best epoch's
weights restored, and batched no-grad val/test passes.

A multi-label task (labels an ``(N, L)`` matrix of 1 / 0 / -1 unknown) trains ``L`` outputs with binary cross
entropy on logits (``BCEWithLogits``) over the known cells only (:func:`masked_bce`), each label's positives
weighted by its negatives / positives ratio under ``imbalance: weighted_loss`` (:func:`label_pos_weight`; the
balanced sampler is for single-label tasks), and outputs sigmoid probabilities per label.

Randomness: data order, sampling and augmentation draw from one ``torch.Generator`` seeded with the
run's seed. Randomness inside the network (dropout, stochastic depth) uses torch's global RNG, so the
loop runs inside ``torch.random.fork_rng`` seeded from the same seed: the caller's RNG state is
restored afterwards. Same seed, same machine, same thread count: same weights and the same metrics.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from featpipe.core.runtime import Runtime
from featpipe.finetune.augment import Augment
from featpipe.finetune.data import ImageSource, Labeled, Prep, eval_batch, train_batch
from featpipe.finetune.strategies import set_train_mode


@dataclass(frozen=True)
class TrainConfig:
    """What the loop needs from ``FinetuneParams`` (see :meth:`from_params`)."""

    weight_decay: float = 1e-4
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: int = 50
    patience: int = 10
    imbalance: str = "weighted_loss"
    augment: Augment | None = field(default_factory=Augment)

    @classmethod
    def from_params(cls, p) -> TrainConfig:
        return cls(weight_decay=p.weight_decay, batch_size=p.batch_size, eval_batch_size=p.eval_batch_size,
                   epochs=p.epochs, patience=p.patience, imbalance=p.imbalance,
                   augment=Augment.from_params(p) if p.augment else None)


@dataclass
class TrainResult:
    history: list = field(default_factory=list)  # one dict per epoch
    best_epoch: int = 0
    best_val_loss: float = math.inf
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """``n / (C * n_c)`` per class (1 for a class absent from ``labels``)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, labels.size / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def label_pos_weight(labels: np.ndarray) -> torch.Tensor:
    """Multi-label: per label, negatives / positives among its known cells (1 where either is missing)."""
    pos, neg = (labels == 1).sum(axis=0).astype(np.float64), (labels == 0).sum(axis=0).astype(np.float64)
    return torch.tensor(np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)


def masked_bce(logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean binary cross entropy on logits over the known cells of ``y`` (1 / 0; -1 unknown: left out)."""
    known = (y >= 0).float()
    per = nn.functional.binary_cross_entropy_with_logits(logits, y.clamp(min=0).float(), reduction="none",
                                                         pos_weight=pos_weight)
    return (per * known).sum() / known.sum().clamp(min=1.0)


def epoch_order(labels: np.ndarray, *, balanced: bool, g: torch.Generator) -> np.ndarray:
    """Indices for one epoch: a permutation, or (balanced) ``n`` draws with replacement, each class
    equally likely."""
    n = len(labels)
    if not balanced:
        return torch.randperm(n, generator=g).numpy()
    counts = np.bincount(labels)
    w = torch.tensor(1.0 / counts[labels], dtype=torch.float64)
    return torch.multinomial(w, n, replacement=True, generator=g).numpy()


def batches(order: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive chunks; a last chunk of one image joins the previous one (BatchNorm needs two)."""
    chunks = [order[i:i + size] for i in range(0, order.size, size)]
    if len(chunks) > 1 and chunks[-1].size == 1:
        last = chunks.pop()
        chunks[-1] = np.concatenate([chunks[-1], last])
    return chunks


@torch.no_grad()
def embed_or_logits(model: nn.Module, source: ImageSource, ids, *, prep: Prep, rt: Runtime,
                    batch_size: int, part: nn.Module | None = None) -> torch.Tensor:
    """Batched no-grad forward of ``part`` (default: the whole model) over ``ids``; float32 on CPU."""
    part = model if part is None else part
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(ids), batch_size):
            out.append(rt.forward(part, eval_batch(source.read(ids[i:i + batch_size]), prep)))
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.empty(0)


def predict_proba(model: nn.Module, source: ImageSource, ids, *, prep: Prep, rt: Runtime,
                  batch_size: int = 64, multilabel: bool = False) -> np.ndarray:
    """Softmax probabilities ``(n, C)`` (float64) in the order of ``ids``; ``multilabel``: sigmoid per label."""
    logits = embed_or_logits(model, source, list(ids), prep=prep, rt=rt, batch_size=batch_size)
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).double().numpy()


def _val_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None) -> float:
    return float(nn.functional.cross_entropy(logits, y, weight=weight).item())


def _train_epoch(model: nn.Module, source: ImageSource, train_set: Labeled, ytr: torch.Tensor, *,
                 optimizer: torch.optim.Optimizer, loss_fn, cfg: TrainConfig, prep: Prep, rt: Runtime,
                 g: torch.Generator) -> tuple[float, int]:
    """One pass over the k-shot images in the epoch's seeded order; (summed loss, images seen)."""
    set_train_mode(model)
    order = epoch_order(train_set.labels, balanced=cfg.imbalance == "balanced_sampler", g=g)
    total, seen = 0.0, 0
    for idx in batches(order, cfg.batch_size):
        ids = [train_set.ids[i] for i in idx]
        x = rt.inputs(train_batch(source.read(ids), prep, aug=cfg.augment, g=g))
        y = ytr[idx].to(rt.device)
        with rt.autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.item()) * len(idx)
        seen += len(idx)
    return total, seen


def _val_logits(model: nn.Module, source: ImageSource, val_set: Labeled, val_emb, *, prep: Prep, rt: Runtime,
                cfg: TrainConfig) -> torch.Tensor:
    """float32 val logits on the CPU: the head on the val embeddings computed once (frozen backbone), else the
    whole model on the val images."""
    if val_emb is not None:
        model.eval()
        with torch.no_grad(), rt.autocast():
            return model.head(val_emb.to(rt.device)).float().cpu()
    return embed_or_logits(model, source, val_set.ids, prep=prep, rt=rt, batch_size=cfg.eval_batch_size)


def train(model: nn.Module, source: ImageSource, train_set: Labeled, val_set: Labeled, *,
          optimizer: torch.optim.Optimizer, cfg: TrainConfig, prep: Prep, rt: Runtime, seed: int,
          n_classes: int, val_metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None,
          log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model`` (already on ``rt.device``, strategy applied) in place; restore the best-val epoch.

    Val loss is cross entropy weighted so each val class counts equally (plain mean with
    ``imbalance="none"``); multi-label (labels ``(N, L)``): :func:`masked_bce` with val's own per-label weights. ``val_metrics(y_val, proba_val)`` adds entries to each epoch's record.
    """
    g = torch.Generator().manual_seed(int(seed))
    ytr = torch.as_tensor(train_set.labels)
    yva = torch.as_tensor(val_set.labels)
    multilabel = train_set.labels.ndim == 2
    if multilabel:
        pw = label_pos_weight(train_set.labels).to(rt.device) if cfg.imbalance == "weighted_loss" else None
        w_val = label_pos_weight(val_set.labels) if cfg.imbalance != "none" else None
        loss_fn = lambda logits, y: masked_bce(logits, y, pw)  # noqa: E731
        val_loss = lambda logits, y, w: float(masked_bce(logits, y, w).item())  # noqa: E731
    else:
        w_train = class_weights(train_set.labels, n_classes) if cfg.imbalance == "weighted_loss" else None
        w_val = class_weights(val_set.labels, n_classes) if cfg.imbalance != "none" else None
        loss_fn = nn.CrossEntropyLoss(weight=None if w_train is None else w_train.to(rt.device))
        val_loss = _val_loss
    frozen_backbone = not any(p.requires_grad for p in model.features.parameters())
    res = TrainResult()
    best_state = None
    bad = 0
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[rt.device.index or 0] if rt.device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        val_emb = None
        if frozen_backbone:  # the frozen backbone is a fixed function: embed val once
            val_emb = embed_or_logits(model, source, val_set.ids, prep=prep, rt=rt,
                                      batch_size=cfg.eval_batch_size, part=model.features)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            total, seen = _train_epoch(model, source, train_set, ytr, optimizer=optimizer, loss_fn=loss_fn, cfg=cfg,
                                       prep=prep, rt=rt, g=g)
            t_train = time.perf_counter() - t0
            logits = _val_logits(model, source, val_set, val_emb, prep=prep, rt=rt, cfg=cfg)
            vloss = val_loss(logits, yva, w_val)
            rec = {"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": vloss,
                   "seconds": time.perf_counter() - t0, "train_seconds": t_train,
                   "train_images_per_s": seen / t_train if t_train > 0 else math.nan}
            if val_metrics is not None:
                probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)
                rec.update(val_metrics(val_set.labels, probs.double().numpy()))
            if not math.isfinite(vloss):
                rec["note"] = "non-finite val loss"
            improved = math.isfinite(vloss) and vloss < res.best_val_loss
            if improved:
                res.best_val_loss, res.best_epoch, bad = vloss, epoch, 0
                best_state = copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})
            else:
                bad += 1
            rec["best"] = improved
            res.history.append(rec)
            res.epochs_run = epoch
            if log is not None:
                log(rec)
            if bad >= cfg.patience:
                res.stopped_early = epoch < cfg.epochs
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    res.seconds = time.perf_counter() - start
    return res
