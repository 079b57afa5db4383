"""Long steps say how far they are in plain lines when stderr is not a terminal (a `dvc repro` log, CI):
no carriage-return bars, lines chosen by counts only."""

from __future__ import annotations

import logging
import re

from featpipe.cli.main import main
from featpipe.core.log import logger
from featpipe.core.progress import LineProgress, progress


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_line_progress_says_each_crossed_tenth_and_the_end_once():
    h = _Lines()
    logger.addHandler(h)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        bar = LineProgress(25, "extract x")
        for _ in range(6):
            bar.update(4)  # 4, 8, ..., 24: crosses tenths 1, 3, 4, 6, 8, 9
        bar.update(1)
        bar.close()
        bar.close()
    finally:
        logger.removeHandler(h)
        logger.setLevel(old)
    counts = [int(re.match(r"extract x: (\d+)/25 img", line).group(1)) for line in h.lines]
    assert counts == [4, 8, 12, 16, 20, 24, 25]
    assert h.lines[-1].startswith("extract x: 25/25 img (100%, ")


def test_progress_off_or_empty_is_silent_and_not_a_terminal_gives_lines(capsys):
    assert not isinstance(progress(10, "d", enabled=False), LineProgress)
    assert not isinstance(progress(0, "d"), LineProgress)
    assert isinstance(progress(10, "d"), LineProgress)  # pytest's captured stderr is not a terminal


def test_prepare_and_extract_print_plain_progress_lines_off_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    (tmp_path / "params.yaml").write_text(
        "data: {name: demo, source: synthetic, path: data/synthetic, synthetic: {images_per_class: 16, size: 32}}\n"
        "split: {seeds: [0], shots: [5], val_fraction: 0.2, test_fraction: 0.2}\n"
        "extract: {backbones: [tiny_cnn], precision: fp32, device: cpu, batch_size: 8}\n")
    assert main(["prepare"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.search(r"featpipe: decode: 32/32 img \(100%, [\d.]+ s\)", err), err
    assert main(["extract"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    done = re.findall(r"featpipe: extract tiny_cnn: (\d+)/32 img", err)
    assert done == ["8", "16", "24", "32"], err
