"""Per-image predictions and curves of many runs in one append-only, columnar file per writer (a *run log*).

A sweep used to write two files per run (a gzip CSV of predictions, a JSON of curves): ~2,000 small files and
~10 ms of CPU per run spent formatting text. A :class:`RunLog` appends each run as one binary record to
``<results>/predictions/<time_ns>-<pid>.fpruns`` instead, flushed as the run finishes (a killed writer loses
nothing it recorded: a record torn by the kill is ignored by readers), at full precision (the arrays' own
bytes: float64 stays float64 bit for bit).

File layout (version 2): the magic ``FPRUNS2\n``, then records, each ``<4sIQQ>`` (``REC1``, crc32 of header +
body, header length, body length), a JSON header and a body:

- ``strings``: a list of strings several runs share (the split's ids): header ``{"kind", "key"}``, body the
  UTF-8 JSON list; written once per file, before the first run that refers to it;
- ``run``: header ``{"kind", "run_id", "written" (ns), "rows", "columns", "curves"}`` (``curves`` last: a scan
  parses the rest and leaves the curves' JSON text until they are read). Each column's bytes follow in the body,
  in order; a column is
  ``{"name", "dtype"}``: ``rows`` values of ``dtype`` (floats always so: float64 bit for bit);
  ``{"name", "dtype", "store"}``: integers that fit, kept in the smallest unsigned type ``store`` (labels in one
  byte below 256 classes) and read back as ``dtype``;
  ``{"name", "dtype", "fill"}``: one value on every row (``run_id``, ``threshold``): no body, ``fill`` the hex of
  its ``dtype`` bytes; or, for text, ``{"name", "strings", "codes"}`` with the values inline or the key of a
  ``strings`` record, and codes + 1 (0: missing) in the smallest unsigned type ``codes`` that holds them, or
  ``{"name", "strings", "fill"}``: code + 1 of the one value on every row, no body.

Version 1 files (magic ``FPRUNS1\n``, written before the narrow layout) are still read: the same records, but
every column in the body (``{"name", "dtype"}``, or ``{"name", "strings"}`` with int32 codes, -1: missing).

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
MAGIC = b"FPRUNS2\n"  # version 2: narrow codes and labels, constant columns once
MAGICS = (b"FPRUNS1\n", MAGIC)  # the versions read
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
        """Append one run: its predictions ``frame`` (any columns: floats kept as their bytes, integers in the
        smallest unsigned type that holds them, text as codes) and its ``curves``; one write per record, so a kill
        leaves at most the last record torn. ``first`` / ``last``: columns of one value on every row, before /
        after the frame's (as if inserted into it), stored once."""
        if self._fd is None:
            self._open()
        columns, parts, shared = [], [], []
        named = [(k, _constant(v), True) for k, v in (first or {}).items()]
        named += [(name, frame[name], False) for name in frame.columns]
        named += [(k, _constant(v), True) for k, v in (last or {}).items()]
        for name, col, const in named:
            if col.dtype.kind in "biuf":
                arr = np.ascontiguousarray(col.to_numpy() if isinstance(col, pd.Series) else col)
                column = {"name": str(name), "dtype": arr.dtype.str}
                if const:  # one value on every row: its bytes, once
                    columns.append({**column, "fill": arr[:1].tobytes().hex()})
                    continue
                store = _narrow(arr)
                if store != arr.dtype:
                    column["store"] = store.str
                columns.append(column)
                parts.append(arr.astype(store, copy=False).tobytes())
                continue
            if const:  # text of one value on every row (an object as factorize gives it: None is missing)
                one = col.value if isinstance(col, _Text) else col[0]
                values, codes = ([] if one is None else [str(one)]), None
            else:
                codes, uniques = pd.factorize(col, use_na_sentinel=True)
                values = np.asarray(uniques, dtype=object).tolist()
                if not isinstance(uniques.dtype, pd.StringDtype):  # a string dtype holds str only
                    values = [v if type(v) is str else str(v) for v in values]
            column = {"name": str(name), "strings": values if len(values) <= _INLINE else self._key(values, shared)}
            if codes is None:
                columns.append({**column, "fill": len(values)})
                continue
            store = _unsigned(len(values))  # codes + 1: 0 is a missing value
            columns.append({**column, "codes": store.str})
            parts.append((codes + 1).astype(store).tobytes())
        head = {"kind": "run", "run_id": str(run_id), "written": time.time_ns(), "rows": len(frame),
                "columns": columns, "curves": curves}
        os.write(self._fd, b"".join([*shared, _record(head, b"".join(parts))]))

    def _key(self, values: list[str], shared: list[bytes]) -> str:
        """The key of the shared ``strings`` record of ``values``; a list not seen by this log is appended to
        ``shared`` (written once per file), its key a hash of its JSON text."""
        key = self._keys.get(tuple(values))
        if key is None:
            text = json.dumps(values, ensure_ascii=False).encode()
            key = hashlib.sha256(text).hexdigest()[:32]
            if key not in self._shared:
                shared.append(_record({"kind": "strings", "key": key}, text))
                self._shared.add(key)
            if len(self._keys) > 16:
                self._keys.clear()
            self._keys[tuple(values)] = key
        return key

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


def _constant(value):
    """The one value of a column of one value, as a frame would hold it: text as :class:`_Text`, anything else
    as an array of one (a number keeps the dtype a frame's column of it has)."""
    return _Text(value) if isinstance(value, str) else np.full(1, value)


_UNSIGNED = ((0xFF, np.dtype(np.uint8)), (0xFFFF, np.dtype(np.uint16)), (0xFFFF_FFFF, np.dtype(np.uint32)))


def _unsigned(top: int) -> np.dtype:
    """The smallest unsigned integer type that holds 0..``top``."""
    for most, dt in _UNSIGNED:
        if top <= most:
            return dt
    return np.dtype(np.uint64)


def _narrow(arr: np.ndarray) -> np.dtype:
    """The type ``arr``'s values are stored in: the smallest unsigned one for non-negative integers (labels,
    codes), its own for anything else (floats stay float64 bit for bit)."""
    if arr.dtype.kind not in "iu" or not len(arr) or arr.itemsize == 1:
        return arr.dtype
    if arr.min() < 0:
        return arr.dtype
    store = _unsigned(int(arr.max()))
    return store if store.itemsize < arr.itemsize else arr.dtype


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
        magic = fh.read(len(MAGIC))
        if magic not in MAGICS:
            if magic.startswith(b"FPRUNS"):
                raise DataError(f"predictions file {path} was written by a newer featpipe (run log format "
                                f"{magic.strip().decode(errors='replace')}): upgrade featpipe to read it")
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
    numbers as written), from a version 1 or 2 log (the columns say which: see the module's docstring)."""
    head, cols = entry.head, {}
    n = int(head["rows"])
    with open(entry.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if zlib.crc32(mm[entry.offset: entry.offset + entry.size], entry.head_crc) != entry.crc:
            raise _damaged(entry.path, f"checksum of run {entry.run_id}")
        pos = entry.offset
        for c in head["columns"]:
            if "dtype" in c:
                cols[c["name"]], pos = _numbers(c, mm, pos, n)
                continue
            values = c["strings"] if isinstance(c["strings"], list) else strings.get(c["strings"])
            if values is None:
                raise _damaged(entry.path, f"string list {c['strings']} of run {entry.run_id} missing")
            if "codes" not in c and "fill" not in c:  # version 1: int32 codes, -1: missing
                cols[c["name"]] = _text(np.asarray(values, dtype=object), np.frombuffer(mm, np.int32, n, pos).copy())
                pos += 4 * n
                continue
            table = np.empty(len(values) + 1, dtype=object)  # code + 1 -> value; 0: missing
            table[1:] = values
            if "fill" in c:
                codes = np.full(n, int(c["fill"]), dtype=np.intp)
            else:
                dt = np.dtype(c["codes"])
                codes, pos = np.frombuffer(mm, dt, n, pos).copy(), pos + dt.itemsize * n  # no view outlives mm
            cols[c["name"]] = pd.Series(table[codes], dtype="str")
    return pd.DataFrame(cols)


def _numbers(c: Mapping, mm, pos: int, n: int) -> tuple[np.ndarray, int]:
    """A numeric column (its values as ``dtype``) and where the next column's bytes start."""
    dt = np.dtype(c["dtype"])
    if "fill" in c:  # one value on every row, no bytes in the body
        return np.frombuffer(bytes.fromhex(c["fill"]), dt, 1).repeat(n), pos
    store = np.dtype(c.get("store", dt))
    out = np.frombuffer(mm, store, n, pos)
    return (out.copy() if store == dt else out.astype(dt)), pos + store.itemsize * n


def _text(values: np.ndarray, codes: np.ndarray) -> pd.Series:
    out = values[np.maximum(codes, 0)] if len(values) else np.full(len(codes), None, dtype=object)
    if (codes < 0).any():
        out = out.copy()
        out[codes < 0] = None
    return pd.Series(out, dtype="str")
