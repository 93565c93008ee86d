"""The config's sections as dataclasses (the alignment terms' options live with each term)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Union


class ConfigError(ValueError):
    """A config key holds a value that cannot be used; the message names the key."""


BACKBONES = ("lenet", "lenet_caffe", "lenet_tllib", "alexnet", "mobilenet", "mobilenet_v2",
             "resnet50", "inception_v3", "efficientnet_b0")
FREEZE_MODES = ("none", "backbone", "first_n", "until", "prefix")


@dataclass
class DomainConfig:
    """One domain: a class-folder tree, a TFDS dataset, or built-in synthetic data.

    Exactly one of ``root``, ``tfds`` or ``synthetic`` is set. ``root`` is relative to the
    data root (``--data-root`` or ``$DDC_DATA_ROOT``) unless absolute.
    ``class_map`` maps this domain's folder (or TFDS) class names to source class names,
    many-to-one allowed; a name not in the map keeps its own name.
    """
    root: Optional[str] = None
    tfds: Optional[str] = None
    split: str = "train"
    synthetic: Optional[str] = None
    class_map: dict = field(default_factory=dict)
    max_per_class: Optional[int] = None


@dataclass
class DataConfig:
    source: DomainConfig = field(default_factory=DomainConfig)
    target: DomainConfig = field(default_factory=DomainConfig)
    image_size: int = 224
    channels: int = 3
    val_fraction: float = 0.2
    cache: str = "memory"          # "memory" or "disk" (decoded, resized uint8 arrays)
    cache_dir: Optional[str] = None
    # training views (ddc.data.views): false; true or "flips" (random left-right and up-down
    # flips); "d4" (one of the 8 rotations and flips of the square); in mode "features" the
    # frozen part's output is extracted once per view and each step draws one view per image
    augment: Union[bool, str] = False
    feature_cache: bool = True     # mode "features": keep the frozen part's output on disk
    balance_source: bool = False   # source batches draw each class equally often (source labels only)
    skip_bad_files: bool = False   # skip unreadable images (each named in the log) instead of failing
    decode_workers: int = 8


@dataclass
class FreezeConfig:
    """Which backbone layers keep their weights.

    ``mode``: ``none``; ``backbone`` (all of it); ``first_n`` (the first ``n`` layers of the
    backbone, the reference recipe's "first 172 layers"); ``until`` (up to and including the
    layer named ``layer``); ``prefix`` (layers whose names start with any of ``prefixes``).
    Frozen BatchNorm layers run in inference mode.
    """
    mode: str = "none"
    n: int = 0
    layer: Optional[str] = None
    prefixes: list = field(default_factory=list)


@dataclass
class ModelConfig:
    backbone: str = "lenet"
    weights: Optional[str] = None     # null, "imagenet", or a file (relative to the weights root)
    alpha: float = 1.0                # width multiplier for mobilenet / mobilenet_v2
    head_hidden: int = 0              # >0: Dense(head_hidden, ReLU) before the adaptation layer
    adapt_width: int = 256            # 0: no adaptation layer (MMD on the pooled features)
    # true: the adaptation layer is Dense -> BatchNorm -> ReLU (TLlib's bottleneck), its
    # statistics over the step's source and target batch together; false: Dense + ReLU
    adapt_bn: bool = False
    dropout: float = 0.0
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    # mode "features": each domain's features through the frozen part on BatchNorm statistics
    # recomputed on its own images (AdaBN, Li et al. 2016: source training images for the
    # source splits, the target images for the target), not the loaded (ImageNet) ones
    adabn: bool = False


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32              # per domain: each step sees batch_size source + batch_size target
    optimizer: str = "sgd"            # "sgd" (momentum) or "adam"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0      # eps of the source cross-entropy's targets (1-eps) onehot + eps/C
    lr_schedule: str = "constant"     # "constant" or "inv": lr * (1 + 10 p) ** -0.75
    backbone_lr_mult: Optional[float] = None  # default: 0.1 with pretrained weights, else 1.0
    head_only_steps: int = 0          # two-stage: train with the backbone frozen for this many steps
    eval_every: int = 200
    log_every: int = 20
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    precision: str = "float32"        # "float32", "mixed_float16", "mixed_bfloat16"
    jit_compile: bool = False
    steps_per_call: int = 1           # training steps per traced call (in-graph loop; same math)
    distribute: str = "none"          # "none", "mirrored" (GPUs of one machine), "multi_worker" (TF_CONFIG)
    eval_batch_size: int = 128
    tta: bool = False                 # also report accuracies of the softmax averaged over the 8 D4 views


@dataclass
class Config:
    name: str = "run"
    # "train": through the whole network; "features": the frozen start of the backbone runs once
    # over the data and its output is cached; the rest trains on the cache (exactly the same
    # model and loss, much faster)
    mode: str = "train"
    seed: int = 0
    deterministic: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # alignment terms by name, e.g. {"mmd": MMDOptions(weight=0.25)}; {} is source only
    align: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
