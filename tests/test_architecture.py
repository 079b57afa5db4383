"""The package's structure as CI enforces it (see docs/architecture.md and `[tool.importlinter]` in pyproject.toml).

- Imports go down the layers and never in a circle: `lint-imports` checks the contracts, counting imports made
  inside functions too (grimp reads every import statement).
- featpipe modules are imported at the top of a module, never inside a function: imports inside functions are for
  deferring heavy third-party modules (torch, transformers, ray, matplotlib, pydicom) only, so a hidden import can
  not hide a circle again.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featpipe"


def _imports_inside_functions(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    found = []
    for fn in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if not node.level else ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad = [n for n in names if n.startswith(("featpipe", "."))]
            if bad:
                found.append(f"{path.relative_to(root)}:{node.lineno} in {fn.name}(): imports {bad[0]}")
    return sorted(set(found))


def test_no_featpipe_module_is_imported_inside_a_function():
    offenders = [line for p in sorted(PACKAGE.rglob("*.py")) for line in _imports_inside_functions(p)]
    assert not offenders, "featpipe imports inside functions (move them to the module top):\n" + "\n".join(offenders)


def test_the_scan_sees_an_import_inside_a_function(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import torch\n\ndef f():\n    import numpy\n    from featpipe.core import errors\n    return errors\n")
    assert _imports_inside_functions(bad, tmp_path) == ["probe.py:5 in f(): imports featpipe.core"]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[test]'")
    res = subprocess.run([exe], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout
