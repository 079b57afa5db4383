"""How a network's output becomes an embedding: the pooled output of a transformers model, and global pooling of
a cut point's feature map or tokens. torch is imported only when a tensor is handled."""

from __future__ import annotations


def pooled_output(out):
    """The pooled embedding of a transformers output (transformers 5: an object with ``pooler_output``)."""
    import torch

    if torch.is_tensor(out):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"{type(out).__name__} has no pooler_output")
    return pooled


def global_pool(x, prefix_tokens: int = 0):
    """(B, C, H, W) -> mean over H, W; (B, T, D) tokens -> mean over the patch tokens."""
    if x.ndim == 4:
        return x.mean(dim=(2, 3))
    if x.ndim == 3:
        return x[:, prefix_tokens:].mean(dim=1)
    return x.flatten(1)
