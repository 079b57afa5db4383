"""Worker processes that never outlive their main process, whatever kills it (SIGKILL included).

Every pool featpipe starts (decoding, manifest checks, the head sweep) runs :func:`die_with_parent` in
each worker first. On Linux it asks the kernel to send the worker SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``); on every platform a daemon thread also checks once a second that the
parent is still the one that started the worker (a worker re-parented to init or a subreaper ends
itself). So no decode, manifest or sweep worker survives its main process by more than about a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1
_armed_for: int | None = None


def _prctl_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, interval: float) -> None:
    import time

    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(interval)


def die_with_parent(parent_pid: int | None = None, interval: float = 1.0, *, pdeathsig: bool = True) -> None:
    """Make this (worker) process end when ``parent_pid`` (default: the current parent) ends.

    Idempotent: safe to call at the start of every task of a reused worker. ``pdeathsig=False`` keeps
    only the watchdog thread: for pools (joblib's loky) whose workers may be started by a helper thread
    of the parent, since the kernel signal fires when the *thread* that forked the worker ends.
    """
    global _armed_for
    parent = os.getppid() if parent_pid is None else int(parent_pid)
    if parent == os.getpid():  # run in the parent itself (a pool that ran the task in-process): nothing to watch
        return
    if _armed_for == parent:
        return
    _armed_for = parent
    if pdeathsig:
        _prctl_pdeathsig()
    if os.getppid() != parent:  # the parent died before the kernel was told
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, interval), name="featpipe-parent-watch", daemon=True).start()


def pool_kwargs() -> dict:
    """``initializer``/``initargs`` for a :class:`concurrent.futures.ProcessPoolExecutor` of this process."""
    return {"initializer": die_with_parent, "initargs": (os.getpid(),)}
