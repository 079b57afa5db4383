"""featpipe fit-svc: the same as 'featpipe fit --head svc'."""

from __future__ import annotations

from featpipe.cli.commands import fit as _fit


def add_arguments(parser) -> None:
    _fit.add_arguments(parser, head_flag=False)


def run(args, params) -> int:
    return _fit.run(args, params, head="svc")
