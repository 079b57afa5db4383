"""Classification heads on frozen embeddings.

- :mod:`~featpipe.heads.registry`: the one list of heads (``names``, ``make_head``, ``head_params``, ``spec_for``);
- one module per head: :mod:`~featpipe.heads.svc`, :mod:`~featpipe.heads.logistic`, :mod:`~featpipe.heads.mlp`,
  :mod:`~featpipe.heads.prototype`, :mod:`~featpipe.heads.knn` (their parameters: :mod:`featpipe.params.heads`);
- :mod:`~featpipe.heads.base`: the pipeline every head is (scaler -> [L2] -> classifier), the in-k-shot CV;
- :mod:`~featpipe.heads.scaling`: the feature standardiser in front of every head;
- :mod:`~featpipe.heads.torch_twin`: a fitted head as a torch module (Grad-CAM);
- :mod:`~featpipe.heads.io`: saved heads (skops archive + sealed JSON sidecar).
"""
