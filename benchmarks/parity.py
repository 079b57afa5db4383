"""Parity table: featpipe's network input and embedding against each backbone's own reference, on real radiographs.

    python benchmarks/parity.py [BACKBONE ...]      # default: every registered pretrained member + the library kinds

Random weights are planted under the real file names in a temporary TORCH_HOME / HF_HOME / torchxrayvision cache
(no download); the files are tests/parity.py's PARITY_FILES from ../shared/data/figure1-covid-cxr. Each backbone is
compared twice: with the default decode options (JPEG draft off) and with ``decode.draft: true``.

- torchvision and Hugging Face members (tests/parity.py): the reference is ``Weights.transforms()`` + the torchvision
  network, or ``AutoImageProcessor`` + ``AutoModel`` of the snapshot (``pooler_output``);
- backbones named by library (tests/library_fixtures.py; kinds ``timm``, ``biomedclip``, ``xrv``, ``hf``): timm
  ``create_transform`` + ``forward_head(pre_logits=True)``, open_clip's preprocess + ``encode_image``,
  torchxrayvision's README pipeline + ``features2``, the Hugging Face processor + ``last_hidden_state[:, 0]``.

Writes benchmarks/results/parity.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
IMAGES = ROOT.parent / "shared" / "data" / "figure1-covid-cxr" / "images"
KINDS = ("timm", "biomedclip", "xrv", "hf")


def library_row(kind: str, home: Path, tmp: Path, files: list[str], draft: bool):
    """A tests.parity.Parity row for a backbone named by library (tests/library_fixtures.measure)."""
    import library_fixtures as lf
    from tests.parity import Parity

    r = lf.measure(kind, home, IMAGES, tmp / f"{kind}-{draft}", files=tuple(files), draft=draft)
    mean = sum(r["input_mean_diff"]) / len(r["input_mean_diff"])
    return Parity(r["backbone"], r["files"], max(r["input_diff"]), mean, min(r["cosine"]),
                  f"{kind} library reference (tests/library_fixtures.py)", dict(zip(r["files"], r["input_diff"])), draft)


def main(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ.update(TORCH_HOME=str(home / "torch"), HF_HOME=str(home / "hf"), FEATPIPE_OFFLINE="1",
                          HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", FEATPIPE_XRV_CACHE=str(home / "xrv"))
        os.environ.pop("HF_HUB_CACHE", None)
        from tests.parity import HUB, PARITY_FILES, TORCHVISION, compare, table

        names = names or [*TORCHVISION, *HUB, *KINDS]
        files = [IMAGES / f for f in PARITY_FILES]
        rows, drafted = [], []
        for name in names:
            t0 = time.perf_counter()
            for draft, out in ((False, rows), (True, drafted)):
                out.append(library_row(name, home, Path(tmp), list(PARITY_FILES), draft) if name in KINDS
                           else compare(name, files, Path(tmp) / f"{name}-{draft}", home, draft=draft))
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    worst = {r.backbone: max(r.per_file_max, key=r.per_file_max.get) for r in drafted}
    text = "\n".join([
        "# Parity with the reference",
        "",
        "`python benchmarks/parity.py` (CPU, fp32, random weights planted under the real names). Files: "
        + ", ".join(rows[0].files) + " (Figure 1 set: portrait, landscape, RGB, PNG, wide, 224 px).",
        "Input difference on the 0-255 scale (|featpipe - reference| x std x 255) over every pixel of every file;",
        "cosine between featpipe's embedding and the reference's (its preprocessing + its model call + its pooling).",
        "",
        "## Default decode options (`decode.draft: false`)",
        "",
        table(rows),
        "",
        "## With `decode.draft: true` (JPEG reduced-scale decoding)",
        "",
        table(drafted),
        "",
        "Worst file with draft: " + ", ".join(f"{k} {v} ({drafted[i].per_file_max[v]:.0f})"
                                               for i, (k, v) in enumerate(worst.items())),
        "",
    ])
    out = ROOT / "benchmarks" / "results" / "parity.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
