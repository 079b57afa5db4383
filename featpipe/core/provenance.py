"""The one provenance comparator: does what a file recorded match what a request expects, and if not, what differs.

Each file format owns the keys that are its identity (:data:`featpipe.features.cache.VALIDITY_KEYS`,
:data:`featpipe.decoded.cache.REUSE_KEYS`, :data:`featpipe.heads.io.MATCH_KEYS`); this module owns how two
values are compared and how a difference is worded, for all of them:

- values are compared in one canonical form (:func:`canonical`): bytes decoded, numpy scalars and arrays as
  Python values, the JSON text of an object or a list parsed (an HDF5 attribute holds a dict as JSON), tuples
  as lists; so ``'{"input_size": 32}'`` matches ``{"input_size": 32}`` and ``np.int64(3)`` matches ``3``.
  Numbers are compared exactly (no tolerance: a recorded float is the float that was written);
- a key that the expected values lack, or hold as None, is not compared;
- a key the record lacks differs (``"<key> not recorded"``), unless ``require_recorded=False``;
- the difference is named: ``"precision 'bf16' != requested 'fp32'"``; two mappings by their first differing
  entry (sorted): ``"decoder draft True != requested False"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def canonical(value: Any) -> Any:
    """``value`` in the form values are compared in (see the module doc)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "["):
            try:
                return canonical(json.loads(text))
            except json.JSONDecodeError:
                return value
        return value
    if isinstance(value, np.ndarray):
        return canonical(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def _difference(key: str, have: Any, want: Any, label: str) -> str:
    if isinstance(have, dict) and isinstance(want, dict):
        sub = next(k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k))
        key, have, want = f"{key} {sub}", have.get(sub), want.get(sub)
    return f"{key} {have!r} != {label} {want!r}"


def mismatch(recorded: Mapping, expected: Mapping, keys: Sequence[str], *, require_recorded: bool = True,
             unrecorded: str = "not recorded", label: str = "requested") -> str | None:
    """The first of ``keys`` whose ``recorded`` value differs from the ``expected`` one, worded (None if all
    match). ``require_recorded=False``: a key the record lacks is not compared; ``unrecorded``: what is said
    of a key it lacks; ``label``: what the expected side is called."""
    for key in keys:
        want = canonical(expected.get(key))
        if want is None:
            continue
        have = canonical(recorded.get(key))
        if have is None:
            if require_recorded:
                return f"{key} {unrecorded}"
            continue
        if have != want:
            return _difference(key, have, want, label)
    return None
