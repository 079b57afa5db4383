"""User-facing errors: one line that says what is wrong and what to do, and an exit code."""

import errno as _errno
import re


class FeatpipeError(Exception):
    """A user mistake or an unavailable resource. The CLI prints ``str(err)`` and exits with ``exit_code``."""

    exit_code = 1


class ConfigError(FeatpipeError):
    """A bad parameter file, unknown key or bad value (exit code 2, like argparse)."""

    exit_code = 2


class DataError(FeatpipeError):
    """Input data that cannot be used as asked (missing files, too few images for k shots, ...)."""


class CacheError(FeatpipeError):
    """A cache whose recorded provenance does not match the request."""


class WeightsError(FeatpipeError):
    """Pretrained weights that cannot be had offline; never silently replaced by random weights."""


class IntegrityError(DataError):
    """A saved file that does not match its recorded hash, or is not what it claims to be."""


_OS_ADVICE = {
    "ENOSPC": "no space left on the device: free some space (or choose another folder) and re-run",
    "EDQUOT": "disk quota exceeded: free some space (or choose another folder) and re-run",
    "EACCES": "permission denied: make it writable (or readable), or choose another folder",
    "EPERM": "operation not permitted: make it writable, or choose another folder",
    "EROFS": "read-only file system: choose a writable folder",
    "ENOTDIR": "a part of this path is a file, not a folder: remove or rename that file",
    "EISDIR": "this is a folder where a file was expected: remove or rename it",
    "ENAMETOOLONG": "file name too long: use shorter names (or a shorter folder)",
    "ENOENT": "no such file or folder",
    "EEXIST": "already exists",
    "EMFILE": "too many open files: raise the limit (ulimit -n) and re-run",
    "EIO": "input/output error: the disk or file system failed; check it and re-run",
}


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the file it concerns and what to do (by errno; HDF5's own
    errors carry the errno in their text)."""
    code = exc.errno
    if code is None:
        m = re.search(r"errno = (\d+)", str(exc))
        code = int(m.group(1)) if m else None
    name = _errno.errorcode.get(code, "") if code is not None else ""
    text = str(exc).strip()
    what = _OS_ADVICE.get(name) or exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
    where = exc.filename if exc.filename is not None else ""
    if not where:
        m = re.search(r"name = '([^']+)'", str(exc))
        where = m.group(1) if m else ""
    if isinstance(where, bytes):
        where = where.decode(errors="replace")
    where = str(where)
    if len(where) > 160:
        where = where[:100] + "..." + where[-50:]
    return f"{where}: {what}" if where else what
