"""Explanations: Grad-CAM of fine-tuned models and of frozen backbones with fitted heads.

- :mod:`~featpipe.heads.torch_twin`: a fitted head as a torch module; ``FrozenWithHead``;
- :mod:`~featpipe.explain.gradcam`: Grad-CAM on the backbone's registered layer (token grids reshaped);
- :mod:`~featpipe.explain.sanity`: the Adebayo et al. model-randomisation check;
- :mod:`~featpipe.explain.select`: a balanced choice of test outcomes (TP/TN/FP/FN);
- :mod:`~featpipe.explain.render`: PNGs, grid and index;
- :mod:`~featpipe.explain.run`: saved model (loaded by :func:`featpipe.saved.load.load_model`) -> files.

Submodules import torch; this package file imports nothing heavy.
"""
