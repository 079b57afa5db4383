"""featpipe backbones: the registered backbones with embedding size, input size, weights and cut points."""

from __future__ import annotations

from featpipe.backbones.registry import get, names
from featpipe.finetune.strategies import strategy_rules


def add_arguments(parser) -> None:
    parser.add_argument("--all", action="store_true", help="also list the tiny test backbones")
    parser.add_argument("--details", action="store_true",
                        help="also what each fine-tuning strategy freezes and trains, per backbone")


def run(args, params) -> int:
    rows = [("name", "family", "dim", "input", "default weights", "grad-cam layer", "cut points (dim)")]
    for name in names(tiny=None if args.all else False):
        s = get(name)
        cuts = ", ".join(f"{k} ({d})" for k, d in s.layers.items())
        rows.append((s.name, s.family, str(s.embed_dim), f"{s.preprocess.input_size}/{s.preprocess.resize_size}",
                     s.pretrained or s.default_weights, s.gradcam_layer, cuts))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    if args.details:
        for name in names(tiny=None if args.all else False):
            s = get(name)
            print(f"\n{s.name} ({s.family}): what fine-tuning trains")
            for strategy, text in strategy_rules(s.family):
                print(f"  {strategy:<10}{text}")
    return 0
