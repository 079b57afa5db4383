"""Where featpipe writes (issue 21, item 6): every name from params that becomes part of a path is a plain name
(``data.name``, arm and network names), and every output path a command writes by default lies inside the
working directory; a path elsewhere is written only when it is given explicitly on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from featpipe.cli.main import COMMANDS, build_parser, main
from featpipe.core.errors import ConfigError
from featpipe.params.config import load_params

PATH_FLAGS = {"out", "results", "models", "cache", "cache_dir", "manifest", "splits", "rejects"}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_default_path_of_a_command_stays_inside_the_working_directory(command):
    parser = _subparser(build_parser(load=command), command)
    for action in parser._actions:
        default = action.default
        if action.dest in PATH_FLAGS and isinstance(default, str):
            p = Path(default)
            assert not p.is_absolute() and ".." not in p.parts, (command, action.dest, default)


@pytest.mark.parametrize("override", [
    "data.name=../../X", "data.name=/tmp/x", "data.name=a/b",
    "finetune.arms=[{name: ../up, backbone: tiny_cnn, strategy: full}]",
    "networks=[{name: ../net, factory: simple_cnn}]",
])
def test_names_from_params_used_in_paths_are_plain_names(override):
    with pytest.raises(ConfigError) as caught:
        load_params(None, [override])
    assert len(str(caught.value).splitlines()) == 1 and "name" in str(caught.value)


def test_an_output_path_outside_the_working_directory_is_written_when_given_explicitly(tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    (work / "params.yaml").write_text("data: {name: demo, source: synthetic, path: data/synthetic, "
                                      "synthetic: {images_per_class: 6, size: 16}}\n")
    assert main(["fetch", "--out", str(elsewhere / "source.json")]) == 0
    assert (elsewhere / "source.json").is_file() and not (work / "data" / "source.json").exists()
