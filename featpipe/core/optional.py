"""Optional dependencies (the extras of ``pyproject.toml``): present and new enough, or one clear error.

:func:`require` is called where a feature that needs an extra starts (DICOM decoding, the Ray engine), so a
missing or too-old package stops the command with one line that says what to install, instead of surfacing
later as a per-file reject reason or an ``AttributeError`` deep inside the package. A check that passed is
remembered for the life of the process (it runs once per DICOM file otherwise).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re

from featpipe.core.errors import FeatpipeError

_passed: set[tuple[str, str]] = set()


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``"3.0.1rc2"`` -> ``(3, 0, 1)``, ``"2.60"`` -> ``(2, 60)``."""
    parts = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def require(module: str, minimum: str, *, extra: str, why: str, dist: str | None = None) -> None:
    """Raise :class:`~featpipe.core.errors.FeatpipeError` unless ``module`` imports and its distribution
    (``dist``, default ``module``) is at least ``minimum``; the message names ``why`` it is needed and the
    ``featpipe[extra]`` install command."""
    if (module, minimum) in _passed:
        return
    dist = dist or module
    hint = f"pip install 'featpipe[{extra}]' (or '{dist}>={minimum}')"
    try:
        importlib.import_module(module)
        found = importlib.metadata.version(dist)
    except (ImportError, importlib.metadata.PackageNotFoundError):
        raise FeatpipeError(f"{dist}>={minimum} is needed for {why}, but it is not installed: {hint}") from None
    if version_tuple(found) < version_tuple(minimum):
        raise FeatpipeError(f"{dist}>={minimum} is needed for {why}, but {dist} {found} is installed: {hint}")
    _passed.add((module, minimum))
