"""What `restune train classify` trains with, defined once: every field of `TrainSettings` that a user sets is
also its flag (restuning.options), and the trainer reads the same object.

Kept apart from `training.trainer` (torch) so the command line builds without torch. The recipe's defaults and
why they are what they are: docs/training.md ("Recipe"); `restune bench accuracy` measures them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from restuning.checks import is_positive_int
from restuning.errors import choices
from restuning.options import option

METHODS: tuple[str, ...] = ("bypass", "linear", "full", "restuning")
FEATURE_METHODS: tuple[str, ...] = ("bypass", "linear")  # frozen backbone, cacheable features

AugmentMode = Literal["auto", "on", "off"]
AUGMENT_MODES: tuple[str, ...] = get_args(AugmentMode)
# `auto` trains images whose median shorter side is under this many pixels without any augmentation
# (training.augment.choose_augmentation says why).
LOW_RES_SIDE = 128

HeadInit = Literal["probe", "random"]
HEAD_INITS: tuple[str, ...] = get_args(HeadInit)

CacheDtype = Literal["float32", "float16"]
CACHE_DTYPE_NAMES: tuple[str, ...] = get_args(CacheDtype)

# Learning rates from Table 10's range {0.05, 0.01, 0.005, 0.001}. Feature heads start from a fitted linear
# probe (training.probe), so their epochs refine a good solution: the bypass gets the smallest rate, which
# `restune bench accuracy` measured best and robust to the weight decay on the digits (docs/benchmarks.md).
# Full fine-tuning updates a whole ViT, which needs a far smaller step than a tuner.
DEFAULT_LR = {"bypass": 0.001, "linear": 0.01, "restuning": 0.005, "full": 1e-4}
# Settings the command sets itself (from --device, --workers, --no-progress) or that only code uses: no flag.
NOT_FLAGS = ("device", "workers", "eval_batch_size", "progress", "log_epochs")


@dataclass
class TrainSettings:
    """One training run. Every field not in NOT_FLAGS is also a `train classify` flag (--field-name)."""

    # a plain string, not a Literal: a wrong one is reported with every other problem of the run at once
    method: str = option("bypass", help="what trains: bypass (the tuner, servable), linear (probing, servable), "
                                        "full (fine-tuning) or restuning (baselines, not servable)")
    epochs: int = option(10, help="passes over the training images")
    batch_size: int = option(32, help="images per step (per process under torchrun)")
    lr: float | None = option(None, help="peak learning rate (default per method: "
                                         + ", ".join(f"{m} {v:g}" for m, v in DEFAULT_LR.items()) + ")")
    weight_decay: float = option(0.05, help="AdamW weight decay")
    warmup_epochs: float | None = option(None, help="linear warm-up before the cosine decay (default: a tenth of "
                                                    "the epochs)")
    seed: int = option(0, help="seed of the split, the order, the augmentation and the initialisation")
    augment: AugmentMode = option("auto", help=f"RandomResizedCrop + horizontal flip, each only where it keeps "
                                               f"the labels true: auto = unless the training images are under "
                                               f"{LOW_RES_SIDE} px (median shorter side), on = whatever the size, "
                                               f"off = never")
    crop_scale: float = option(0.35, help="smallest RandomResizedCrop area, as a share of the image")
    head_init: HeadInit = option("probe", help="bypass/linear: probe = start the Linear head from a logistic "
                                               "regression fitted on the untrained features (its L2 strength "
                                               "chosen on the validation split), random = a fresh head")
    feature_cache: bool = option(False, help="bypass/linear: run the backbone once per view, train every epoch "
                                             "from the cached features")
    cache_views: int = option(4, help="augmented views cached; epoch e trains on view e mod K")
    cache_dir: str | None = option(None, help="keep the cache on disk here, reused by later runs (default: in "
                                              "memory)")
    cache_max_gb: float = option(4.0, help="size limit of the cache, checked before extraction")
    cache_dtype: CacheDtype = option("float32", help="float32 (exact) or float16 (half the size)")
    checkpoint_dir: str | None = option(None, help="where epoch checkpoints go (default: checkpoints/NAME next to "
                                                   "--out, else in the current directory)")
    resume: str | None = option(None, help="continue from this checkpoint directory")
    device: str = "cpu"
    workers: int = 0
    eval_batch_size: int | None = None
    progress: bool = True
    log_epochs: bool = True  # one log line per epoch (the demo turns it off: 19 tasks, 4 sets)

    def problems(self) -> list[str]:
        p = []
        if self.method not in METHODS:
            p.append(f"unknown method {self.method!r}; choose one of {choices(METHODS)}")
        for key in ("epochs", "batch_size", "cache_views"):
            value = getattr(self, key)
            if not is_positive_int(value):
                p.append(f"{key.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr < 10):
            p.append(f"lr must be a number in (0, 10), got {self.lr!r}")
        if not (0 <= self.weight_decay < 1):
            p.append(f"weight-decay must be in [0, 1), got {self.weight_decay!r}")
        if self.warmup_epochs is not None and not (0 <= self.warmup_epochs <= self.epochs):
            p.append(f"warmup-epochs must be between 0 and the epochs ({self.epochs}), got {self.warmup_epochs!r}")
        if self.augment not in AUGMENT_MODES:
            p.append(f"unknown augment mode {self.augment!r}; choose one of {choices(AUGMENT_MODES)}")
        if self.head_init not in HEAD_INITS:
            p.append(f"unknown head init {self.head_init!r}; choose one of {choices(HEAD_INITS)}")
        if not (0 < self.crop_scale <= 1):
            p.append(f"crop-scale must be in (0, 1], got {self.crop_scale!r}")
        if not self.cache_max_gb > 0:
            p.append(f"cache-max-gb must be positive, got {self.cache_max_gb!r}")
        if self.cache_dtype not in CACHE_DTYPE_NAMES:
            p.append(f"unknown cache dtype {self.cache_dtype!r}; choose one of {choices(CACHE_DTYPE_NAMES)}")
        if self.feature_cache and self.method not in FEATURE_METHODS:
            p.append(f"--feature-cache needs a frozen backbone: methods {', '.join(FEATURE_METHODS)}, "
                     f"not {self.method!r} (its backbone weights change every step)")
        if not isinstance(self.workers, int) or self.workers < 0:
            p.append(f"workers must be an integer >= 0, got {self.workers!r}")
        return p

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR.get(self.method, 0.01))

    @property
    def warmup(self) -> float:
        return 0.1 * self.epochs if self.warmup_epochs is None else float(self.warmup_epochs)
