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


POOLINGS = {"avgpool": "global average pool of the last feature map (CNNs)",
            "cls": "the class token after the final layer norm",
            "mean": "the mean of the patch tokens of the last layer",
            "pooler": "the model's own pooled output (SigLIP: its attention-pooling head)",
            "image_embeds": "the projected image embedding (CLIP-like models: the image tower after its projection)"}


def hf_features(out, features: str, prefix_tokens: int):
    """The embedding ``features`` names from a transformers output: ``pooler`` (``pooler_output``), ``cls``
    (``last_hidden_state[:, 0]``), ``mean`` (mean of the tokens after the ``prefix_tokens`` leading ones)."""
    if features == "pooler":
        return pooled_output(out)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    if features == "cls":
        return hidden[:, 0]
    if features == "mean":
        return hidden[:, prefix_tokens:].mean(dim=1)
    raise ValueError(f"features {features!r} cannot be taken from a {type(out).__name__} (pooler, cls or mean)")


def token_features(tokens, features: str, prefix_tokens: int):
    """``cls`` (the first token) or ``mean`` (the mean of the tokens after the ``prefix_tokens`` leading ones) of
    final-layer tokens ``(B, T, D)``; a feature map ``(B, C, H, W)`` has no tokens (one-line error)."""
    if tokens.ndim != 3:
        raise ValueError(f"features {features!r} need transformer tokens, but the network's last layer gives a "
                         f"{tokens.ndim}-d output")
    if features == "cls":
        return tokens[:, 0]
    if features == "mean":
        return tokens[:, prefix_tokens:].mean(dim=1)
    raise ValueError(f"features {features!r} cannot be taken from tokens (cls or mean)")
