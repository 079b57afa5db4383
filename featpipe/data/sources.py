"""Data sources: each turns what is on disk into the same list of :class:`Record`.

- :func:`scan_folder`: class-per-folder trees, with or without split folders above them (Kaggle chest_xray,
  COVID-19 Radiography with ``images/`` and ``masks/``, HAM10000-style class folders).
- :func:`scan_csv`: a CSV manifest (HAM10000 with ``lesion_id``; CheXpert with one pathology column).
- :func:`scan_npz`: MedMNIST-style ``.npz`` files (``train_images``, ``train_labels``, ...).

Nothing is decoded here; :mod:`featpipe.data.manifest` hashes and checks every image.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from featpipe.core.errors import DataError
from featpipe.data import multilabel
from featpipe.data.patients import PatientRules
from featpipe.params.config import CsvParams

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"}
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "testing": "test"}
IGNORED_DIRS = {"masks", "mask", "__macosx"}
METADATA_SUFFIXES = {".json", ".csv", ".txt", ".md", ".yaml", ".yml"}  # not images: skipped outside class folders
NPZ_SPLITS = ("train", "val", "test")


@dataclass
class Record:
    id: str
    path: str  # what the decoder opens: a file path or "<file.npz>#<array>/<index>"
    label_name: str | None  # None: no usable label (the reason is in `reject`)
    patient_id: str | None  # None: derived from the file name by the patient rules
    source_split: str = ""  # train | val | test | "" (none)
    reject: str | None = None  # set when the source already knows the row is unusable
    label_index: int | None = None  # npz: the class index as stored
    meta: dict | None = None  # CSV sources: the data.csv.metadata columns of its row (carried into the manifest)
    labels: tuple[int, ...] | None = None  # multi-label (data.csv.labels): 1 / 0 / -1 unknown per label


def _join(root: str, rel: str) -> str:
    return str(PurePosixPath(root.replace(os.sep, "/")) / rel)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in IGNORED_DIRS


DICOM_MAGIC_OFFSET = 128  # "DICM" after a 128-byte preamble (DICOM PS3.10)


def _kind(path: Path) -> str | None:
    """None for a regular file (symlinks followed); else why it is not one."""
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing (broken symbolic link)"
    except OSError as exc:
        return f"unreadable ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(st.st_mode):
        return None
    kind = ("fifo" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
            else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "directory"
            if stat.S_ISDIR(st.st_mode) else "special file")
    return f"not a regular file ({kind})"


def looks_like_dicom(path: str | Path) -> bool:
    """DICOM by content: the ``DICM`` magic at offset 128 (files without a ``.dcm`` extension)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def image_reject(path: Path) -> str | None:
    """Why ``path`` cannot be an image file before decoding it (None: try it): not a regular file, or neither an
    image extension nor DICOM content."""
    why = _kind(path)
    if why is not None:
        return why
    if path.suffix.lower() in IMAGE_EXTENSIONS or looks_like_dicom(path):
        return None
    return f"not an image (extension {path.suffix or 'none'})"


def _walk(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files under ``folder`` (sorted) and what was skipped, with why: hidden files and folders, folders that
    cannot be read, symbolic links to folders (not followed: no loops). ``masks/`` folders and ``Thumbs.db``
    are left out by rule (see the README)."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []

    def unreadable(err: OSError) -> None:
        skipped.append((Path(err.filename), f"unreadable folder ({err.strerror or type(err).__name__})"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        keep = []
        for d in sorted(dirnames):
            p = Path(dirpath) / d
            if d.lower() in IGNORED_DIRS:
                continue
            if d.startswith("."):
                skipped.append((p, "hidden folder (not scanned)"))
            elif p.is_symlink():
                skipped.append((p, "symbolic link to a folder (not followed)"))
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if f.startswith("."):
                skipped.append((p, "hidden file"))
            elif f != "Thumbs.db":
                files.append(p)
    return files, skipped


def _files_under(folder: Path) -> list[Path]:
    return _walk(folder)[0]


def _subdirs(folder: Path, base: Path, records: list[Record], label: str | None, split: str) -> list[Path]:
    """Visible sub-folders of ``folder``; hidden or unreadable ones and stray files become reject records."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        rel = folder.relative_to(base).as_posix()
        records.append(Record(rel, str(folder), label, rel, split, f"unreadable folder ({exc.strerror})"))
        return []
    out = []
    for d in entries:
        rel = d.relative_to(base).as_posix()
        if d.is_dir() and _visible(d.name):
            out.append(d)
        elif d.name.lower() in IGNORED_DIRS or d.name == "Thumbs.db":
            continue
        elif d.suffix.lower() in METADATA_SUFFIXES:  # beside the class folders: synthetic.json, a README, a CSV
            continue
        elif d.name.startswith("."):
            why = "hidden folder (not scanned)" if d.is_dir() else "hidden file"
            records.append(Record(rel, str(d), label, rel, split, why))
        else:
            records.append(Record(rel, str(d), label, rel, split, "not in a class folder"))
    return out


def scan_folder(root: str | Path, *, patient_regex: str | None = None) -> list[Record]:
    """A class-per-folder tree, optionally under split folders (``train/``, ``val/``, ``test/``).

    Every file found is a record; those that cannot be images (hidden, special, unreadable, not an image by
    extension or content) carry their reject reason, so they are listed in ``rejects.csv``."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"data folder {base} not found: set data.path to a folder of class folders")
    rules = PatientRules(patient_regex)
    records: list[Record] = []
    subdirs = _subdirs(base, base, records, None, "")
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_NAMES]
    if split_dirs and len(split_dirs) != len(subdirs):
        others = ", ".join(d.name for d in subdirs if d not in split_dirs)
        raise DataError(f"{base} mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders ({others})")
    groups = [(SPLIT_NAMES[d.name.lower()], d) for d in split_dirs] if split_dirs else [("", base)]
    for split, split_dir in groups:
        class_dirs = subdirs if not split_dirs else _subdirs(split_dir, base, records, None, split)
        if not class_dirs:
            raise DataError(f"{split_dir} has no class folders: expected one folder per class (e.g. NORMAL/, PNEUMONIA/)")
        for class_dir in class_dirs:
            files, skipped = _walk(class_dir)
            for f in files:
                rel = f.relative_to(base).as_posix()
                records.append(Record(rel, _join(str(root), rel), class_dir.name, rules(rel), split, image_reject(f)))
            for f, why in skipped:
                rel = f.relative_to(base).as_posix()
                records.append(Record(rel, _join(str(root), rel), class_dir.name, rules(rel), split, why))
    if not records:
        raise DataError(f"no files found under {base}")
    return records


def _image_index(root: Path) -> dict[str, list[str]]:
    """stem -> relative paths of the image files under root (for CSVs that name images by id)."""
    index: dict[str, list[str]] = {}
    for f in _files_under(root):
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            index.setdefault(f.stem, []).append(f.relative_to(root).as_posix())
    return index


def csv_root(data_path: str | Path, cfg: CsvParams) -> Path:
    """The folder a CSV source's image paths are relative to: ``data.csv.root``, else the folder of the CSV
    (or, with ``data.csv.split_files``, ``data.path`` itself: the folder holding the CSVs)."""
    if cfg.root is not None:
        return Path(cfg.root)
    return Path(data_path) if cfg.split_files else Path(data_path).parent


def scan_csv(csv_path: str | Path, cfg: CsvParams, *, patient_regex: str | None = None) -> list[Record]:
    """A CSV with a path (or image id) column and a label column, or a CheXpert-style pathology column.

    With ``data.csv.split_files`` (CheXpert's ``[train.csv, valid.csv]``), ``csv_path`` is the folder holding
    those CSVs, read as one source: each file's rows belong to the split its name says (``train``, ``valid``
    / ``val``, ``test``), exactly as a ``data.csv.split_col`` would."""
    if not cfg.split_files:
        return _unique(_scan_one(Path(csv_path), cfg, str(csv_root(csv_path, cfg)), None, patient_regex), Path(csv_path))
    folder = Path(csv_path)
    if not folder.is_dir():
        raise DataError(f"data.path {folder} must be the folder holding data.csv.split_files "
                        f"({', '.join(cfg.split_files)})")
    records: list[Record] = []
    for name in cfg.split_files:
        split = SPLIT_NAMES.get(Path(name).stem.lower())
        if split is None:
            raise DataError(f"data.csv.split_files entry {name!r}: the file name must say its split "
                            f"(train.csv, valid.csv, val.csv, test.csv)")
        records += _scan_one(folder / name, cfg, str(csv_root(folder, cfg)), split, patient_regex)
    return _unique(records, folder)


def _unique(records: list[Record], src: Path) -> list[Record]:
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"{src}: image {dup} is listed more than once")
    return records


def _scan_one(src: Path, cfg: CsvParams, root_text: str, file_split: str | None,
              patient_regex: str | None) -> list[Record]:
    """The records of one CSV file (``file_split``: the split of all its rows, from ``split_files``)."""
    if cfg.labels:  # a multi-label task: the label columns, never data.csv.label_col
        cfg = dataclasses.replace(cfg, label_col=None)
    if not src.is_file():
        raise DataError(f"CSV manifest {src} not found: set data.path to your CSV file"
                        + (" folder (data.csv.split_files)" if file_split else ""))
    root = Path(root_text)
    raw = src.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # spreadsheet exports are often Windows-1252 / Latin-1
        text = raw.decode("cp1252", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    rows = list(reader)
    label_col = cfg.task or cfg.label_col
    for col in cfg.metadata:
        if col not in columns:
            raise DataError(f"{src}: no column '{col}' (from data.csv.metadata); columns are: {', '.join(columns)}")
    wanted = {"data.csv.path_col": cfg.path_col, ("data.csv.task" if cfg.task else "data.csv.label_col"): label_col,
              "data.csv.patient_col": cfg.patient_col, "data.csv.split_col": cfg.split_col}
    for key, col in wanted.items():
        if col is not None and col not in columns:
            raise DataError(f"{src}: no column '{col}' (from {key}); columns are: {', '.join(columns)}")
    names = multilabel.label_names(cfg.labels)
    for col in names:
        if col not in columns:
            raise DataError(f"{src}: no column '{col}' (from data.csv.labels); columns are: {', '.join(columns)}")
    policy = multilabel.policy_of(cfg.labels_uncertain, cfg.labels_blank, names)
    if label_col is None and not names:
        raise DataError("set data.csv.label_col (the class column) or data.csv.task (a CheXpert pathology column)")
    rules = PatientRules(patient_regex)
    index: dict[str, list[str]] | None = None
    records: list[Record] = []
    vectors: list[tuple[int, ...]] = []
    for row in rows:
        ref = (row[cfg.path_col] or "").strip().replace("\\", "/")
        rel, reject = ref, None
        if not cfg.allow_outside_root and _outside(ref):
            reject = "outside data.csv.root (set data.csv.allow_outside_root: true to read it)"
        elif not (root / ref).is_file():
            if index is None:
                index = _image_index(root)
            hits = index.get(PurePosixPath(ref).name, []) or index.get(PurePosixPath(ref).stem, [])
            if len(hits) == 1:
                rel = hits[0]
            else:
                reject = "missing" if not hits else f"ambiguous: {len(hits)} files named {ref}.*"
        if names:
            cells = [multilabel.cell(row[n], n, policy[n]) for n in names]
            vectors.append(tuple(v for v, _ in cells))
            label, why = multilabel.finding_name(vectors[-1]), next((w for _, w in cells if w), None)
        else:
            label, why = _label(row[label_col], task=cfg.task, uncertain=cfg.uncertain)
        reject = reject or why
        patient = (row[cfg.patient_col] or "").strip() if cfg.patient_col else ""
        split = SPLIT_NAMES.get((row[cfg.split_col] or "").strip().lower(), "") if cfg.split_col else ""
        meta = {c: (row[c] or "").strip() for c in cfg.metadata} if cfg.metadata else None
        records.append(Record(rel, _join(root_text, rel), label, patient or rules(rel), file_split or split, reject,
                              meta=meta))
    if not records:
        raise DataError(f"{src} has no rows")
    for r, v in zip(records, vectors):  # multi-label: each row's label vector
        r.labels = v
    return records


def _outside(ref: str) -> bool:
    """A CSV path that leaves the root: absolute (or a drive), or climbing out with ``..``."""
    import posixpath

    if ref.startswith("/") or (len(ref) > 1 and ref[1] == ":"):
        return True
    norm = posixpath.normpath(ref)
    return norm == ".." or norm.startswith("../")


def _label(value: str | None, *, task: str | None, uncertain: str) -> tuple[str | None, str | None]:
    """Class name and reject reason of one CSV cell. With a task: CheXpert's 1 / 0 / -1 / blank."""
    text = (value or "").strip()
    if task is None:
        return (text, None) if text else (None, "no label")
    if text == "":
        return "negative", None  # CheXpert: blank = not mentioned = negative
    try:
        v = float(text)
    except ValueError:
        return None, f"bad label {text!r} in column {task}"
    if v == 1:
        return "positive", None
    if v == 0:
        return "negative", None
    if v == -1:
        if uncertain == "ignore":
            return None, "uncertain label (-1) ignored"
        return uncertain, None
    return None, f"bad label {text!r} in column {task}"


def scan_npz(npz_path: str | Path, *, class_names: tuple[str, ...] = ()) -> list[Record]:
    """MedMNIST-style arrays ``<split>_images`` / ``<split>_labels``; ids are ``<split>/<index>``."""
    src = Path(npz_path)
    if not src.is_file():
        raise DataError(f"npz file {src} not found")
    try:
        data = np.load(src, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise DataError(f"{src}: not a readable .npz file ({exc})") from None
    with data:
        splits = [s for s in NPZ_SPLITS if f"{s}_images" in data.files]
        if not splits:
            raise DataError(f"{src}: no '<split>_images' arrays (found: {', '.join(data.files)})")
        records = []
        for split in splits:
            if f"{split}_labels" not in data.files:
                raise DataError(f"{src}: '{split}_images' has no '{split}_labels'")
            labels = np.asarray(data[f"{split}_labels"])
            if labels.ndim == 2 and labels.shape[1] > 1:
                raise DataError(f"{src}: '{split}_labels' is multi-label ({labels.shape[1]} columns); choose one task first")
            labels = labels.reshape(-1)
            width = len(str(len(labels) - 1))
            for i, lab in enumerate(labels.tolist()):
                name = class_names[lab] if lab < len(class_names) else str(lab)
                rid = f"{split}/{i:0{max(width, 5)}d}"
                records.append(Record(rid, f"{src.as_posix()}#{split}_images/{i}", name, rid, split, None, int(lab)))
    return records
