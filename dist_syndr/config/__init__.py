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
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dist_syndr import files
from dist_syndr.config.typed_tree import apply_override, from_dict

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
FAISS_GPU_MAX_K = 2048  # FAISS GPU's k-selection limit (GPU_MAX_SELECTION_K)
DEFAULT_MAX_PIXELS = 120_000_000  # declared pixels above which an image is refused before decoding (~360 MB as RGB)


def label_column(distortion_type: int, level: int) -> int:
    """The column of a ``(type, level)`` label in a ``(references, 25 * 5)`` label table (docs/METHOD.md section 3)."""
    return (distortion_type - 1) * NUM_LEVELS + (level - 1)


Device = Literal["auto", "cpu", "cuda"]
DistBackend = Literal["auto", "nccl", "gloo"]
FaissChoice = Literal["auto", "cpu", "gpu"]
DaliMode = Literal["auto", "gpu", "cpu", "off"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
OnError = Literal["error", "skip"]
ImageFormat = Literal["png", "lz4"]
"""How the sharding step stores images: png (plain JPEG/PNG files kept as they are) or lz4 (every image as upright
RGB pixels in LZ4 row bands, which DALI inflates on the GPU; ``dist_syndr.sharding.member_format``)."""
PoolKind = Literal[
    "kadid10k", "kadid_add81", "kadis700k", "livec", "koniq10k", "bid", "pipal", "tid2013", "live", "csiq", "csv",
    "folder",
]  # fmt: skip
"""The dataset layouts ``dist_syndr.pools.readers.READERS`` reads (docs/METHOD.md section 7)."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{key}: {message}")


def check_plain_name(name: str, key: str) -> None:
    """ValueError naming ``key`` unless ``name`` is a plain folder name (no separator, not hidden, not ``..``):
    a run or shard set named so stays inside the folder its config gives."""
    is_plain = bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") and "\0" not in name
    _require(is_plain, key, f"must be a plain folder name (no '/', not starting with '.'), got {name!r}")


@functools.cache
def _choice_fields(cls: type) -> dict[str, tuple]:
    """The ``Literal`` fields of a section and their allowed values."""
    hints = typing.get_type_hints(cls)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is Literal}


class _Section:
    """A config section: every ``Literal`` field is checked against its type, then :meth:`check` runs."""

    def __post_init__(self) -> None:
        for name, choices in _choice_fields(type(self)).items():
            value = getattr(self, name)
            _require(value in choices, name, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Constraints the types cannot say (ranges, combinations); ValueError naming the key."""

    def _at_least(self, minimum: float, *keys: str) -> None:
        for key in keys:
            _require(getattr(self, key) >= minimum, key, f"must be >= {minimum}, got {getattr(self, key)}")


@dataclass
class RuntimeConfig(_Section):
    """Backend choices; ``auto`` detects, anything else forces (tests force each fallback)."""

    device: Device = "auto"
    dist_backend: DistBackend = "auto"
    faiss: FaissChoice = "auto"
    dali: DaliMode = "auto"
    log_level: LogLevel = "INFO"
    collective_timeout_s: float = 600.0  # a collective waiting longer on a peer fails (gloo and NCCL)

    def check(self) -> None:
        _require(
            self.collective_timeout_s > 0, "collective_timeout_s", f"must be > 0, got {self.collective_timeout_s}"
        )


@dataclass
class NeighborsConfig(_Section):
    """How the cosine neighbour graph is searched (``dist_syndr.reshape.neighbors``)."""

    backend: Literal["auto", "cpu", "torch-cuda", "faiss-gpu"] = "auto"  # auto: torch-cuda where torch sees a GPU
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # label-banded search; auto: bf16 where it is fast
    cpu_engine: Literal["auto", "torch", "faiss"] = "auto"  # searches without a label band: torch GEMM or FAISS
    index: Literal["exact", "ivf"] = "exact"  # ivf: approximate, reports its measured edge recall
    query_block: int = 2048
    database_block: int = 2048
    margin: float = 0.0  # band re-decided in float64; 0 = the bound proven for D and the precision (never narrower)
    max_gpu_k: int = 2048
    ivf_nlist: int = 0  # 0 = 4 sqrt(N)
    ivf_nprobe: int = 32
    recall_sample: int = 1000
    split_across_ranks: bool = True
    progress_min_rows: int = 50_000

    def check(self) -> None:
        self._at_least(1, "query_block", "database_block", "max_gpu_k", "ivf_nprobe", "recall_sample")
        limit = FAISS_GPU_MAX_K
        _require(self.max_gpu_k <= limit, "max_gpu_k", f"FAISS GPU searches at most k={limit}, got {self.max_gpu_k}")
        self._at_least(0, "ivf_nlist")
        _require(0.0 <= self.margin < 0.1, "margin", f"must lie in [0, 0.1), got {self.margin}")


@dataclass
class DDCUpConfig(_Section):
    """Diverse content upsampling (docs/METHOD.md section 3)."""

    enabled: bool = True  # training: train on the shard set's upsampled samples (false: a baseline without them)
    target: str = "bid"  # preset naming the distortion types kept (docs/METHOD.md section 6)
    types: list[int] = field(default_factory=list)  # explicit types; overrides target
    levels: list[int] = field(default_factory=lambda: [1, 3, 5])
    top_k: int = 5
    window: float = 0.05
    weighting: Literal["reference", "similarity"] = "reference"  # softmax(distances) as published | softmax(-d / T)
    temperature: float = 0.05

    def check(self) -> None:
        _require(
            self.target in TARGET_TYPES, "target", f"expected one of {', '.join(TARGET_TYPES)}, got {self.target!r}"
        )
        for key, values, high in (("types", self.types, NUM_DISTORTION_TYPES), ("levels", self.levels, NUM_LEVELS)):
            bad = [v for v in values if not 1 <= v <= high]
            _require(not bad, key, f"values must lie in 1..{high}, got {bad}")
            _require(len(set(values)) == len(values), key, f"values must be distinct, got {values}")
        _require(bool(self.levels), "levels", "must not be empty")
        self._at_least(1, "top_k")
        self._at_least(0, "window")
        _require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")

    @property
    def distortion_types(self) -> tuple[int, ...]:
        """The distortion types kept for the target domain."""
        return tuple(sorted(self.types)) if self.types else TARGET_TYPES[self.target]


@dataclass
class DRCDownConfig(_Section):
    """Redundant cluster downsampling (docs/METHOD.md section 4)."""

    enabled: bool = True
    sim_threshold: float = 0.9
    label_threshold: float = 1.0
    cap: int = 20
    feature_precision: Literal["fp32", "train"] = "fp32"  # train: the run's mixed precision (faster on GPUs)

    def check(self) -> None:
        _require(-1.0 <= self.sim_threshold <= 1.0, "sim_threshold", f"must lie in [-1, 1], got {self.sim_threshold}")
        _require(self.label_threshold > 0, "label_threshold", f"must be > 0, got {self.label_threshold}")
        self._at_least(1, "cap")


@dataclass
class ReshapeConfig:
    """Both reshaping operations and the neighbour search they share."""

    ddcup: DDCUpConfig = field(default_factory=DDCUpConfig)
    drcdown: DRCDownConfig = field(default_factory=DRCDownConfig)
    neighbors: NeighborsConfig = field(default_factory=NeighborsConfig)


@dataclass
class SyntheticPoolConfig(_Section):
    """A generated feature pool (demo and benchmarks): clustered features with labels."""

    num_samples: int = 20_000
    dim: int = 256
    num_clusters: int = 400
    spread: float = 0.25
    num_train_refs: int = 60
    num_candidate_refs: int = 300

    def check(self) -> None:
        self._at_least(1, "num_samples", "dim", "num_clusters", "num_candidate_refs")
        self._at_least(2, "num_train_refs")
        _require(self.spread > 0, "spread", f"must be > 0, got {self.spread}")


@dataclass
class FeaturesConfig(_Section):
    """Reference-image embeddings for DDCUp (``dist_syndr.features``)."""

    backbone: str = "resnet50"  # any timm model name, with or without a pretrained tag (resnet50.a1_in1k)
    weights: str = ""  # a local file, "timm" (timm's weights for backbone) or "hf-hub:<org>/<repo>"
    weights_sha256: str = ""  # pins the weights file; filled from the resolved file where empty
    weights_source: str = ""  # filled: where the weights came from (file, or hub repo@revision/file)
    is_random_init: bool = False  # random weights, only when asked for explicitly
    batch_size: int = 32
    crop: int = 224  # centre crop side; smaller images are first resized up to it
    train_features: str = ""  # precomputed (N, D) .npy for the training references (skips the backbone)
    train_names: str = ""  # one reference file name per line, rows of train_features
    candidate_features: str = ""
    candidate_names: str = ""

    def check(self) -> None:
        self._at_least(1, "batch_size")
        self._at_least(8, "crop")
        for prefix in ("train", "candidate"):
            features, names = getattr(self, f"{prefix}_features"), getattr(self, f"{prefix}_names")
            _require(
                bool(features) == bool(names), f"{prefix}_names", f"{prefix}_features and {prefix}_names go together"
            )


@dataclass
class PoolConfig(_Section):
    """The training pool read by ``dist_syndr.pools`` (docs/METHOD.md section 7 layouts)."""

    kind: PoolKind = "folder"
    root: str = ""
    types: list[int] = field(default_factory=list)  # KADID types kept; empty: the DDCUp target's types
    levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    training_refs_only: bool = True  # KADID-10k: drop the 7 references docs/METHOD.md section 6 excludes
    distort: bool = False  # reference pools: make every (type, level) with our distortion engine
    labels: Literal["dataset", "weak", "none"] = "dataset"  # the pool's scores | full-reference ensemble | none
    on_missing: OnError = "error"  # labelled images absent on disk

    def check(self) -> None:
        bad = [t for t in self.types if not 1 <= t <= NUM_DISTORTION_TYPES]
        bad += [v for v in self.levels if not 1 <= v <= NUM_LEVELS]
        _require(not bad, "types", f"types must lie in 1..25 and levels in 1..5, got {bad}")


@dataclass
class CandidatesConfig(_Section):
    """DDCUp's candidate contents; ``kind: ""`` turns upsampling off."""

    kind: Literal["", "kadid_add81", "folder"] = ""  # distorted images on disk | pristine ones our engine distorts
    root: str = ""


@dataclass
class ShardConfig(_Section):
    """The sharding step (``launchers/shard.py``)."""

    name: str = "default"
    output_root: str = "shards"
    samples_per_shard: int = 1000
    png_compress_level: int = 1
    image_format: ImageFormat = "png"  # lz4: raw pixels a GPU inflates (no CPU decoding), about 1.5x PNG's bytes
    num_workers: int = 2
    on_error: OnError = "error"  # unreadable images (decompression bombs and images above max_pixels included)
    max_pixels: int = DEFAULT_MAX_PIXELS  # pool images and references declaring more pixels are refused unread
    pool: PoolConfig = field(default_factory=PoolConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)

    def check(self) -> None:
        check_plain_name(self.name, "name")
        self._at_least(1, "samples_per_shard", "num_workers", "max_pixels")
        level = self.png_compress_level
        _require(0 <= level <= 9, "png_compress_level", f"must lie in 0..9, got {level}")


@dataclass
class ModelConfig(_Section):
    """The regression model (``dist_syndr.features.model``): a timm backbone and a linear head."""

    backbone: str = "resnet50"  # any timm model name, with or without a pretrained tag (resnet50.a1_in1k)
    weights: str = ""  # a local file, "timm" (timm's weights for backbone) or "hf-hub:<org>/<repo>"
    weights_sha256: str = ""  # pins the weights file; filled from the resolved file where empty
    weights_source: str = ""  # filled: where the weights came from (file, or hub repo@revision/file)
    is_random_init: bool = False  # random backbone weights, only when asked for explicitly
    image_size: int = 224  # models with a fixed input size (ViTs) are built for this side
    mean: list[float] = field(default_factory=list)  # the backbone's input statistics; [] = its pretrained
    std: list[float] = field(default_factory=list)  # config's where pretrained, ImageNet's for random weights
    is_grad_checkpointing: bool = False  # ViTs: recompute blocks in backward to save memory

    def check(self) -> None:
        self._at_least(16, "image_size")
        for key in ("mean", "std"):
            values = getattr(self, key)
            _require(len(values) in (0, 3), key, f"must hold 3 values (RGB) or none, got {values}")
        _require(all(s > 0 for s in self.std), "std", f"must be > 0, got {self.std}")


@dataclass
class DataConfig(_Section):
    """The input pipeline (``dist_syndr.loader``)."""

    loader: Literal["auto", "dali", "torch"] = "auto"  # auto: DALI when installed
    batch_size: int = 32  # per rank
    num_workers: int = 2  # reader processes (DALI external_source workers / DataLoader workers)
    crop: int = 224  # random crop side for training; no resize, flip or colour change (docs/METHOD.md section 5)
    eval_crops: int = 5  # crops per image at evaluation, predictions averaged per image
    eval_crop_mode: Literal["random", "centre"] = "random"
    shuffle_block: int = 0  # 0: global shuffle; n > 0: shuffle blocks of n index-consecutive samples, then within
    drop_last: bool = True  # training: equal, full batches on every rank
    on_error: OnError = "error"  # corrupt members, checksum mismatches, images above max_pixels
    max_pixels: int = DEFAULT_MAX_PIXELS  # members whose header declares more pixels are refused before decoding
    verify_checksums: Literal["members", "shards", "off"] = "members"  # each member's checksum on every read;
    # shards: also each whole shard's sha256 once before the first read (a record skips unchanged sets)
    shard_storage: Literal["shared", "node-local"] = "shared"  # node-local: each node reads its own copy of
    # the shard sets at the same path; before training every node's copy is checked against the run's index
    # digest and its shards hashed on that node (unless verify_checksums=off)
    prefetch: int = 2

    # Configs written before the checksum modes said true / false.
    LEGACY_VALUES: typing.ClassVar[dict] = {"verify_checksums": {True: "shards", False: "off"}}

    def check(self) -> None:
        self._at_least(1, "batch_size", "num_workers", "crop", "eval_crops", "prefetch", "max_pixels")
        self._at_least(0, "shuffle_block")


@dataclass
class TrainConfig(_Section):
    """Optimisation and DeepSpeed settings (docs/METHOD.md section 5 defaults)."""

    epochs: int = 24
    learning_rate: float = 2e-5  # backbone; the head trains at head_lr_multiplier times it
    head_lr_multiplier: float = 10.0
    weight_decay: float = 5e-4
    zero_stage: Literal[0, 1, 2, 3] = 0  # DeepSpeed ZeRO stage
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gradient_accumulation_steps: int = 1
    global_batch_size: int = 0  # 0 = data.batch_size x world size x accumulation; else checked against them
    gradient_clipping: float = 0.0  # 0 = off
    is_optimizer_offloaded: bool = False  # ZeRO optimizer state on the CPU
    is_deterministic: bool = False  # GPUs: deterministic cuDNN/torch algorithms, TF32 off (bit-exact resume, slower)
    shard_set: str = ""  # training shard set folder (written by launchers/shard.py)
    targets: list[str] = field(default_factory=list)  # evaluation sets as name=folder (shard sets)
    output_dir: str = "runs"  # checkpoints and run files under <output_dir>/<run_name>
    resume: Literal["auto", "never"] = "auto"  # auto: continue from the last complete checkpoint
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch every this many steps (0 = at epoch ends only)
    keep_checkpoints: int = 2  # checkpoint tags kept on disk (older ones are removed)
    log_every_steps: int = 10  # step metrics (loss, lr, images/s, data-wait share) every this many steps
    experiment: str = "dist_syndr"  # MLflow experiment
    is_smoke_data: bool = False  # build tiny photo shard sets at shard_set / targets when missing

    def check(self) -> None:
        bad = [t for t in self.targets if "=" not in t]
        _require(not bad, "targets", f"entries must read name=folder, got {bad}")
        self._at_least(1, "epochs", "gradient_accumulation_steps", "keep_checkpoints", "log_every_steps")
        self._at_least(0, "weight_decay", "global_batch_size", "checkpoint_every_steps", "gradient_clipping")
        for key in ("learning_rate", "head_lr_multiplier"):
            _require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        is_offload_ok = not self.is_optimizer_offloaded or self.zero_stage >= 1
        _require(is_offload_ok, "is_optimizer_offloaded", "needs zero_stage >= 1")


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

    def __post_init__(self) -> None:
        check_plain_name(self.run_name, "run_name")


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
        apply_override(tree, override)
    return from_dict(Config, tree)


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
