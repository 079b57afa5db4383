"""``featpipe demo``: the project's DVC graph, run offline on the synthetic set and tiny backbones.

The demo runs in its own workspace (default ``./demo``): ``dvc.yaml`` is copied from the project and
``params.demo.yaml`` becomes its ``params.yaml``, so the demo never touches the real study's lock file or
outputs. It is the same graph the real study runs with ``dvc repro``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from featpipe.core.errors import FeatpipeError


def setup_workspace(project: str | Path, workdir: str | Path) -> Path:
    project, workdir = Path(project), Path(workdir)
    missing = [f for f in ("dvc.yaml", "params.demo.yaml", "prompts.yaml") if not (project / f).is_file()]
    if missing:
        raise FeatpipeError(f"{', '.join(missing)} not found in {project.resolve()}: run 'featpipe demo' in the featpipe "
                            f"checkout or pass --project DIR")
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(project / "dvc.yaml", workdir / "dvc.yaml")
    shutil.copyfile(project / "params.demo.yaml", workdir / "params.yaml")
    shutil.copyfile(project / "prompts.yaml", workdir / "prompts.yaml")  # the zeroshot stage's prompts (a dependency)
    copy_dvcignore(project, workdir)
    if not (workdir / ".dvc").is_dir():
        dvc(["init", "--no-scm", "-q"], workdir)
        dvc(["config", "core.analytics", "false"], workdir)
    return workdir


def copy_dvcignore(project: Path, workdir: Path) -> None:
    """The checkout's ``.dvcignore`` (DVC's own .gitignore files left out of folder hashes: a failed repro in a git
    repository then reruns no stage that depends on a folder of outputs) into a workspace that has none."""
    if (project / ".dvcignore").is_file() and not (workdir / ".dvcignore").exists():
        shutil.copyfile(project / ".dvcignore", workdir / ".dvcignore")


def dvc(args: list[str], cwd: Path) -> None:
    exe = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    proc = subprocess.run([exe, *args], cwd=cwd)
    if proc.returncode != 0:
        raise FeatpipeError(f"'dvc {' '.join(args)}' failed in {cwd} (exit code {proc.returncode}); see its output above")


def run_demo(project: str | Path = ".", workdir: str | Path = "demo") -> Path:
    work = setup_workspace(project, workdir)
    dvc(["repro"], work)
    return work
