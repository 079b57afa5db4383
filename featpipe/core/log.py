"""featpipe's notices go through :mod:`logging` (logger ``"featpipe"``); the library never prints.

A notice is something a user should see even when nothing is wrong yet: waiting for another process's build,
a cache rebuilt because it was made for another request, leftovers of an interrupted run removed. They are
logged at WARNING so that a notebook without any logging configuration still shows them (Python's last-resort
handler writes them to stderr). The command line installs :func:`install_cli_handler`, which prints each as
one ``featpipe: <message>`` line on stderr, as the CLI always has.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("featpipe")


def notice(msg: str) -> None:
    """One line a user should see (logged at WARNING on the ``featpipe`` logger)."""
    logger.warning(msg)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not the stream of install time)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - a closed or broken stderr must not fail the run
            self.handleError(record)


def install_cli_handler(level: int = logging.INFO) -> None:
    """The CLI's handler: ``featpipe: <message>`` lines on stderr (installed once per process)."""
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("featpipe: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
