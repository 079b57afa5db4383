"""The ``featpipe`` command line: a thin adapter over library functions.

Each command is a module ``featpipe.cli.commands.<module>`` with two functions:

- ``add_arguments(parser)``: its own flags (the common ``--params`` and ``-S`` are added here);
- ``run(args, params) -> int``: calls the library and returns an exit code.

Modules are imported only when their command runs, so ``featpipe --help`` does not import torch.
A :class:`~featpipe.core.errors.FeatpipeError` becomes one line on stderr and its exit code; so does an
:class:`OSError` (full disk, permissions, read-only file system, wrong path type, name too long: exit 1,
:func:`featpipe.core.errors.os_error_line`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from featpipe.backbones.custom import register_networks
from featpipe.core.errors import FeatpipeError, os_error_line
from featpipe.core.log import install_cli_handler
from featpipe.core.versions import __version__
from featpipe.params.config import load_params

# name -> (module under featpipe.cli.commands, one-line description). A command whose module does not
# exist yet is not listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the whole DVC pipeline offline on the synthetic demo set and tiny backbones, in ./demo"),
    "study": ("study", "run a shipped study preset (studies/<name>.yaml) on your data: featpipe study <name> --data PATH"),
    "fetch": ("fetch", "make the data source available (generate, download or check it) and fingerprint it"),
    "prepare": ("prepare", "build data/manifest.csv, data/rejects.csv and data/splits.json from a folder, CSV, npz or the synthetic set"),
    "backbones": ("backbones", "list the registered backbones with their embedding size, input size and cut points"),
    "decode": ("decode", "decode every image once into the decoded-image cache at a backbone's input resolution"),
    "extract": ("extract", "extract embeddings with a frozen backbone into the HDF5 feature cache"),
    "merge-shards": ("merge_shards", "join the shard files of a --shard i/n extraction into one feature cache"),
    "fit": ("fit", "fit a head (svc, logistic, mlp, prototype) on the k-shot subsets of every seed and score it"),
    "fit-svc": ("fit_svc", "same as 'fit --head svc'"),
    "sweep": ("sweep", "fit the whole grid of backbones x heads x shots x seeds from params.yaml"),
    "zeroshot": ("zeroshot", "score class prompts against cached image embeddings (shots = 0) for text-tower backbones"),
    "predict": ("predict", "classify images with a saved head or fine-tuned model; write per-image probabilities"),
    "finetune": ("finetune", "fine-tune a backbone (scratch, head, layerwise, full, truncated) on the same splits"),
    "gradcam": ("gradcam", "render Grad-CAM heat maps for a saved head or fine-tuned model"),
    "sanity-check": ("sanity_check", "Adebayo et al. model-randomisation check of a model's Grad-CAM maps"),
    "collect": ("collect", "merge the per-stage results tables into results/runs.csv and results/metrics.json"),
    "compare": ("compare", "paired comparisons of configurations by seed (permutation test, Holm) and patient bootstrap -> results/comparisons.csv"),
    "evaluate-external": ("evaluate_external", "score every saved model on the external test sets of evaluate.external -> results/external/<name>/"),
    "report": ("report", "write reports/report.html with learning curves, the seed lottery, ROC/PR curves and Grad-CAM"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {
        name: spec
        for name, spec in COMMANDS.items()
        if importlib.util.find_spec(f"featpipe.cli.commands.{spec[0]}") is not None
    }


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the command named ``load`` has its module imported for its own flags."""
    parser = argparse.ArgumentParser(
        prog="featpipe",
        description="Few-shot medical image classification with frozen features, classical heads and fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"featpipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, helptext) in _available().items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--params", default="params.yaml", metavar="FILE", help="parameter file (default: params.yaml)")
        p.add_argument(
            "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a parameter, e.g. -S split.seeds=[0,1,2] (repeatable)",
        )
        p.add_argument("-v", "--verbose", action="store_true",
                       help="details after the summary table (per-configuration tables, per-epoch lines, ...)")
        if name == load:
            importlib.import_module(f"featpipe.cli.commands.{module}").add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    install_cli_handler()  # the library logs its notices; the CLI prints them as "featpipe: ..." lines
    _line_buffered()  # progress lines show as they come under DVC or a pipe, not at exit
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(load=command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2

        params = load_params(args.params, args.overrides)
        register_networks(params)  # networks of your own (params networks:) are backbones from here on
        module = importlib.import_module(f"featpipe.cli.commands.{COMMANDS[args.command][0]}")
        code = int(module.run(args, params) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except FeatpipeError as exc:
        print(f"featpipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("featpipe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `featpipe predict ... | head`: the reader went away
        _silence_stdout()
        print("featpipe: error: the output pipe was closed before all output was written", file=sys.stderr)
        return 141  # 128 + SIGPIPE, as a shell reports a process killed by a closed pipe
    except OSError as exc:  # a full disk, a read-only or wrong-type path, ...: one line, never a traceback
        print(f"featpipe: error: {os_error_line(exc)}", file=sys.stderr)
        return 1


def _line_buffered() -> None:
    """stdout flushed at every line also when it is not a terminal (``dvc repro`` reads it through a pipe, where
    Python would otherwise hold minutes of progress lines in its buffer)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # absent on a test's or a caller's own stream
    if reconfigure is not None and not sys.stdout.isatty():
        try:
            reconfigure(line_buffering=True)
        except (ValueError, OSError):  # pragma: no cover - a closed stream
            pass


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def entry() -> None:  # console script
    sys.exit(main())
