"""Parameters: ``params.yaml`` read once into frozen dataclasses, with ``-S section.key=value`` overrides.

Every command goes through :func:`load_params`. Unknown keys, values of the wrong type and values out of
range (:mod:`featpipe.params.checks`) are a :class:`~featpipe.core.errors.ConfigError` whose one-line message
names the key (exit code 2); so are a params file that is a folder, not UTF-8, or over 1 MiB.

Each section below is owned by the module that reads it; add a field with its default here and
the key becomes valid in ``params.yaml`` and on the command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from featpipe.core.errors import ConfigError
from featpipe.engine.local import POOL_MIN_SECONDS
from featpipe.params.checks import check
from featpipe.params.heads import SECTIONS as HEAD_SECTIONS
from featpipe.params.study import ArmParams, NetworkParams, check_metric

# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class CsvParams:
    """How to read a CSV manifest (HAM10000, CheXpert, your own)."""

    root: str | None = None  # folder the CSV's paths are relative to (default: the CSV's folder)
    path_col: str = "path"
    label_col: str | None = "label"  # None with `task` set: CheXpert-style one column per pathology
    patient_col: str | None = None  # e.g. lesion_id (HAM10000); CheXpert: parsed from the path
    split_col: str | None = None
    task: str | None = None  # CheXpert: the pathology column that is the task (binary)
    uncertain: Literal["ignore", "positive", "negative"] = "ignore"  # CheXpert -1 labels
    # multi-label tasks (featpipe.data.multilabel): several label columns at once, e.g. [Atelectasis, Cardiomegaly]
    # or [chexpert] (CheXpert's 14 observations); cells 1 / 0 / -1 (uncertain) / blank (checked in params.checks)
    labels: tuple[str, ...] = ()
    labels_uncertain: dict[str, str] = field(default_factory=dict)  # -1: {default: zeros|ones|ignore, <label>: ...}
    labels_blank: Literal["negative", "ignore"] = "negative"  # blank = not mentioned = negative (CheXpert), or unknown
    allow_outside_root: bool = False  # paths outside `root` (../, absolute) are rejected unless this is true
    # CSVs read as one source, each file's rows in the split its name says (CheXpert: [train.csv, valid.csv]);
    # data.path is then the folder holding them (and the default root)
    split_files: tuple[str, ...] = ()
    # CSV columns copied into the manifest as they are (subgroup metrics: report.subgroups), e.g. [sex, age, view]
    metadata: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyntheticParams:
    """The offline demo set: small grayscale images whose class signal sits in a known region."""

    classes: int = 2
    images_per_class: int = 150
    size: int = 64
    images_per_patient: int = 2
    seed: int = 0


@dataclass(frozen=True)
class DataParams:
    name: str = "demo"  # names the cache folder: cache/<name>/...
    source: Literal["folder", "csv", "npz", "synthetic"] = "synthetic"
    path: str = "data/synthetic"  # folder, CSV file, npz file, or where to write the synthetic set
    patient_regex: str | None = None  # first group (or whole match) of the file stem is the patient
    max_image_pixels: int = 100_000_000  # larger images are rejected ("too large")
    verify_images: bool = True  # fully decode every file in prepare to reject unreadable ones
    class_names: tuple[str, ...] = ()  # class names in label order (npz: names of labels 0, 1, ...)
    medmnist_flag: str | None = None  # e.g. pneumoniamnist: fetched with the medmnist package if missing
    medmnist_size: int = 28
    keep_conflicting: bool = False  # keep byte-identical images with conflicting labels (default: excluded)
    csv: CsvParams = field(default_factory=CsvParams)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)


@dataclass(frozen=True)
class SplitParams:
    seed: int = 0  # seed of the train/val/test draw
    test_fraction: float = 0.2  # used when the data set has no test split of its own
    val_fraction: float = 0.1
    min_source_val_per_class: int = 50  # a smaller source val split (Kaggle's 16 images) is merged into train
    seeds: tuple[int, ...] = tuple(range(10))  # k-shot draws
    shots: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200)
    shots_policy: Literal["error", "cap"] = "error"  # k larger than a class: error, or cap and record
    # matched (default): thresholds, model selection and early stopping use a val subset of k per class per
    # (seed, k), nested like the train subsets: a k-shot result uses 2k labelled images per class, as it claims;
    # full: the whole val split (more labelled images than k; benchmarks/results/val_policy.md measures the gap)
    val_policy: Literal["full", "matched"] = "matched"
    # what a shot is: image = k images per class, one per patient while patients last; patient = k patients per
    # class with all their images of that class (MedFMC's definition; the matched val subsets count the same way)
    shot_unit: Literal["image", "patient"] = "image"
    # alternative to shots: fractions of the training set (stratified, grouped, nested), e.g. [0.01, 0.05, 0.1];
    # set shots: [] to use them (featpipe.data.fractions)
    fractions: tuple[float, ...] = ()

    def __post_init__(self):
        if self.fractions and self.shots:
            raise ConfigError("split.fractions and split.shots are alternatives: set split.shots: [] to draw "
                              "fractions of the training set, or split.fractions: [] for k shots per class")
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad:
            raise ConfigError(f"bad value for 'split.fractions': {bad[0]} (a fraction of the training set, in (0, 1])")
        if self.fractions and self.shot_unit == "patient":
            raise ConfigError("split.shot_unit: patient counts shots in patients; fractions are of the training "
                              "images: use shot_unit: image with split.fractions")
        if self.fractions and self.val_policy == "matched":
            raise ConfigError("split.val_policy: matched draws k val images per class and needs split.shots; "
                              "use val_policy: full with split.fractions")


@dataclass(frozen=True)
class DecodeParams:
    workers: int = 2  # decoding processes
    # reduced-scale (DCT) JPEG decoding when the target is small: off by default, because it changes pixels against
    # the references' full decode (up to 8 grey levels on real radiographs at 224 px; benchmarks/results/parity.md)
    # for ~2.5x faster decoding of large JPEGs. The one default of every decoding function (imaging.base.DEFAULT_DRAFT).
    draft: bool = False


@dataclass(frozen=True)
class ExtractParams:
    backbones: tuple[str, ...] = ("tiny_cnn",)
    weights: str = "default"  # default | imagenet | random | a local file/folder | a hub id
    layer: str | None = None  # a registered cut point (truncated network); None = final embedding
    batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    feature_dtype: Literal["float32", "float16"] = "float32"


@dataclass(frozen=True)
class HeadsParams:
    # feature standardiser before every head: pool = fitted on the whole train split's features without labels,
    # kshot = on the k-shot images only, center = pool mean only (with prototype: SimpleShot's CL2N), none
    scaler: Literal["pool", "kshot", "center", "none"] = "pool"
    l2_normalize: bool = False  # L2-normalise each standardised embedding before the classifier
    cv_folds: int = 5  # C (and gamma) are cross-validated when every class has at least this many images
    cv_scoring: Literal["balanced_accuracy", "accuracy"] = "balanced_accuracy"
    # temperature = the head's log-probabilities divided by a T fitted on the val outputs (NLL), recorded per row
    calibrate: Literal["none", "temperature"] = "none"


def _with_head_sections(shared: type) -> type:
    """``heads``: the shared settings plus one section per head (``heads.svc``, ...), each that head's own
    params dataclass (:data:`featpipe.params.heads.SECTIONS`): adding a head adds its section there."""
    extra = [(name, cls, field(default_factory=cls)) for name, cls in HEAD_SECTIONS.items()]
    cls = dataclasses.make_dataclass("HeadsParams", extra, bases=(shared,), frozen=True)
    cls.__module__, cls.__doc__ = __name__, shared.__doc__
    return cls


HeadsParams = _with_head_sections(HeadsParams)


@dataclass(frozen=True)
class FitParams:
    heads: tuple[str, ...] = ("svc", "logistic", "mlp", "prototype")  # what `sweep` fits
    backbones: tuple[str, ...] = ()  # what `sweep` fits; empty = extract.backbones
    shots: tuple[int, ...] = ()  # empty = split.shots
    seeds: tuple[int, ...] = ()  # empty = split.seeds
    n_jobs: int = 2
    bootstrap: int = 1000  # patient-level bootstrap resamples for a single run's intervals (0 = none)
    save_models: bool = True
    curves: bool = True  # write ROC/PR points per run (into the run log under results/predictions/)
    # Tasks with more classes are refused in one line before any fit (issue 21): every run's predictions, curves and
    # per-class metrics grow with the classes (1,000 classes, 4,000 images, k=2: one prototype run took 320 s and
    # 674 MiB on a shared 2-core machine).
    max_classes: int = 1000


@dataclass(frozen=True)
class ClinicalParams:
    """The "clinical-grade" flag per configuration (defaults from the published study)."""

    min_accuracy_binary: float = 0.90
    min_accuracy_multiclass: float = 0.85
    max_std: float = 0.05  # std of accuracy across seeds, as a fraction (0.05 = 5 points)
    min_auroc: float = 0.95
    min_seeds: int = 5  # fewer seeds: never clinical-grade
    min_sensitivity: float = 0.80  # binary tasks: mean sensitivity at least this
    min_specificity: float = 0.80  # binary tasks: mean specificity at least this
    # featpipe: the interval's lower bound of accuracy and AUROC, seeds, sensitivity/specificity, chosen on val;
    # published: the source study's rule as written (mean accuracy, std, mean AUROC), to reproduce it
    rule: Literal["featpipe", "published"] = "featpipe"


@dataclass(frozen=True)
class CompareParams:
    """``featpipe compare``: paired comparisons of configurations (featpipe.results.compare)."""

    metrics: tuple[str, ...] = ("auroc", "macro_f1")
    reference: str | None = None  # a configuration: every other one against it; None = the val-chosen one vs each other
    bootstrap: int = 1000  # patient-level paired bootstrap resamples for the chosen pairs (0 = none)
    pairs: tuple[str, ...] = ()  # extra "A vs B" pairs for the bootstrap column (the val-best vs runner-up always)
    seed: int = 0

    def __post_init__(self):
        for m in self.metrics:
            check_metric("compare.metrics", m)


@dataclass(frozen=True)
class FinetuneParams:
    """Fine-tuning (featpipe.finetune): defaults from the published study."""

    backbones: tuple[str, ...] = ("tiny_cnn",)
    strategies: tuple[str, ...] = ("scratch", "head", "layerwise", "full")  # + "truncated" (needs layer)
    shots: tuple[int, ...] = (5, 10)
    seeds: tuple[int, ...] = (0, 1, 2)
    weights: str = "default"  # pretrained weights for head/layerwise/full/truncated; scratch is always random
    layer: str | None = None  # cut point for the truncated strategy
    truncated_mode: Literal["layerwise", "full"] = "layerwise"
    # layer-wise fine-tuning freezes these parameter-name prefixes (relative to the network, e.g. [conv1., bn1.,
    # layer1., layer2.] for a ResNet) instead of its family's rule (featpipe backbones --details); [] = the rule
    layerwise_freeze: tuple[str, ...] = ()
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: float = 0.9  # sgd only
    lr: float = 1e-4
    backbone_lr_factor: float = 0.1  # full fine-tuning: backbone lr = lr * factor
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 50
    patience: int = 10  # early stopping on val loss; the best-val epoch's weights are restored
    imbalance: Literal["weighted_loss", "balanced_sampler", "none"] = "weighted_loss"
    augment: bool = True  # train only: random resized crop, hflip, rotation, brightness/contrast
    crop_scale_min: float = 0.8  # random resized crop keeps this fraction of the area or more
    rotation_degrees: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    hflip: bool = True
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: str = "auto"
    threads: int = 0  # torch CPU threads while training (0 = torch's default); 1 on a shared or busy CPU
    eval_batch_size: int = 64  # no-grad val/test passes
    save_models: bool = True  # safetensors checkpoint + JSON sidecar under models/finetune/
    # arms: backbone + strategy + their own settings (ArmParams), run beside backbones x strategies
    arms: tuple[ArmParams, ...] = ()

    def __post_init__(self):
        names = [a.name for a in self.arms]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ConfigError(f"finetune.arms: two arms are named {dup!r}; names must be unique")

    def arm(self, name: str | None) -> "FinetuneParams":
        """These settings with arm ``name``'s overrides applied (None: unchanged)."""
        if name is None:
            return self
        for a in self.arms:
            if a.name == name:
                return dataclasses.replace(self, **a.overrides())
        raise ConfigError(f"no arm {name!r} in finetune.arms (arms: {', '.join(a.name for a in self.arms) or 'none'})")


@dataclass(frozen=True)
class GradcamParams:
    """Grad-CAM (featpipe.explain): which saved models ``featpipe gradcam`` renders without --model."""

    runs: tuple[str, ...] = ()  # model files (saved head .skops or fine-tuned .safetensors)
    per_outcome: int = 2  # images per TP / TN / FP / FN cell (per correct / incorrect class cell if C > 2)
    seed: int = 0  # which images of a cell are drawn
    layer: str | None = None  # module in the backbone to take Grad-CAM at; None = the registered gradcam_layer
    sanity_threshold: float = 0.5  # mean rank correlation at or above this after re-initialisation fails
    sanity_layers: int = 4  # top parameterised layers re-initialised (cascading, head first)


@dataclass(frozen=True)
class ReportParams:
    metric: str = "macro_f1"  # best configurations are chosen on val_<metric> and reported on test (METRIC_NAMES)
    title: str = "featpipe report"
    # subgroup metrics (featpipe.results.subgroups): manifest columns (data.csv.metadata) or age_band (report.age_column
    # binned at report.age_bands: [lo, hi) bands); groups under min_subgroup test images are shown as "too few"
    subgroups: tuple[str, ...] = ()
    age_column: str = "age"
    age_bands: tuple[float, ...] = (0.0, 18.0, 40.0, 65.0, 120.0)
    min_subgroup: int = 20
    subgroup_bootstrap: int = 1000  # resamples of test images for the AUROC and worst-group-gap intervals

    def __post_init__(self):
        check_metric("report.metric", self.metric)


@dataclass(frozen=True)
class EngineParams:
    """Where extract, sweep and finetune run (featpipe.engine): this process, or a Ray cluster."""

    kind: Literal["local", "ray"] = "local"  # --engine local | ray
    address: str | None = None  # ray: auto | ray://host:10001 | host:6379 | null = start a local cluster here
    num_cpus: int | None = None  # CPUs of a local cluster featpipe starts (null = all of this machine)
    decode_cpus: float = 1.0  # per extraction read/crop task (reads the decoded-image cache)
    embed_cpus: float = 1.0  # per embedding actor (one model per actor)
    embed_gpus: float = 1.0  # per embedding actor where the cluster has GPUs (0 = CPU actors)
    actors: int = 0  # embedding actors: 0 = one per embed_gpus of the cluster's GPUs, else one per 2 embed_cpus
    fit_cpus: float = 1.0  # per sweep task (one head x shots x seed run)
    # local engine: a sweep estimated at under this many seconds of work runs in this process (its fit.n_jobs workers
    # would spend ~2 s each importing before their first run); 0 = always start the workers
    pool_min_seconds: float = POOL_MIN_SECONDS
    finetune_cpus: float = 1.0  # per fine-tuning task (one run)
    finetune_gpus: float = 1.0  # per fine-tuning task where the cluster has GPUs (0 = CPU)


@dataclass(frozen=True)
class ZeroshotParams:
    """Zero-shot configurations (shots = 0) of backbones with a text tower (``featpipe zeroshot``)."""

    prompts: str = "prompts.yaml"  # the prompts file: prompt sets, each with positive (and negative) prompts per class
    backbones: tuple[str, ...] = ()  # empty = the extract.backbones that have a text tower


@dataclass(frozen=True)
class ExternalSetParams:
    """One external test set (``evaluate.external``): another source prepared under its own data name
    (``featpipe prepare --external <name>``: ``data/external/<name>/``, ``cache/<name>/``) and scored by every
    saved model (``featpipe evaluate-external``)."""

    name: str = ""  # the data name of the set: cache/<name>/, data/external/<name>/, results/external/<name>/
    source: Literal["folder", "csv", "npz"] = "folder"
    path: str = ""  # folder, CSV file or npz file
    patient_regex: str | None = None
    class_names: tuple[str, ...] = ()  # npz: names of labels 0, 1, ...
    csv: CsvParams = field(default_factory=CsvParams)
    # its label -> a study class; labels not listed are rejected by name (empty: labels that are study classes)
    label_map: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateParams:
    external: tuple[ExternalSetParams, ...] = ()  # external test sets (never in the study's splits)

    def external_set(self, name: str) -> ExternalSetParams:
        for e in self.external:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in self.external) or "none"
        raise ConfigError(f"no external set '{name}' in evaluate.external (listed: {known})")


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    split: SplitParams = field(default_factory=SplitParams)
    decode: DecodeParams = field(default_factory=DecodeParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    heads: HeadsParams = field(default_factory=HeadsParams)
    fit: FitParams = field(default_factory=FitParams)
    clinical: ClinicalParams = field(default_factory=ClinicalParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    gradcam: GradcamParams = field(default_factory=GradcamParams)
    report: ReportParams = field(default_factory=ReportParams)
    compare: CompareParams = field(default_factory=CompareParams)
    engine: EngineParams = field(default_factory=EngineParams)
    networks: tuple[NetworkParams, ...] = ()  # networks of your own, registered as backbones by name
    zeroshot: ZeroshotParams = field(default_factory=ZeroshotParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


def configured_backbones(params: Params) -> list[str]:
    """The backbones whose decoded caches the pipeline reads: extract.backbones + finetune.backbones + the
    backbones of finetune.arms."""
    return list(dict.fromkeys(list(params.extract.backbones) + list(params.finetune.backbones)
                              + [a.backbone for a in params.finetune.arms]))


# --------------------------------------------------------------------------- loading


def load_params(path: str | Path | None = "params.yaml", overrides: typing.Sequence[str] = ()) -> Params:
    """Read ``path`` (missing file = all defaults), apply ``section.key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.exists():
            try:
                loaded = yaml.safe_load(_read_text(p)) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{p}: expected a mapping of sections at the top level")
            raw = loaded
        elif str(path) != "params.yaml":
            raise ConfigError(f"parameter file {p} not found")
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    params = build(Params, raw, "")
    check(params)
    return params


MAX_BYTES = 1 << 20  # a params file larger than this is refused (a mistake, or /dev/zero)


def _read_text(p: Path) -> str:
    """The params file's text: a regular (or special) file of at most :data:`MAX_BYTES`, UTF-8."""
    if p.is_dir():
        raise ConfigError(f"parameter file {p} is a folder: give a YAML file (--params FILE)")
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"parameter file {p} cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"parameter file {p} is larger than {MAX_BYTES // 1024} KiB: not a params file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"parameter file {p} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None


def parse_override(item: str) -> tuple[str, Any]:
    """``"split.shots=[1,5]"`` -> ``("split.shots", [1, 5])`` (the value is read as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has no key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key, value


def apply_overrides(raw: dict, overrides: typing.Sequence[str]) -> dict:
    """``raw`` (a params mapping, changed in place and returned) with ``section.key=value`` overrides applied."""
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return raw


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"unknown parameter '{key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def build(cls: type, raw: Any, prefix: str):
    """Build dataclass ``cls`` from a mapping, naming the dotted key of anything wrong."""
    where = prefix or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where}' must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"unknown parameter '{key}' (known{' in ' + prefix if prefix else ''}: {', '.join(names)})")
    values = {}
    for name in names:
        if name in raw:
            key = f"{prefix}.{name}" if prefix else name
            values[name] = _coerce(hints[name], raw[name], key)
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"bad value for '{key}': {value!r} (choose from {', '.join(map(str, args))})")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"bad value for '{key}': {value!r} (expected a mapping)")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0]
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for '{key}': {value!r} (expected true or false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for '{key}': {value!r} (expected an integer)")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"bad value for '{key}': {value!r} (expected a number)")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"bad value for '{key}': {value!r} (expected a string)")
    raise ConfigError(f"'{key}': unsupported parameter type {tp!r}")  # pragma: no cover - schema bug


def to_dict(params: Any) -> dict:
    """Plain nested dict (tuples as lists) of a params dataclass, for provenance and JSON."""

    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(params))
