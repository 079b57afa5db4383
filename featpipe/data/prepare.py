"""``featpipe prepare``: a data source -> manifest, rejects, duplicates and splits files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from featpipe.config import DataParams, Params
from featpipe.data import sources, synthetic
from featpipe.data.manifest import build_manifest, file_sha256, write_csv_atomic
from featpipe.data.splits import make_splits, write_splits


@dataclass
class PrepareSummary:
    images: int
    rejected: int
    duplicate_groups: int
    classes: list[str]
    counts: dict
    patients: dict
    excluded: int
    seconds: float
    manifest_sha256: str
    splits_sha256: str

    def lines(self) -> list[str]:
        out = [f"{self.images} images, {len(self.classes)} classes ({', '.join(self.classes)}), "
               f"{self.rejected} rejected, {self.duplicate_groups} groups of identical files, in {self.seconds:.1f} s"]
        for part in ("train", "val", "test"):
            per = ", ".join(f"{c} {n}" for c, n in self.counts[part].items())
            out.append(f"  {part:5s}: {sum(self.counts[part].values())} images ({per}), {self.patients[part]} patients")
        if self.excluded:
            out.append(f"  {self.excluded} images left out of train/val because their patient or file is in test/val")
        out.append(f"  manifest sha256 {self.manifest_sha256[:12]}, splits sha256 {self.splits_sha256[:12]}")
        return out


def load_records(data: DataParams) -> list[sources.Record]:
    from featpipe.data.fetch import ensure_source

    path = ensure_source(data)
    if data.source in ("synthetic", "folder"):
        return sources.scan_folder(path, patient_regex=data.patient_regex)
    if data.source == "csv":
        return sources.scan_csv(path, data.csv, patient_regex=data.patient_regex)
    return sources.scan_npz(path, class_names=data.class_names)


def prepare(params: Params, *, manifest_path: str | Path, splits_path: str | Path,
            rejects_path: str | Path | None = None, duplicates_path: str | Path | None = None) -> PrepareSummary:
    t0 = time.perf_counter()
    manifest_path = Path(manifest_path)
    rejects_path = Path(rejects_path or manifest_path.with_name("rejects.csv"))
    duplicates_path = Path(duplicates_path or manifest_path.with_name("duplicates.csv"))
    records = load_records(params.data)
    order = params.data.class_names if params.data.class_names and params.data.source != "npz" else None
    if order is None and params.data.source == "synthetic":
        order = synthetic.class_names(params.data.synthetic.classes)
    result = build_manifest(records, max_pixels=params.data.max_image_pixels, verify=params.data.verify_images,
                            workers=params.decode.workers, class_order=order)
    write_csv_atomic(result.rejects, rejects_path)
    write_csv_atomic(result.duplicates, duplicates_path)
    write_csv_atomic(result.manifest, manifest_path)
    msha = file_sha256(manifest_path)
    obj = make_splits(result.manifest, result.classes, params.split, dataset=params.data.name, manifest_sha256=msha)
    write_splits(obj, splits_path, result.manifest)
    return PrepareSummary(len(result.manifest), len(result.rejects), len(result.duplicates), result.classes,
                          obj["counts"], obj["patients"], len(obj["excluded"]), time.perf_counter() - t0, msha,
                          file_sha256(splits_path))
