"""Progress of long loops (decode, extract): a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws one line with carriage returns: in a `dvc repro` log, a CI job or a file it is one unreadable line
written at the end, or nothing for minutes. When ``sys.stderr`` is not a terminal, :func:`progress` returns a
:class:`LineProgress` instead: a notice (``featpipe: <desc>: 640/3166 img (20%, 12.3 s)``) each time another tenth
of the work is done and one at the end, through featpipe's logger (shown by the command line; see
:mod:`featpipe.core.log`). Which lines appear depends only on the counts, never on the clock.
"""

from __future__ import annotations

import sys
import time

from featpipe.core.log import logger


class LineProgress:
    """The bar's ``update``/``close`` as plain lines: one per crossed tenth of ``total`` and one at the end."""

    def __init__(self, total: int, desc: str, *, unit: str = "img", initial: int = 0, steps: int = 10):
        self.total, self.desc, self.unit, self.n, self.steps = int(total), desc, unit, int(initial), steps
        self._t0 = time.perf_counter()
        self._step = self._step_of(self.n)
        self._closed = False

    def _step_of(self, n: int) -> int:
        return (n * self.steps) // self.total if self.total > 0 else self.steps

    def _line(self) -> None:
        pct = 100.0 * self.n / self.total if self.total else 100.0
        logger.info("%s: %d/%d %s (%.0f%%, %.1f s)", self.desc, self.n, self.total, self.unit, pct,
                    time.perf_counter() - self._t0)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        step = self._step_of(self.n)
        if step > self._step and self.n < self.total:
            self._line()
        self._step = step

    def close(self) -> None:
        if not self._closed and self.n > 0:
            self._line()
        self._closed = True


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, *, enabled: bool = True, unit: str = "img", initial: int = 0,
             leave: bool = True):
    """A progress object with ``update(n)`` and ``close()``: nothing when not ``enabled``, a tqdm bar when
    ``sys.stderr`` is a terminal, :class:`LineProgress` otherwise."""
    if not enabled or total <= 0:
        return _NoProgress()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, leave=leave, dynamic_ncols=True)
    return LineProgress(total, desc, unit=unit, initial=initial)
