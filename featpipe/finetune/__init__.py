"""Fine-tuning on the same splits and k-shot subsets as the frozen heads.

Modules: :mod:`~featpipe.finetune.strategies` (what trains), :mod:`~featpipe.finetune.augment`
(seeded train-time augmentation), :mod:`~featpipe.finetune.data` (image sources, batches),
:mod:`~featpipe.finetune.loop` (training loop, early stopping, no-grad passes),
:mod:`~featpipe.finetune.checkpoint` (safetensors + JSON sidecar; :func:`load_finetuned` for
``featpipe predict`` and Grad-CAM) and :mod:`~featpipe.finetune.run` (one run, files to files).
"""

from featpipe.finetune.checkpoint import (
           build_model,
           load_finetuned,
           predict_files,
           read_meta,
           save_finetuned,
)
from featpipe.finetune.run import Job, Paths, grid, run_job
from featpipe.finetune.strategies import (
           STRATEGIES,
           FinetuneModel,
           apply_strategy,
           count_trainable,
)

__all__ = ["STRATEGIES", "FinetuneModel", "Job", "Paths", "apply_strategy", "build_model", "count_trainable",
           "grid", "load_finetuned", "predict_files", "read_meta", "run_job", "save_finetuned"]
