"""``featpipe prepare``: a data source -> manifest, rejects, duplicates and splits files.

With ``data.verify_images`` (the default) every image is decoded once here. Given a first-pass ``decode``
hook (the ``prepare`` command passes :func:`featpipe.backbones.modelinput.first_pass`), that decode both
verifies the file (undecodable ones land in ``rejects.csv`` before any split is drawn) and fills the decoded
caches the configured backbones read, so ``featpipe decode`` and every later stage find them current and
decode nothing; without one, each file is verified by a plain decode."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from featpipe.core.fileio import atomic_write, file_sha256
from featpipe.data import multilabel, sources, synthetic
from featpipe.data.changes import compare, previous_manifest
from featpipe.data.fetch import ensure_source
from featpipe.data.fractions import fraction_lines
from featpipe.data.manifest import DecodeHook, build_manifest, relative_paths, write_root
from featpipe.data.splits import capping_lines, make_splits, write_splits
from featpipe.params.config import DataParams, Params


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
    conflicting: int = 0
    decode: dict | None = None  # the first pass: decoded, sizes, seconds (None when prepare wrote no cache)
    changes: str = ""  # the line on what changed against the manifest this one replaced ("" when there was none)
    capped: dict | None = None  # the splits' "capped": {k: {class: images}} (split.shots_policy: cap)
    fractions: dict | None = None  # the splits' "fractions": {images: {fraction, per_class}} (split.fractions)
    multilabel: dict | None = None  # the splits' "multilabel" section (a multi-label task)

    def lines(self) -> list[str]:
        out = [f"{self.images} images, {len(self.classes)} classes ({', '.join(self.classes)}), "
               f"{self.rejected} rejected, {self.duplicate_groups} groups of identical files, in {self.seconds:.1f} s"]
        if self.decode:
            d = self.decode
            out.append(f"  verified by decoding {d['decoded']} image(s) once into the decoded cache(s) "
                       f"{', '.join(map(str, d['sizes']))} px in {d['seconds']:.1f} s")
        for part in ("train", "val", "test"):
            per = ", ".join(f"{c} {n}" for c, n in self.counts[part].items())
            out.append(f"  {part:5s}: {sum(self.counts[part].values())} images ({per}), {self.patients[part]} patients")
        if self.conflicting:
            out.append(f"  {self.conflicting} images excluded from every split: identical files with conflicting labels "
                       "(data.keep_conflicting: true keeps them)")
        if self.excluded - self.conflicting:
            out.append(f"  {self.excluded - self.conflicting} images left out of train/val because their patient or "
                       "file is in test/val")
        out += [f"  {line}" for line in capping_lines(self.capped or {}) + fraction_lines(self.fractions or {})]
        if self.multilabel:
            out += [f"  {line}" for line in multilabel.summary_lines(self.multilabel)]
        out.append(f"  manifest sha256 {self.manifest_sha256[:12]}, splits sha256 {self.splits_sha256[:12]}")
        if self.changes:
            out.append(f"  {self.changes}")
        return out


def data_root(data: DataParams, path: str | Path) -> Path:
    """The folder manifest paths are relative to: the image folder, the CSV's image root, the npz's folder."""
    p = Path(path)
    if data.source in ("synthetic", "folder"):
        return p
    if data.source == "csv":
        return sources.csv_root(p, data.csv)
    return p.parent


def load_records(data: DataParams, path: str | Path | None = None) -> list[sources.Record]:
    path = ensure_source(data) if path is None else Path(path)
    if data.source in ("synthetic", "folder"):
        return sources.scan_folder(path, patient_regex=data.patient_regex)
    if data.source == "csv":
        return sources.scan_csv(path, data.csv, patient_regex=data.patient_regex)
    return sources.scan_npz(path, class_names=data.class_names)


def _write_csv(df, path: Path) -> None:
    atomic_write(path, df.to_csv(index=False, lineterminator="\n"))


def prepare(params: Params, *, manifest_path: str | Path, splits_path: str | Path,
            rejects_path: str | Path | None = None, duplicates_path: str | Path | None = None,
            decode: DecodeHook | None = None) -> PrepareSummary:
    """``decode``: the first pass (a :data:`~featpipe.data.manifest.DecodeHook`, e.g.
    :func:`featpipe.backbones.modelinput.first_pass`), called once with the candidate rows; its ``figures``
    attribute, when it has one, goes into the summary. None: each image verified by a plain decode."""
    t0 = time.perf_counter()
    manifest_path = Path(manifest_path)
    rejects_path = Path(rejects_path or manifest_path.with_name("rejects.csv"))
    duplicates_path = Path(duplicates_path or manifest_path.with_name("duplicates.csv"))
    source_path = ensure_source(params.data)
    records = load_records(params.data, source_path)
    order = params.data.class_names if params.data.class_names and params.data.source != "npz" else None
    if order is None and params.data.source == "synthetic":
        order = synthetic.class_names(params.data.synthetic.classes)
    labels = multilabel.label_names(params.data.csv.labels) if params.data.source == "csv" else []
    result = build_manifest(records, max_pixels=params.data.max_image_pixels, verify=params.data.verify_images,
                            workers=params.decode.workers, class_order=order, decode=decode)
    if labels:  # a multi-label task: its label columns y[<label>]
        result.manifest = multilabel.with_columns(result.manifest, records, labels)
    _write_csv(result.rejects, rejects_path)
    _write_csv(result.duplicates, duplicates_path)
    root = data_root(params.data, source_path)
    previous = previous_manifest(manifest_path)
    changes = compare(previous, result.manifest).line(f"the previous {manifest_path}") if previous is not None else ""
    _write_csv(relative_paths(result.manifest, root), manifest_path)
    write_root(manifest_path, root)
    msha = file_sha256(manifest_path)
    policy = multilabel.policy_of(params.data.csv.labels_uncertain, params.data.csv.labels_blank, labels)
    obj = make_splits(result.manifest, result.classes, params.split, dataset=params.data.name, manifest_sha256=msha,
                      keep_conflicting=params.data.keep_conflicting, labels=labels, label_policy=policy)
    write_splits(obj, splits_path, result.manifest)
    return PrepareSummary(len(result.manifest), len(result.rejects), len(result.duplicates), result.classes,
                          obj["counts"], obj["patients"], len(obj["excluded"]), time.perf_counter() - t0, msha,
                          file_sha256(splits_path), sum(e["from"] == "all" for e in obj["excluded"]),
                          getattr(decode, "figures", None), changes, obj["capped"], obj.get("fractions"),
                          obj.get("multilabel"))
