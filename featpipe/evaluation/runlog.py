"""Per-image predictions and curves of many runs in one append-only, columnar file per writer (a *run log*).

A sweep used to write two files per run (a gzip CSV of predictions, a JSON of curves): ~2,000 small files and
~10 ms of CPU per run spent formatting text. A :class:`RunLog` appends each run as one binary record to
``<results>/predictions/<time_ns>-<pid>.fpruns`` instead, flushed as the run finishes (a killed writer loses
nothing it recorded: a record torn by the kill is ignored by readers), at full precision (the arrays' own
bytes: float64 stays float64 bit for bit).

File layout (version 1): the magic ``FPRUNS1\\n``, then records, each ``<4sIQQ>`` (``REC1``, crc32 of header +
body, header length, body length), a JSON header and a body:

- ``strings``: a list of strings several runs share (the split's ids): header ``{"kind", "key"}``, body the
  UTF-8 JSON list; written once per file, before the first run that refers to it;
- ``run``: header ``{"kind", "run_id", "written" (ns), "rows", "columns", "curves"}`` (``curves`` last: a scan
  parses the rest and leaves the curves' JSON text until they are read); each column is
  ``{"name", "dtype"}`` (its bytes follow in the body, in order) or, for text, ``{"name", "strings"}`` with the
  values inline or the key of a ``strings`` record, and int32 codes in the body (-1: missing).

Only JSON and plain numeric arrays are read back (no pickle). Which record of a run is current (a run written
again, in this file or another) is decided by :mod:`featpipe.evaluation.table`, the only module that reads
or writes these files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from featpipe.core.errors import DataError

SUFFIX = ".fpruns"
MAGIC = b"FPRUNS1\n"
_PREFIX = struct.Struct("<4sIQQ")
_REC = b"REC1"
_MAX_PART = 1 << 40  # a header or body this long is a damaged length field (a torn record has its real lengths)
_INLINE = 64  # text columns with at most this many distinct values keep them in the run's header


class RunLog:
    """The run log one writer appends to (created at the first :meth:`add`, in ``folder``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path: Path | None = None
        self._fd: int | None = None
        self._shared: set[str] = set()
        self._keys: dict[tuple, str] = {}  # string list -> key of its shared record (the split's ids, every run)

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            path = self.folder / f"{time.time_ns():020d}-{os.getpid()}{SUFFIX}"
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
            except FileExistsError:
                continue
            self.path = path
            os.write(self._fd, MAGIC)

    def add(self, run_id: str, frame: pd.DataFrame, curves: Mapping | None = None, *, first: Mapping | None = None,
            last: Mapping | None = None) -> None:
        """Append one run: its predictions ``frame`` (any columns: numbers kept as their bytes, text as codes)
        and its ``curves``; one write per record, so a kill leaves at most the last record torn. ``first`` /
        ``last``: columns of one value on every row, before / after the frame's (as if inserted into it)."""
        if self._fd is None:
            self._open()
        columns, parts, shared = [], [], []
        n = len(frame)
        named = [(k, _constant(v, n)) for k, v in (first or {}).items()]
        named += [(name, frame[name]) for name in frame.columns]
        named += [(k, _constant(v, n)) for k, v in (last or {}).items()]
        for name, col in named:
            if col.dtype.kind in "biuf":
                arr = np.ascontiguousarray(col.to_numpy() if isinstance(col, pd.Series) else col)
                columns.append({"name": str(name), "dtype": arr.dtype.str})
                parts.append(arr.tobytes())
                continue
            if isinstance(col, _Text):  # one value on every row: the codes factorize would give
                codes, uniques = np.zeros(n, dtype=np.int32), ([col.value] if n else [])
            else:
                codes, uniques = pd.factorize(col, use_na_sentinel=True)
            values = [v if type(v) is str else str(v) for v in np.asarray(uniques, dtype=object).tolist()]
            if len(values) <= _INLINE:
                columns.append({"name": str(name), "strings": values})
            else:
                key = self._keys.get(tuple(values))
                if key is None:  # a list not seen by this log: its key (a hash of its JSON text), written once
                    text = json.dumps(values, ensure_ascii=False).encode()
                    key = hashlib.sha256(text).hexdigest()[:32]
                    if key not in self._shared:
                        shared.append(_record({"kind": "strings", "key": key}, text))
                        self._shared.add(key)
                    if len(self._keys) > 16:
                        self._keys.clear()
                    self._keys[tuple(values)] = key
                columns.append({"name": str(name), "strings": key})
            parts.append(codes.astype(np.int32).tobytes())
        head = {"kind": "run", "run_id": str(run_id), "written": time.time_ns(), "rows": len(frame),
                "columns": columns, "curves": curves}
        os.write(self._fd, b"".join([*shared, _record(head, b"".join(parts))]))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._shared.clear()  # a later add opens a new file: its string lists are written there again
            self._keys.clear()


@dataclass(frozen=True)
class _Text:
    """A text column of one value (``RunLog.add``'s ``first`` / ``last``)."""

    value: str
    dtype = np.dtype(object)


def _constant(value, n: int):
    """A column of ``n`` times ``value`` as a frame would hold it: text as :class:`_Text`, a number as an array."""
    return _Text(value) if isinstance(value, str) else np.full(n, value)


def _record(head: dict, body: bytes) -> bytes:
    h = json.dumps(head, separators=(",", ":"), allow_nan=True).encode()
    return _PREFIX.pack(_REC, zlib.crc32(body, zlib.crc32(h)), len(h), len(body)) + h + body


@dataclass(frozen=True)
class Entry:
    """One run's record in a run log: where its body starts, and its header."""

    path: Path
    offset: int  # of the body
    size: int  # of the body
    crc: int  # crc32 of header + body, as written
    head_crc: int  # crc32 of the header
    head: dict  # the header without its curves
    curves_json: bytes = b"null"  # the header's curves, parsed when asked for (:attr:`curves`)

    @property
    def curves(self) -> dict | None:
        """The run's ROC/PR points (None when it has none); a damaged header is a one-line :class:`DataError`."""
        try:
            return json.loads(self.curves_json)
        except ValueError:
            raise _damaged(self.path, f"unreadable curves of run {self.run_id}") from None

    @property
    def run_id(self) -> str:
        return self.head["run_id"]

    @property
    def written(self) -> int:
        return int(self.head["written"])


def _damaged(path: Path, why: str) -> DataError:
    return DataError(f"predictions file {path} is damaged ({why}): delete it and re-run its runs "
                     "(fit, sweep or finetune)")


def scan(path: str | Path) -> tuple[list[Entry], dict[str, list[str]]]:
    """The run records of a log (in the order written) and its shared string lists. A record torn at the end
    (a writer killed mid-write, or still writing) is left out; a damaged one is a one-line :class:`DataError`."""
    path = Path(path)
    st = path.stat()
    return _scan(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _scan(name: str, size: int, mtime_ns: int) -> tuple[list[Entry], dict[str, list[str]]]:
    path = Path(name)
    entries, strings = [], {}
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise _damaged(path, "not a featpipe run log")
        pos = len(MAGIC)
        while pos + _PREFIX.size <= size:
            fh.seek(pos)
            tag, crc, hl, bl = _PREFIX.unpack(fh.read(_PREFIX.size))
            if tag != _REC:
                raise _damaged(path, f"no record at byte {pos}")
            end = pos + _PREFIX.size + hl + bl
            if hl >= _MAX_PART or bl >= _MAX_PART:  # lengths no writer writes: damaged, not torn
                raise _damaged(path, f"impossible record lengths at byte {pos}")
            if end > size:
                break  # torn by a kill (or being written): the runs before it are whole
            h = fh.read(hl)
            try:
                head, curves = _header(h)
            except ValueError:
                raise _damaged(path, f"unreadable record header at byte {pos}") from None
            if head.get("kind") == "strings":
                body = fh.read(bl)
                if zlib.crc32(body, zlib.crc32(h)) != crc:
                    raise _damaged(path, f"checksum of the record at byte {pos}")
                strings[head["key"]] = json.loads(body)
            elif head.get("kind") == "run":  # its body is checked when it is read
                entries.append(Entry(path, pos + _PREFIX.size + hl, bl, crc, zlib.crc32(h), head, curves))
            pos = end
    return entries, strings


_CURVES = b',"curves":'


def _header(h: bytes) -> tuple[dict, bytes]:
    """(a record's header without its curves, the curves' JSON text). A run header is written with ``curves`` as
    its last key (:meth:`RunLog.add`), and the first ``,"curves":`` in it is that key (inside a JSON string a quote
    is escaped; no other key is named so): the curves, most of the header, are parsed only when asked for."""
    at = h.find(_CURVES)
    if at < 0 or not h.endswith(b"}"):
        head = json.loads(h)
        if not isinstance(head, dict):
            raise ValueError("not a JSON object")
        curves = head.pop("curves", None)
        return head, json.dumps(curves).encode()
    head = json.loads(h[:at] + b"}")
    if not isinstance(head, dict) or "curves" in head:
        raise ValueError("not a run header")
    return head, h[at + len(_CURVES): -1]


def read_entry(entry: Entry, strings: Mapping[str, list[str]]) -> pd.DataFrame:
    """The predictions frame of one run record, with the dtypes its CSV file read back had (text as ``str``,
    numbers as written)."""
    head, cols = entry.head, {}
    n = int(head["rows"])
    with open(entry.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if zlib.crc32(mm[entry.offset: entry.offset + entry.size], entry.head_crc) != entry.crc:
            raise _damaged(entry.path, f"checksum of run {entry.run_id}")
        pos = entry.offset
        for c in head["columns"]:
            if "dtype" in c:
                dt = np.dtype(c["dtype"])
                cols[c["name"]] = np.frombuffer(mm, dt, n, pos).copy()
                pos += dt.itemsize * n
                continue
            codes = np.frombuffer(mm, np.int32, n, pos).copy()
            pos += 4 * n
            values = c["strings"] if isinstance(c["strings"], list) else strings.get(c["strings"])
            if values is None:
                raise _damaged(entry.path, f"string list {c['strings']} of run {entry.run_id} missing")
            cols[c["name"]] = _text(np.asarray(values, dtype=object), codes)
    return pd.DataFrame(cols)


def _text(values: np.ndarray, codes: np.ndarray) -> pd.Series:
    out = values[np.maximum(codes, 0)] if len(values) else np.full(len(codes), None, dtype=object)
    if (codes < 0).any():
        out = out.copy()
        out[codes < 0] = None
    return pd.Series(out, dtype="str")
