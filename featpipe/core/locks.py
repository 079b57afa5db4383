"""Coordination between processes that build the same file, and cleaning up after dead ones.

- :func:`build_lock`: featpipe's one lock, an exclusive ``flock`` on ``<dir>/.<name>.lock`` held while one
  process builds or rewrites ``<dir>/<name>`` (decoded-image cache, feature cache, its extraction journal,
  the results table). A second process asking for the same file waits, saying which process it waits for,
  and then re-checks what the first one left (usually it reuses it whole); with ``wait=False`` it is told
  at once instead. The kernel releases the lock when its holder dies, whatever kills it (SIGKILL
  included), so a dead builder never blocks anyone. The lock files stay (empty but for the holder's pid):
  deleting a lock file while another process waits on it would let two builders in. Where the folder
  cannot be written (a read-only cache), the lock file goes to ``<tmp>/featpipe-locks/`` instead.
- :func:`clean_leftovers`: temporary files ``.<name>.tmp-<pid>...`` whose process is dead (a run killed
  between writing and renaming) are removed, and returned so the caller reports them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from featpipe.core.errors import FeatpipeError
from featpipe.core.log import notice

_TMP = re.compile(r"^\..+\.tmp-(\d+)(?:-.*)?$")


def say(msg: str) -> None:
    """One notice line (:func:`featpipe.core.log.notice`)."""
    notice(msg)


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _holder(fh) -> str:
    try:
        fh.seek(0)
        pid = fh.read().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def _open_lock(target: Path):
    """The lock file beside ``target``; where that folder cannot be written (read-only, no permission), a lock
    file named after it in the system's temporary folder, so a current read-only cache stays usable (and
    two processes on this machine still coordinate)."""
    path = lock_path(target)
    try:
        return _open_rw(path)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    alt = Path(tempfile.gettempdir()) / "featpipe-locks"
    alt.mkdir(exist_ok=True)
    key = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    return _open_rw(alt / f"{path.name.lstrip('.')[:80]}-{key}")


def _open_rw(path: Path):
    """``path`` opened for reading and writing at any position (created when missing; not append mode, so the
    holder's pid can be written over the last one without truncating the file to zero first)."""
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+")


class LockTimeout(FeatpipeError):
    """Waited longer than ``FEATPIPE_LOCK_TIMEOUT`` seconds for another builder (``wait=False``: found one)."""


def _try(fh) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_for(fh, target: Path, *, what: str, timeout: float | None, poll: float) -> float:
    """Block until ``fh`` is locked, saying so; the seconds waited."""
    say(f"{_holder(fh)} is building {what} {target}: waiting for it to finish")
    t0 = time.monotonic()
    while not _try(fh):
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise LockTimeout(f"{_holder(fh)} has been building {target} for more than {timeout:g} s; "
                              "wait for it, stop it, or raise FEATPIPE_LOCK_TIMEOUT")
        time.sleep(poll)
    waited = time.monotonic() - t0
    say(f"the other build of {target} ended after {waited:.1f} s; checking what it left")
    return waited


@contextmanager
def build_lock(target: str | Path, *, what: str, timeout: float | None = None, poll: float = 0.2,
               wait: bool = True, brief: bool = False) -> Iterator[float]:
    """Hold the exclusive build lock of ``target``; yields the seconds spent waiting for another builder.

    ``timeout`` (default: ``$FEATPIPE_LOCK_TIMEOUT``, else wait as long as the other builder runs) turns a
    wait that is too long into a one-line :class:`LockTimeout`; ``wait=False`` raises it at once, silently,
    when another process holds the lock. ``brief``: a lock every holder keeps for milliseconds (a pair of small
    files renamed into place): wait in the kernel's blocking ``flock``, silently, without polling or a timeout.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if timeout is None and os.environ.get("FEATPIPE_LOCK_TIMEOUT"):
        timeout = float(os.environ["FEATPIPE_LOCK_TIMEOUT"])
    fh = _open_lock(target)
    waited = 0.0
    try:
        if not _try(fh):
            if not wait:
                raise LockTimeout(f"{_holder(fh)} is building {what} {target}")
            if brief:
                t0 = time.monotonic()
                fcntl.flock(fh, fcntl.LOCK_EX)
                waited = time.monotonic() - t0
            else:
                waited = _wait_for(fh, target, what=what, timeout=timeout, poll=poll)
        fh.seek(0)
        fh.write(f"{os.getpid()}\n")
        fh.truncate()  # to the pid's length: truncating to zero before a write makes ext4 flush the file on close
        fh.flush()
        yield waited
    finally:
        fh.close()  # closing the descriptor releases the lock


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_leftovers(folder: str | Path, *, report: bool = True) -> list[Path]:
    """Remove hidden temporary files ``.<name>.tmp-<pid>[-...]`` of dead processes in ``folder``."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        m = _TMP.match(entry.name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # another cleaner was first
        removed.append(entry)
    if removed and report:
        say(f"removed {len(removed)} leftover temporary file(s) of interrupted runs in {folder}: "
            + ", ".join(p.name for p in removed))
    return removed


_CLEANED: set = set()


def clean_leftovers_once(folder: str | Path) -> list[Path]:
    """:func:`clean_leftovers` of ``folder`` the first time this process writes there (a writer of thousands
    of files in one folder lists it once)."""
    key = os.path.abspath(folder)
    if key in _CLEANED:
        return []
    _CLEANED.add(key)
    return clean_leftovers(folder)


def remove_stale(path: str | Path, *, why: str) -> bool:
    """Remove a file or folder a dead run left (call with the build lock held); report it."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    say(f"removed {path} ({why})")
    return True
