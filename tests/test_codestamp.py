"""featpipe-code.json, the stamp of featpipe's code every DVC stage depends on: same code, same bytes."""

from __future__ import annotations

import json

from featpipe import __version__
from featpipe.core.codestamp import code_stamp, write_code_stamp


def test_stamp_changes_with_the_sources_only(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    (pkg / "sub" / "mod.py").write_text("y = 2\n")
    (pkg / "sub" / "__pycache__" / "mod.cpython-311.py").write_text("ignored\n")
    first = code_stamp(pkg)
    assert first["featpipe_version"] == __version__ and first["files"] == 2
    (pkg / "notes.txt").write_text("not code\n")
    assert code_stamp(pkg) == first
    (pkg / "sub" / "mod.py").write_text("y = 3\n")
    assert code_stamp(pkg)["sources_sha256"] != first["sources_sha256"]


def test_written_stamp_is_the_installed_package(tmp_path):
    out = tmp_path / "featpipe-code.json"
    stamp = write_code_stamp(out)
    before = out.read_bytes()
    assert json.loads(before) == stamp and stamp["files"] > 50
    write_code_stamp(out)
    assert out.read_bytes() == before
