"""featpipe backbones: the registered backbones (embedding, features, preprocessing, default weights, cut points),
and how to name any other backbone of timm, Hugging Face, open_clip or torchxrayvision."""

from __future__ import annotations

from featpipe.backbones.forward import POOLINGS
from featpipe.backbones.registry import get, names
from featpipe.core.errors import FeatpipeError

NAMING = """Other backbones, by library (wherever a backbone name is accepted: --backbone, extract.backbones,
finetune.backbones; quote names with ':' '/' '#' in YAML and shells):
  timm:<name>                    a timm model (timm:resnet50.a1_in1k); needs featpipe[timm]
  hf:<hub id or folder>          a Hugging Face vision model with a preprocessor_config.json (hf:facebook/dinov2-small)
  open_clip:hf-hub:<org>/<repo>  an open_clip image tower from the hub; needs featpipe[open_clip]
  open_clip:<arch>/<tag>         a built-in open_clip model (open_clip:ViT-B-32/laion2b_s34b_b79k)
  xrv:<weights>                  a torchxrayvision DenseNet (xrv:densenet121-res224-chex); needs featpipe[xrv]
  <name>#<features>              the same backbone embedding other features, one of:
""" + "".join(f"    {k:<13}{v}\n" for k, v in POOLINGS.items()) + """Default weights come from each library's cache
(Hugging Face: HF_HOME; torchxrayvision: FEATPIPE_XRV_CACHE or ~/.torchxrayvision/models_data), downloaded
only when online (FEATPIPE_OFFLINE=1 forbids it)."""


def add_arguments(parser) -> None:
    parser.add_argument("--all", action="store_true", help="also list the tiny test backbones")


def _row(name: str) -> tuple[str, ...]:
    try:
        s = get(name)
        features = s.features + (f" (or {', '.join(f for f in s.traits.poolings if f != s.features)})"
                                 if len(s.traits.poolings) > 1 else "")
        cuts = ", ".join(f"{k} ({d})" for k, d in s.layers.items())
        return (s.name, s.family, str(s.embed_dim), features, s.pretrained or s.default_weights,
                s.gradcam_layer or "-", cuts, s.preprocess.describe())
    except FeatpipeError as exc:  # a named member whose library is not installed
        return (name, "-", "-", "-", "-", "-", "", str(exc))


def run(args, params) -> int:
    rows = [("name", "family", "dim", "features", "default weights", "grad-cam layer", "cut points (dim)")]
    details = {}
    for name in names(tiny=None if args.all else False):
        *row, pre = _row(name)
        rows.append(tuple(row))
        details[row[0]] = pre
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        if r[0] in details:
            print("    preprocessing: " + details[r[0]])
    print()
    print(NAMING)
    return 0
