"""featpipe's Python API end to end, on synthetic images made in a temporary folder (no network, no GPU,
a few seconds): create a backbone, embed files / PIL images / arrays, evaluate few-shot heads in memory,
summarise and compare, fit and save a head, load it back and predict and explain in-memory images.

Run it with ``python docs/api_example.py [folder]`` (default: a temporary folder). CI runs it as a test
(``tests/test_api.py``). Swap ``tiny_cnn`` for ``densenet161``, ``rad_dino``, ... for real work.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import featpipe


def make_images(folder: Path, n_per_class: int = 12) -> tuple[list[Path], np.ndarray]:
    """Two classes of 40x40 grey PNGs: dark noise ("normal") and bright noise ("opacity")."""
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for label, level in ((0, 70), (1, 180)):
        for i in range(n_per_class):
            p = folder / f"class{label}_{i:02d}.png"
            Image.fromarray(np.clip(rng.normal(level, 30, (40, 40)), 0, 255).astype(np.uint8)).save(p)
            paths.append(p)
            labels.append(label)
    return paths, np.asarray(labels)


def main(folder: str | Path) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = make_images(folder)
    classes = ["normal", "opacity"]

    # 1. backbones: list, create (the model and its preprocessing)
    assert "tiny_cnn" in featpipe.list_backbones(tiny=True)
    backbone = featpipe.create_backbone("tiny_cnn")
    model, preprocess = backbone
    print(f"{backbone.name}: {backbone.embed_dim}-d, input {preprocess.input_size} px")

    # 2. embed files, PIL images or arrays with the backbone's own preprocessing -> (N, D) numpy
    X = featpipe.embed(backbone, paths, precision="fp32")
    same = featpipe.embed(backbone, [Image.open(paths[0]), np.asarray(Image.open(paths[0]))], precision="fp32")
    assert X.shape == (len(paths), backbone.embed_dim) and np.allclose(same, X[0], atol=1e-5)

    # 3. few-shot evaluation in memory: runs table + per-image predictions as DataFrames
    ids = [p.stem for p in paths]
    test = [i for i in ids if i.endswith(("08", "09", "10", "11"))]
    val = [i for i in ids if i.endswith(("06", "07"))]
    train = [i for i in ids if i not in test and i not in val]
    runs, predictions = featpipe.evaluate_fewshot(
        X, [classes[y] for y in labels], ids, train=train, val=val, test=test, classes=classes,
        heads={"logistic": {}, "prototype": {"scaler": "kshot"}}, shots=[1, 3], seeds=[0, 1, 2],
        attrs=backbone.provenance(precision="fp32"))
    print(runs[["head", "shots", "seed", "balanced_accuracy", "auroc"]].to_string(index=False))

    # 4. summarise across seeds, compare configurations paired by seed
    summary = featpipe.summarize(runs)
    comparisons = featpipe.compare(runs, predictions, metrics=["auroc"], bootstrap=200)
    print(summary[["config", "n_seeds", "balanced_accuracy", "balanced_accuracy_ci_low"]].to_string(index=False))

    # 5. a head from keyword arguments, fitted on all training images, saved like `featpipe fit` saves one
    head = featpipe.make_head("logistic", C=1.0, scaler="kshot")
    rows = [ids.index(i) for i in train]
    head.fit(X[rows], labels[rows])
    saved = featpipe.save(head, folder / "models" / "my-head.skops", features=backbone, classes=classes)

    # 6. load it back and predict / explain images held in memory
    loaded = featpipe.load_model(saved)
    images = [np.asarray(Image.open(paths[i])) for i in (0, len(paths) - 1)]
    table = featpipe.predict_images(loaded, images)
    explanation = featpipe.explain_images(loaded, images, layer="features.denseblock1")  # tiny_cnn: 8x8 maps
    print(table.to_string(index=False))
    assert np.allclose(table[["p[normal]", "p[opacity]"]].to_numpy(),
                       head.predict_proba(X[[0, len(paths) - 1]]), atol=1e-5)
    assert explanation.cams.shape == (2, preprocess.input_size, preprocess.input_size)
    return {"runs": runs, "predictions": predictions, "summary": summary, "comparisons": comparisons,
            "table": table, "cams": explanation.cams}


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
