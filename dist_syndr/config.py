"""Typed configuration: a tree of small dataclasses, YAML presets, dotted overrides.

``load("configs/demo.yaml", ["reshape.drcdown.cap=30"])`` reads a preset, applies
``key=value`` overrides (values parsed as YAML scalars) and returns a validated
:class:`Config`. An unknown key or a bad value raises ``ValueError`` naming the
dotted key. :func:`dump` writes the resolved tree back as YAML, so a run can
store exactly what it ran with. Components receive their own section, never
the whole tree.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dist_syndr import files

# Target-domain presets of docs/METHOD.md section 6: the KADID-10k distortion types kept.
TARGET_TYPES: dict[str, tuple[int, ...]] = {
    "livec": (1, 3, 10, 17, 18, 25),
    "koniq": (1, 3, 16, 17, 18, 25),
    "bid": (1, 3, 9, 21, 23, 25),
    "live": tuple(range(1, 26)),
    "csiq": tuple(range(1, 26)),
    "tid2013": tuple(range(1, 26)),
    "kadid": tuple(range(1, 26)),
    "pipal1": (1, 2, 3, 9, 17, 18, 25),
    "pipal2": (1, 2, 3, 9, 17, 23),
    "pipal3": (1, 3, 16, 17, 18, 19, 25),
    "pipal4": (1, 3, 7, 9, 10, 17, 18, 25),
    "pipal5": (1, 2, 3, 4, 9),
    "pipal6": (1, 2, 3, 9, 10, 11, 12, 16, 17, 18, 19, 21, 22, 25),
}
NUM_DISTORTION_TYPES = 25
NUM_LEVELS = 5


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{key}: {message}")


def _require_choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, f"expected one of {', '.join(choices)}, got {value!r}")


@dataclass
class RuntimeConfig:
    """Backend choices; ``auto`` detects, anything else forces (tests force each fallback)."""

    device: str = "auto"  # auto | cpu | cuda
    dist_backend: str = "auto"  # auto | nccl | gloo
    faiss: str = "auto"  # auto | cpu | gpu
    dali: str = "auto"  # auto | gpu | cpu | off
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _require_choice(self.device, "device", ("auto", "cpu", "cuda"))
        _require_choice(self.dist_backend, "dist_backend", ("auto", "nccl", "gloo"))
        _require_choice(self.faiss, "faiss", ("auto", "cpu", "gpu"))
        _require_choice(self.dali, "dali", ("auto", "gpu", "cpu", "off"))
        _require_choice(self.log_level, "log_level", ("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass
class NeighborsConfig:
    """How the cosine neighbour graph is searched (``dist_syndr.reshape.neighbors``)."""

    backend: str = "auto"  # auto | cpu | gpu (auto: GPUs when FAISS sees any)
    cpu_engine: str = "auto"  # auto (torch) | torch (GEMM tiles) | faiss (IndexFlatIP range search)
    index: str = "exact"  # exact | ivf (approximate, reports measured edge recall)
    query_block: int = 2048
    database_block: int = 2048
    margin: float = 0.0  # float32 band re-decided in float64; 0 = bound derived from D
    max_gpu_k: int = 2048
    ivf_nlist: int = 0  # 0 = 4 sqrt(N)
    ivf_nprobe: int = 32
    recall_sample: int = 1000
    split_across_ranks: bool = True
    progress_min_rows: int = 50_000

    def __post_init__(self) -> None:
        _require_choice(self.backend, "backend", ("auto", "cpu", "gpu"))
        _require_choice(self.index, "index", ("exact", "ivf"))
        _require_choice(self.cpu_engine, "cpu_engine", ("auto", "torch", "faiss"))
        for key in ("query_block", "database_block", "max_gpu_k", "ivf_nprobe", "recall_sample"):
            _require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _require(self.ivf_nlist >= 0, "ivf_nlist", f"must be >= 0, got {self.ivf_nlist}")
        _require(0.0 <= self.margin < 0.1, "margin", f"must lie in [0, 0.1), got {self.margin}")


@dataclass
class DDCUpConfig:
    """Diverse content upsampling (docs/METHOD.md section 3)."""

    enabled: bool = True  # training: train on the shard set's upsampled samples (false: a baseline without them)
    target: str = "bid"  # preset naming the distortion types kept (docs/METHOD.md section 6)
    types: list[int] = field(default_factory=list)  # explicit types; overrides target
    levels: list[int] = field(default_factory=lambda: [1, 3, 5])
    top_k: int = 5
    window: float = 0.05
    weighting: str = "reference"  # reference: softmax(distances) | similarity: softmax(-d / T)
    temperature: float = 0.05

    def __post_init__(self) -> None:
        _require_choice(self.target, "target", tuple(TARGET_TYPES))
        for key, values, high in (("types", self.types, NUM_DISTORTION_TYPES), ("levels", self.levels, NUM_LEVELS)):
            bad = [v for v in values if not 1 <= v <= high]
            _require(not bad, key, f"values must lie in 1..{high}, got {bad}")
            _require(len(set(values)) == len(values), key, f"values must be distinct, got {values}")
        _require(bool(self.levels), "levels", "must not be empty")
        _require(self.top_k >= 1, "top_k", f"must be >= 1, got {self.top_k}")
        _require(self.window >= 0, "window", f"must be >= 0, got {self.window}")
        _require_choice(self.weighting, "weighting", ("reference", "similarity"))
        _require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")

    @property
    def distortion_types(self) -> tuple[int, ...]:
        """The distortion types kept for the target domain."""
        return tuple(sorted(self.types)) if self.types else TARGET_TYPES[self.target]


@dataclass
class DRCDownConfig:
    """Redundant cluster downsampling (docs/METHOD.md section 4)."""

    enabled: bool = True
    sim_threshold: float = 0.9
    label_threshold: float = 1.0
    cap: int = 20

    def __post_init__(self) -> None:
        _require(-1.0 <= self.sim_threshold <= 1.0, "sim_threshold", f"must lie in [-1, 1], got {self.sim_threshold}")
        _require(self.label_threshold > 0, "label_threshold", f"must be > 0, got {self.label_threshold}")
        _require(self.cap >= 1, "cap", f"must be >= 1, got {self.cap}")


@dataclass
class ReshapeConfig:
    """Both reshaping operations and the neighbour search they share."""

    ddcup: DDCUpConfig = field(default_factory=DDCUpConfig)
    drcdown: DRCDownConfig = field(default_factory=DRCDownConfig)
    neighbors: NeighborsConfig = field(default_factory=NeighborsConfig)


@dataclass
class SyntheticPoolConfig:
    """A generated feature pool (demo and benchmarks): clustered features with labels."""

    num_samples: int = 20_000
    dim: int = 256
    num_clusters: int = 400
    spread: float = 0.25
    num_train_refs: int = 60
    num_candidate_refs: int = 300

    def __post_init__(self) -> None:
        for key in ("num_samples", "dim", "num_clusters", "num_train_refs", "num_candidate_refs"):
            _require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _require(self.num_train_refs >= 2, "num_train_refs", f"must be >= 2, got {self.num_train_refs}")
        _require(self.spread > 0, "spread", f"must be > 0, got {self.spread}")


POOL_KINDS = (
    "kadid10k",
    "kadid_add81",
    "kadis700k",
    "livec",
    "koniq10k",
    "bid",
    "pipal",
    "tid2013",
    "live",
    "csiq",
    "csv",
    "folder",
)


@dataclass
class FeaturesConfig:
    """Reference-image embeddings for DDCUp (``dist_syndr.features.backbone``)."""

    backbone: str = "resnet50"
    weights: str = ""  # local .safetensors / .pth / .pt file; never downloaded
    is_random_init: bool = False  # random weights, only when asked for explicitly
    batch_size: int = 32
    crop: int = 224  # centre crop side; smaller images are first resized up to it
    train_features: str = ""  # precomputed (N, D) .npy for the training references (skips the backbone)
    train_names: str = ""  # one reference file name per line, rows of train_features
    candidate_features: str = ""
    candidate_names: str = ""

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.crop >= 8, "crop", f"must be >= 8, got {self.crop}")
        for prefix in ("train", "candidate"):
            features, names = getattr(self, f"{prefix}_features"), getattr(self, f"{prefix}_names")
            _require(
                bool(features) == bool(names), f"{prefix}_names", f"{prefix}_features and {prefix}_names go together"
            )


@dataclass
class PoolConfig:
    """The training pool read by ``dist_syndr.pools`` (docs/METHOD.md section 7 layouts)."""

    kind: str = "folder"
    root: str = ""
    types: list[int] = field(default_factory=list)  # KADID types kept; empty: the DDCUp target's types
    levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    training_refs_only: bool = True  # KADID-10k: drop the 7 references docs/METHOD.md section 6 excludes
    distort: bool = False  # reference pools: make every (type, level) with our distortion engine
    labels: str = "dataset"  # dataset | weak (full-reference ensemble) | none
    on_missing: str = "error"  # error | skip: labelled images absent on disk

    def __post_init__(self) -> None:
        _require_choice(self.kind, "kind", POOL_KINDS)
        _require_choice(self.labels, "labels", ("dataset", "weak", "none"))
        _require_choice(self.on_missing, "on_missing", ("error", "skip"))
        bad = [t for t in self.types if not 1 <= t <= NUM_DISTORTION_TYPES] + [
            v for v in self.levels if not 1 <= v <= NUM_LEVELS
        ]
        _require(not bad, "types", f"types must lie in 1..25 and levels in 1..5, got {bad}")


@dataclass
class CandidatesConfig:
    """DDCUp's candidate contents; ``kind: ""`` turns upsampling off."""

    kind: str = ""  # "" | kadid_add81 (distorted images on disk) | folder (distorted by our engine)
    root: str = ""

    def __post_init__(self) -> None:
        _require_choice(self.kind, "kind", ("", "kadid_add81", "folder"))


@dataclass
class ShardConfig:
    """The sharding step (``launchers/shard.py``)."""

    name: str = "default"
    output_root: str = "shards"
    samples_per_shard: int = 1000
    png_compress_level: int = 1
    num_workers: int = 2
    on_error: str = "error"  # error | skip: unreadable images
    pool: PoolConfig = field(default_factory=PoolConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)

    def __post_init__(self) -> None:
        _require(
            bool(self.name) and "/" not in self.name and not self.name.startswith("."),
            "name",
            f"must be a plain folder name, got {self.name!r}",
        )
        _require(self.samples_per_shard >= 1, "samples_per_shard", f"must be >= 1, got {self.samples_per_shard}")
        _require(
            0 <= self.png_compress_level <= 9, "png_compress_level", f"must lie in 0..9, got {self.png_compress_level}"
        )
        _require(self.num_workers >= 1, "num_workers", f"must be >= 1, got {self.num_workers}")
        _require_choice(self.on_error, "on_error", ("error", "skip"))


BACKBONES = (
    "resnet18",
    "resnet50",
    "vit_tiny_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
    "vit_huge_patch14_224",
)


@dataclass
class ModelConfig:
    """The regression model (``dist_syndr.features.model``): a timm backbone and a linear head."""

    backbone: str = "resnet50"
    weights: str = ""  # local .safetensors / .pth / .pt backbone weights; never downloaded
    is_random_init: bool = False  # random backbone weights, only when asked for explicitly
    image_size: int = 224  # ViT position embeddings are built for this input side
    is_grad_checkpointing: bool = False  # ViTs: recompute blocks in backward to save memory

    def __post_init__(self) -> None:
        _require_choice(self.backbone, "backbone", BACKBONES)
        _require(self.image_size >= 16, "image_size", f"must be >= 16, got {self.image_size}")


@dataclass
class DataConfig:
    """The input pipeline (``dist_syndr.loader``)."""

    loader: str = "auto"  # auto (DALI when installed) | dali | torch
    batch_size: int = 32  # per rank
    num_workers: int = 2  # reader processes (DALI external_source workers / DataLoader workers)
    crop: int = 224  # random crop side for training; no resize, flip or colour change (docs/METHOD.md section 5)
    eval_crops: int = 5  # crops per image at evaluation, predictions averaged per image
    eval_crop_mode: str = "random"  # random | centre
    shuffle_block: int = 0  # 0: global shuffle; n > 0: shuffle blocks of n index-consecutive samples, then within
    drop_last: bool = True  # training: equal, full batches on every rank
    on_error: str = "error"  # error | skip: corrupt members or checksum mismatches
    verify_checksums: bool = True  # check shard sha256 once before the first epoch
    prefetch: int = 2

    def __post_init__(self) -> None:
        _require_choice(self.loader, "loader", ("auto", "dali", "torch"))
        for key in ("batch_size", "num_workers", "crop", "eval_crops", "prefetch"):
            _require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _require_choice(self.eval_crop_mode, "eval_crop_mode", ("random", "centre"))
        _require(self.shuffle_block >= 0, "shuffle_block", f"must be >= 0, got {self.shuffle_block}")
        _require_choice(self.on_error, "on_error", ("error", "skip"))


@dataclass
class TrainConfig:
    """Optimisation and DeepSpeed settings (docs/METHOD.md section 5 defaults)."""

    epochs: int = 24
    learning_rate: float = 2e-5  # backbone; the head trains at head_lr_multiplier times it
    head_lr_multiplier: float = 10.0
    weight_decay: float = 5e-4
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    gradient_accumulation_steps: int = 1
    global_batch_size: int = 0  # 0 = data.batch_size x world size x accumulation; else checked against them
    gradient_clipping: float = 0.0  # 0 = off
    is_optimizer_offloaded: bool = False  # ZeRO optimizer state on the CPU
    shard_set: str = ""  # training shard set folder (written by launchers/shard.py)
    targets: list[str] = field(default_factory=list)  # evaluation sets as name=folder (shard sets)
    output_dir: str = "runs"  # checkpoints and run files under <output_dir>/<run_name>
    resume: str = "auto"  # auto: continue from the last complete checkpoint | never
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch every this many steps (0 = at epoch ends only)
    keep_checkpoints: int = 2  # checkpoint tags kept on disk (older ones are removed)
    log_every_steps: int = 10  # step metrics (loss, lr, images/s, data-wait share) every this many steps
    experiment: str = "dist_syndr"  # MLflow experiment
    is_smoke_data: bool = False  # build tiny photo shard sets at shard_set / targets when missing

    def __post_init__(self) -> None:
        _require_choice(self.resume, "resume", ("auto", "never"))
        bad = [t for t in self.targets if "=" not in t]
        _require(not bad, "targets", f"entries must read name=folder, got {bad}")
        _require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        _require(self.head_lr_multiplier > 0, "head_lr_multiplier", f"must be > 0, got {self.head_lr_multiplier}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        _require_choice(self.precision, "precision", ("auto", "fp32", "bf16", "fp16"))
        _require(
            self.gradient_accumulation_steps >= 1,
            "gradient_accumulation_steps",
            f"must be >= 1, got {self.gradient_accumulation_steps}",
        )
        _require(self.global_batch_size >= 0, "global_batch_size", f"must be >= 0, got {self.global_batch_size}")
        _require(
            self.checkpoint_every_steps >= 0,
            "checkpoint_every_steps",
            f"must be >= 0, got {self.checkpoint_every_steps}",
        )
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        _require(self.log_every_steps >= 1, "log_every_steps", f"must be >= 1, got {self.log_every_steps}")
        _require(self.gradient_clipping >= 0, "gradient_clipping", f"must be >= 0, got {self.gradient_clipping}")
        _require(
            not self.is_optimizer_offloaded or self.zero_stage >= 1, "is_optimizer_offloaded", "needs zero_stage >= 1"
        )


@dataclass
class Config:
    """The whole run configuration."""

    seed: int = 0
    run_name: str = "dist_syndr"
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    reshape: ReshapeConfig = field(default_factory=ReshapeConfig)
    synthetic_pool: SyntheticPoolConfig = field(default_factory=SyntheticPoolConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------
# loading, overriding, dumping


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML preset (or the defaults), apply ``a.b=c`` overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path}: top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded
    for override in overrides:
        _apply_override(tree, override)
    return from_dict(Config, tree)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys and bad types."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{prefix}{error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """The config tree as plain dicts and lists."""
    return dataclasses.asdict(config)


def dump(config: Any, path: str | Path | None = None) -> str:
    """YAML text of the resolved config; also written atomically to ``path`` if given."""
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    if path is not None:
        files.write_text(path, text)
    return text


def flatten(config: Any) -> dict[str, Any]:
    """``{"reshape.drcdown.cap": 20, ...}``: the tree as dotted keys (for tracking params)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(to_dict(config), "")
    return flat


def _apply_override(tree: dict[str, Any], override: str) -> None:
    key, separator, raw = override.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ValueError(f"override {override!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ValueError(f"override {key}: cannot parse value {raw!r}: {error}") from None
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if value is None:
            return None
        return _coerce(options[0], value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return _coerce_scalar(hint, value, key)


def _coerce_scalar(hint: type, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ValueError(f"{key}: expected {hint.__name__}, got {value!r}")
