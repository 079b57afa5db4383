"""featpipe's notices go through :mod:`logging` (logger ``"featpipe"``); library code never prints.

A notice is something a user must see even when nothing is wrong yet: waiting for another process's build,
a cache rebuilt because it was made for another request, leftovers of an interrupted run removed. They must
never be silent, in a notebook or a script with no logging configured either, so the ``featpipe`` logger
carries one handler that writes ``featpipe: <message>`` lines to ``sys.stderr`` (whatever it is at the time),
and does not propagate (no line printed twice under an application's own root handler).

To route featpipe's records through your own logging configuration instead, call :func:`use_root_logging`
(removes that handler, propagates to the root logger). The command line calls :func:`install_cli_handler`,
which also shows INFO records.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("featpipe")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not the stream of install time)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - a closed or broken stderr must not fail the run
            self.handleError(record)


def _ensure_handler() -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("featpipe: %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False


def notice(msg: str) -> None:
    """One line a user should see (WARNING on the ``featpipe`` logger)."""
    logger.warning(msg)


def install_cli_handler(level: int = logging.INFO) -> None:
    """The CLI's setting: ``featpipe: <message>`` lines on stderr, INFO records included."""
    _ensure_handler()
    logger.setLevel(level)


def use_root_logging() -> None:
    """Send featpipe's records to the root logger's handlers (your logging configuration) instead of stderr."""
    for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(h)
    logger.propagate = True


_ensure_handler()
