"""External test sets: another source (another hospital's images) prepared beside the study and used only as a test set.

``featpipe prepare --external <name>`` reads the set ``evaluate.external`` names (its own source, path and CSV
settings) under its own data name: its manifest, rejects and duplicates go to ``data/external/<name>/``, its decoded
caches to ``cache/<name>/``, so the two data sets never share a cache file. No splits are drawn: every usable image
is a test image. Its labels are mapped to the study's classes by ``label_map`` (its label -> a study class); a label
the map does not name is a reject with that label in the reason (without a map, labels that are study classes are
kept). For a multi-label study its label columns (``csv.labels``) are mapped onto the study's labels the same way
(:func:`featpipe.data.multilabel.map_vectors`; a study label no column maps to is unknown there). An external set must not share a file (sha256 of its bytes) or a patient id with the study's manifest
(:func:`check_outside_study`): that is a one-line error naming how many and a few of them, at prepare and again
when it is scored.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from featpipe.core.errors import DataError
from featpipe.core.fileio import atomic_write, file_sha256
from featpipe.data import multilabel
from featpipe.data.manifest import (
    DecodeHook,
    build_manifest,
    read_manifest,
    relative_paths,
    write_root,
)
from featpipe.data.prepare import data_root, load_records
from featpipe.data.sources import Record
from featpipe.data.splits import load_splits
from featpipe.params.config import Params

EXTERNAL_DIR = Path("data/external")
INFO = "external.json"


def external_dir(name: str, base: str | Path = EXTERNAL_DIR) -> Path:
    """``data/external/<name>/``: the manifest, rejects, duplicates and ``external.json`` of one external set."""
    return Path(base) / name


def external_params(params: Params, name: str) -> Params:
    """``params`` with the data section of the external set ``name`` (its data name, source, path, CSV settings):
    what prepare, decode and extract read for it."""
    ext = params.evaluate.external_set(name)
    data = dataclasses.replace(params.data, name=ext.name, source=ext.source, path=ext.path,
                               patient_regex=ext.patient_regex, class_names=ext.class_names, csv=ext.csv,
                               medmnist_flag=None)
    return dataclasses.replace(params, data=data)


def map_labels(records: Sequence[Record], label_map: dict, classes: Sequence[str], name: str) -> None:
    """Each record's label mapped to a study class in place; a label the map does not name becomes a reject."""
    for r in records:
        if r.reject is not None or r.label_name is None:
            continue
        target = label_map.get(r.label_name) if label_map else (r.label_name if r.label_name in classes else None)
        if target is None:
            where = f"evaluate.external[{name}].label_map" if label_map else "the study's classes"
            r.reject, r.label_name = f"label '{r.label_name}' not in {where}", None
        elif target not in classes:
            raise DataError(f"evaluate.external[{name}].label_map maps '{r.label_name}' to '{target}', which is not a "
                            f"study class ({', '.join(classes)})")
        else:
            r.label_name = target
        r.label_index = None


def check_outside_study(study: pd.DataFrame, external: pd.DataFrame, name: str) -> None:
    """DataError when an external image is a study file (same sha256) or belongs to a study patient."""
    same_file = external["sha256"].isin(set(study["sha256"]))
    same_patient = external["patient_id"].astype(str).isin(set(study["patient_id"].astype(str)))
    bad = external[same_file | same_patient]
    if len(bad):
        shown = ", ".join(bad["id"].astype(str).head(3))
        raise DataError(f"external set '{name}': {len(bad)} image(s) are in the study's data ({int(same_file.sum())} "
                        f"identical files, {int(same_patient.sum())} study patient ids), e.g. {shown}: remove them from "
                        "the external set (an external test set must not share patients with the study)")


@dataclass
class ExternalSummary:
    name: str
    images: int
    rejected: int
    counts: dict
    manifest: Path
    seconds: float

    def lines(self) -> list[str]:
        per = ", ".join(f"{c} {n}" for c, n in self.counts.items())
        return [f"external set '{self.name}': {self.images} test images ({per}), {self.rejected} rejected, "
                f"in {self.seconds:.1f} s", f"  manifest {self.manifest} (no splits: every image is a test image)"]


def prepare_external(params: Params, name: str, *, splits_path: str | Path, study_manifest: str | Path,
                     out_base: str | Path = EXTERNAL_DIR, decode: DecodeHook | None = None) -> ExternalSummary:
    """Manifest, rejects and duplicates of the external set ``name`` in ``<out_base>/<name>/``, labels mapped to the
    classes of the study's ``splits_path``, checked against ``study_manifest``. ``decode``: the first pass of the
    external set's params (:func:`external_params`), filling ``cache/<name>/``."""
    t0 = time.perf_counter()
    ext = params.evaluate.external_set(name)
    ep = external_params(params, name)
    splits = load_splits(splits_path)
    classes = list(splits.classes)
    if splits.labels and not ep.data.csv.labels:
        raise DataError(f"external set '{name}': the study is multi-label: set evaluate.external[{name}].source: csv "
                        "and its csv.labels (its label columns), with label_map onto the study's labels")
    records = load_records(ep.data, Path(ext.path))
    if splits.labels:
        multilabel.map_vectors(records, multilabel.label_names(ep.data.csv.labels), ext.label_map, splits.labels,
                               name)
    else:
        map_labels(records, ext.label_map, classes, name)
    kept = [r for r in records if r.reject is None]
    if not kept:
        raise DataError(f"external set '{name}': no image has a label mapped to the study's classes "
                        f"({', '.join(classes)}): set evaluate.external[{name}].label_map")
    result = _manifest(records, ep, classes, decode)
    if splits.labels:
        result.manifest = multilabel.with_columns(result.manifest, records, splits.labels)
    check_outside_study(read_manifest(study_manifest), result.manifest, name)
    out = external_dir(name, out_base)
    out.mkdir(parents=True, exist_ok=True)
    for df, file in ((result.rejects, "rejects.csv"), (result.duplicates, "duplicates.csv")):
        atomic_write(out / file, df.to_csv(index=False, lineterminator="\n"))
    root = data_root(ep.data, ext.path)
    manifest_path = out / "manifest.csv"
    atomic_write(manifest_path, relative_paths(result.manifest, root).to_csv(index=False, lineterminator="\n"))
    write_root(manifest_path, root)
    info = {"name": name, "classes": classes, "manifest_sha256": file_sha256(manifest_path),
            "label_map": dict(ext.label_map)}
    atomic_write(out / INFO, json.dumps(info, indent=1) + "\n")
    counts = {c: int((result.manifest["label_name"] == c).sum()) for c in classes}
    return ExternalSummary(name, len(result.manifest), len(result.rejects), counts, manifest_path,
                           time.perf_counter() - t0)


def _manifest(records, ep: Params, classes: list[str], decode):
    """The manifest of the mapped records (build_manifest: hashed and decoded as the study's were)."""
    present = {r.label_name for r in records if r.reject is None}
    if len(present) < 2:
        raise DataError(f"external set '{ep.data.name}': every mapped image has the class '{min(present)}': AUROC, "
                        "sensitivity and specificity need both classes; map labels of the other class too")
    return build_manifest(records, max_pixels=ep.data.max_image_pixels, verify=ep.data.verify_images,
                          workers=ep.decode.workers, class_order=classes, decode=decode)


def read_external(name: str, classes: Sequence[str], *, base: str | Path = EXTERNAL_DIR) -> pd.DataFrame:
    """The manifest of a prepared external set with ``label`` = the index of ``label_name`` among the study's
    ``classes`` (its own file numbers the classes present in it)."""
    path = external_dir(name, base) / "manifest.csv"
    if not path.is_file():
        raise DataError(f"external set '{name}' is not prepared ({path} not found): run "
                        f"'featpipe prepare --external {name}'")
    df = read_manifest(path)
    unknown = sorted(set(df["label_name"]) - set(classes))
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not study classes: rerun 'featpipe prepare --external {name}'")
    df["label"] = [list(classes).index(c) for c in df["label_name"]]
    return df
