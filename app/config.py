"""Run configuration: plain dataclasses, loaded from YAML with `key.sub=value` overrides, saved with every run."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file, override or config value that does not fit (the schema, a registry, a bound)."""


MONITORS = ("val_loss", "val_accuracy", "val_auc", "loss", "accuracy", "auc")  # what fit logs (auc: multi-label)


def did_you_mean(value: str, choices: list[str] | tuple[str, ...]) -> str:
    """ "; did you mean 'cosine'?" for the closest choice, or "" when none is close."""
    text, names = str(value).lower(), [str(c) for c in choices]
    close = [n for n in names if n.startswith(text)] if len(text) >= 2 else []  # acc -> accuracy
    close = close or difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_choice(key: str, value: Any, choices: list[str] | tuple[str, ...], extra: str = "") -> None:
    """One line naming the key, the value, the choices and the closest one, when `value` is not among `choices`."""
    if value not in choices:
        raise ConfigError(f"config key {key}: {value!r} is not one of {', '.join(map(str, choices))}{extra}{did_you_mean(value, choices)}")


def _require(section: object, key: str, ok: bool, expected: str) -> None:
    """One line naming the key, its value and the allowed range, at load time (not a traceback an epoch later)."""
    if not ok:
        name = key.split(".")[-1]
        raise ConfigError(f"config key {key}: {getattr(section, name)!r} is not allowed; expected {expected}")


@dataclass
class DataConfig:
    """Where the images are and how to read them (docs/data.md)."""

    train: str | None = None  # folder of <class>/<image> sub-folders, or a CSV
    train_images: str | None = None  # image folder for a CSV (default: "train/" beside it, else its folder)
    val: str | None = None  # a given validation set (folder or CSV); else a split of train
    val_images: str | None = None
    val_fraction: float = 0.2
    folds: int | None = None  # k-fold cross-validation (`imgclf cv`): K stratified, seeded folds ...
    fold: int | None = None  # ... and this run's fold, 1..K, as its validation set (instead of val_fraction)
    test: str | None = None  # folder of unlabeled images, or a sample_submission.csv
    test_images: str | None = None  # image folder for a sample submission (default: "test/" beside it)
    id_column: str = "id"
    label_column: str | None = "label"
    label_columns: list[str] = field(default_factory=list)  # one 0/1 column per class (one-hot CSVs)
    path_column: str | None = None  # a column of image paths relative to the image folder, instead of ids
    extension: str | None = None  # image file extension for ids (detected when unset)
    multilabel: bool | None = None  # None: detected from one-hot rows
    label_separator: str = " "  # for several labels in one column (multilabel=true)
    image_size: int = 64  # square model input, pixels
    batch_size: int = 32
    cache: bool = False  # decode and resize every image once, keep them in memory
    workers: int | None = (
        None  # processes decoding + augmenting training batches; None: the faster of threads (0) and one per core (pipelines.workers.auto_workers)
    )
    check_images: bool = True  # decode every image before training to report bad files up front
    skip_bad_images: bool = False  # leave unreadable images out (and report them) instead of stopping

    def __post_init__(self) -> None:
        _require(self, "data.image_size", self.image_size >= 8, "a whole number of pixels >= 8 (e.g. 64)")
        _require(self, "data.batch_size", self.batch_size >= 1, "a whole number >= 1 (e.g. 32)")
        _require(self, "data.val_fraction", 0.0 <= self.val_fraction < 1.0, "a fraction in [0, 1) (e.g. 0.2)")
        _require(self, "data.workers", self.workers is None or self.workers >= 0, "0 (threads), a number of processes, or null (automatic)")
        _require(self, "data.folds", self.folds is None or self.folds >= 2, "a whole number of folds >= 2, or null")
        _require(
            self,
            "data.fold",
            self.fold is None or (self.folds is not None and 1 <= self.fold <= self.folds),
            f"a fold in 1..data.folds ({self.folds}), with data.folds set",
        )
        if self.folds is not None and self.val:
            raise ConfigError("config keys data.val and data.folds both choose the validation images. Fix: set one of them to null")


@dataclass
class AugmentConfig:
    """Albumentations pipelines: a preset (none, light, medium, heavy) or a YAML file saved by A.save."""

    train: str = "medium"  # as app/configs/example.yaml, measured against keras-io's tutorial model (benchmarks/README.md)
    eval: str = "none"
    tta: str | None = None  # test-time augmentation when predicting: none | flip | flip+crops | path/to/albumentations.yaml
    tta_passes: int | None = None  # predictions averaged, the plain image included (null: flip 2, flip+crops 4, a file 4)

    def __post_init__(self) -> None:
        _require(self, "augment.tta_passes", self.tta_passes is None or self.tta_passes >= 1, "a whole number >= 1 (1: no TTA), or null")


@dataclass(frozen=True)
class ConvBlock:
    """One block of the baseline CNN: `repeats` x (conv(filters, kernel_size, strides on the first conv) -> BN -> ReLU),
    then `pool` (2x2). Written in YAML as a mapping (`{filters: 32, kernel_size: 3}`) or a list `[filters, kernel_size, strides]`."""

    filters: int
    kernel_size: int = 3
    strides: int = 1
    repeats: int = 2
    pool: str = "max"  # max | avg | none

    def __post_init__(self) -> None:
        for name in ("filters", "kernel_size", "strides", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"conv block {self.describe()}: {name} must be a whole number >= 1, got {value!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"conv block {self.describe()}: pool must be one of {', '.join(POOLS)}, got {self.pool!r}")

    def describe(self) -> str:
        return f"{{filters: {self.filters!r}, kernel_size: {self.kernel_size!r}, strides: {self.strides!r}, repeats: {self.repeats!r}, pool: {self.pool!r}}}"

    @classmethod
    def parse(cls, spec: Any) -> ConvBlock:
        """From a ConvBlock, a mapping (`{filters: 32, kernel_size: 3}`) or a list `[filters, kernel_size, strides]`."""
        if isinstance(spec, ConvBlock):
            return spec
        if isinstance(spec, dict):
            unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ConfigError(f"conv block {spec}: unknown key(s) {sorted(unknown)}; use filters, kernel_size, strides, repeats, pool")
            if "filters" not in spec:
                raise ConfigError(f"conv block {spec}: filters is required")
            return cls(**spec)
        if isinstance(spec, (list, tuple)) and 1 <= len(spec) <= 3:
            return cls(*spec)
        raise ConfigError(f"conv block {spec!r}: expected {{filters, kernel_size, strides}} or [filters, kernel_size, strides]")


POOLS = ("max", "avg", "none")
DEFAULT_BLOCKS = (ConvBlock(32), ConvBlock(64), ConvBlock(128))  # the baseline CNN's blocks when model.blocks is not given


@dataclass
class ModelConfig:
    """Which model to build: `baseline_cnn` or a Keras Applications backbone (`imgclf models` lists them).

    `blocks` configures the baseline CNN (see app/models/baseline.py). `weights` applies to backbones: `imagenet`
    (downloaded by Keras), a local .h5 / .weights.h5 / .keras file, or null for random initialisation; the baseline
    CNN has no ImageNet weights and takes a local file or null (`imagenet` leaves it randomly initialised)."""

    name: str = "baseline_cnn"
    weights: str | None = "imagenet"
    blocks: list[ConvBlock] = field(default_factory=lambda: list(DEFAULT_BLOCKS))
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ConfigError(
                "model.blocks is empty: the baseline CNN needs at least one block. "
                "Fix: give blocks, e.g. [[32], [64], [128]], or leave the key out for the default"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout}: expected a rate in [0, 1)")


@dataclass
class ScheduleConfig:
    """A learning-rate schedule and its knobs (timm-style flat options; each schedule reads the ones it needs).

    Written as a mapping (`schedule: {name: step, decay_epochs: 3}`) or just its name (`schedule: cosine`).
    See app/training/schedules.py for the formulas; `imgclf plot-lr` draws the result before any training."""

    name: str = "cosine"  # constant | step | exponential | cosine | cosine_restarts | one_cycle | polynomial | ramp_sustain_step | plateau
    warmup_epochs: float = 0.0  # linear warmup from warmup_lr (the ramp of ramp_sustain_step)
    warmup_lr: float = 0.0
    min_lr: float = 0.0  # floor: end of cosine / polynomial / ramp_sustain_step / plateau
    decay_epochs: float | None = None  # step: epochs between drops; exponential: epochs per decay_rate; cosine_restarts: first cycle
    decay_rate: float | None = None  # step: 0.1, exponential: 0.5, ramp_sustain_step: 0.8 per epoch, plateau: 0.1
    cycle_mul: float = 2.0  # cosine_restarts: each cycle this many times longer
    cycle_decay: float = 1.0  # cosine_restarts: each restart's peak this fraction of the last
    power: float = 1.0  # polynomial
    pct_start: float = 0.3  # one_cycle: fraction of training spent rising
    div_factor: float = 25.0  # one_cycle: start at learning_rate / div_factor
    final_div_factor: float = 1e4  # one_cycle: end at start / final_div_factor
    sustain_epochs: float = 0.0  # ramp_sustain_step: epochs held at learning_rate after the ramp
    patience: int = 2  # plateau: epochs without improvement of train.monitor before each reduction


@dataclass
class TrainConfig:
    """Stage 1 (and the only stage without `finetune`): optimizer, schedule and training options.

    With a pretrained backbone and `freeze_backbone`, stage 1 trains the head only; `finetune` then unfreezes."""

    epochs: int = 30  # with early stopping; 20 only tied keras-io's tutorial model on flowers (benchmarks/README.md)
    optimizer: str = "adam"  # adam | adamw | sgd (momentum, Nesterov)
    learning_rate: float = 1e-3
    weight_decay: float | None = None  # decoupled; None: 0.004 for adamw, none for adam and sgd
    momentum: float = 0.9  # sgd
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_smoothing: float = 0.0
    mixup: float = 0.0  # MixUp's alpha (keras.layers.MixUp): pairs of training images blended, labels alike; 0: off (e.g. 0.2)
    cutmix: float = 0.0  # CutMix's factor (keras.layers.CutMix): a box of another image pasted, labels by area; 0: off (e.g. 1.0)
    ema: float | None = None  # weight EMA momentum per step (use_ema; validation and checkpoints use the average); null: off
    progressive_from: int | None = None  # progressive resizing: stage 1 starts at this image size, ends at data.image_size
    progressive_phases: int = 3  # ... in this many equal shares of its epochs, sizes evenly spaced
    max_minutes: float | None = None  # the run's wall-clock limit: it stops at the end of the epoch that passes it
    class_weight: str | dict[str, float] | None = None  # null | balanced (from class frequencies) | {class: weight}
    freeze_backbone: bool = True  # pretrained backbones: stage 1 trains only the head
    cache_features: bool = True  # ... on the frozen backbone's features, computed once (app/training/features.py), not on images
    feature_views: int = 4  # augmented views of each training image whose features are computed, beside the plain image
    mixed_precision: bool = False  # float16 compute on a GPU; on a CPU it is ignored with a note
    distribute: str = "auto"  # auto | none | mirrored | multiworker (auto: TF_CONFIG -> multiworker, several GPUs -> mirrored)
    resume: bool = True  # the same config started again continues an interrupted run (keras BackupAndRestore)
    monitor: str = "val_loss"
    early_stopping_patience: int = 5  # epochs without improvement; 0 disables early stopping
    early_stopping_start: int | None = None  # epochs of a stage before it may stop early (null: half of the stage)
    deterministic: bool = True  # seeded and op-deterministic: same config + seed -> same metrics on CPU
    verbose: int = 2  # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch

    def __post_init__(self) -> None:
        _require(self, "train.epochs", self.epochs >= 1, "a whole number >= 1")
        _require(self, "train.learning_rate", self.learning_rate > 0, "a number > 0 (e.g. 0.001)")
        _require(self, "train.weight_decay", self.weight_decay is None or self.weight_decay >= 0, "a number >= 0, or null")
        _require(self, "train.momentum", 0.0 <= self.momentum < 1.0, "a number in [0, 1)")
        _require(self, "train.label_smoothing", 0.0 <= self.label_smoothing < 1.0, "a number in [0, 1) (e.g. 0.1)")
        _require(self, "train.early_stopping_patience", self.early_stopping_patience >= 0, "a whole number of epochs >= 0 (0: no early stopping)")
        _require(
            self, "train.early_stopping_start", self.early_stopping_start is None or self.early_stopping_start >= 0, "a whole number of epochs >= 0, or null"
        )
        _require(self, "train.mixup", self.mixup >= 0, "MixUp's alpha, a number >= 0 (0: off; e.g. 0.2)")
        _require(self, "train.cutmix", self.cutmix >= 0, "CutMix's factor, a number >= 0 (0: off; e.g. 1.0)")
        _require(self, "train.ema", self.ema is None or 0 < self.ema < 1, "a momentum in (0, 1) (e.g. 0.99), or null for no EMA")
        _require(self, "train.progressive_from", self.progressive_from is None or self.progressive_from >= 8, "an image size >= 8, or null")
        _require(self, "train.progressive_phases", self.progressive_phases >= 2, "a whole number of phases >= 2")
        _require(self, "train.max_minutes", self.max_minutes is None or self.max_minutes > 0, "a number of minutes > 0, or null")
        _require(self, "train.feature_views", self.feature_views >= 0, "a whole number >= 0 (0: the plain image only)")
        _require(self, "train.verbose", self.verbose in (0, 1, 2), "0, 1 or 2")
        check_choice("train.monitor", self.monitor, MONITORS)


@dataclass
class FinetuneConfig:
    """Stage 2 for a pretrained backbone: unfreeze its top (BatchNorm stays frozen) and train on at a lower rate.

    `epochs: 0` skips the stage. Unfreeze the top `unfreeze_blocks` blocks or `unfreeze_layers` layers, or the
    whole backbone when both are unset (`imgclf models --blocks NAME` lists a backbone's blocks)."""

    epochs: int = 0
    learning_rate: float = 1e-5
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    unfreeze_blocks: int | None = None
    unfreeze_layers: int | None = None

    def __post_init__(self) -> None:
        _require(self, "finetune.epochs", self.epochs >= 0, "a whole number >= 0 (0: no fine-tuning stage)")
        _require(self, "finetune.learning_rate", self.learning_rate > 0, "a number > 0 (e.g. 1e-5)")
        _require(self, "finetune.unfreeze_blocks", self.unfreeze_blocks is None or self.unfreeze_blocks >= 1, "a whole number >= 1, or null")
        _require(self, "finetune.unfreeze_layers", self.unfreeze_layers is None or self.unfreeze_layers >= 1, "a whole number >= 1, or null")


@dataclass
class SpaceConfig:
    """What `imgclf tune` searches (tuning/space.py). Every entry is one of:
    a single value (fixed, as `hp.Fixed`), a list of choices (`[16, 32, 64]`), a range (`{min: 1e-4, max: 1e-2,
    sampling: log}`, with an optional `step`), or null (not searched: the value of the rest of the config).
    Block entries apply to each block separately (block 2 gets its own filters, kernel size, ...)."""

    # baseline CNN (model.name: baseline_cnn)
    blocks: Any = field(default_factory=lambda: {"min": 2, "max": 4})
    filters: Any = field(default_factory=lambda: [16, 32, 64, 128])  # with filters_growth: the first block's only
    filters_growth: Any = None  # e.g. [1.5, 2.0]: each block has this many times the filters of the one before
    kernel_size: Any = field(default_factory=lambda: [3, 5])
    strides: Any = field(default_factory=lambda: [1, 2])
    repeats: Any = field(default_factory=lambda: [1, 2])
    pool: Any = "max"
    # pretrained backbones (model.name: a backbone)
    backbone: Any = None  # e.g. [efficientnetb0, resnet50v2]; null: model.name
    unfreeze_blocks: Any = None  # e.g. [1, 2, 3]
    finetune_learning_rate: Any = None  # e.g. {min: 1e-6, max: 1e-4, sampling: log}
    image_size: Any = None  # e.g. [128, 160, 224]
    # both
    dropout: Any = None  # e.g. {min: 0.1, max: 0.5, step: 0.1}; regularisation is not searched by default (app/configs/search.yaml says why)
    optimizer: Any = field(default_factory=lambda: ["adam", "adamw"])
    learning_rate: Any = field(default_factory=lambda: {"min": 1e-4, "max": 1e-2, "sampling": "log"})
    schedule: Any = field(default_factory=lambda: ["constant", "cosine", "one_cycle", "step"])
    schedule_knobs: dict[str, dict[str, Any]] = field(default_factory=lambda: {})  # per schedule, knob -> entry; merged over tuning.space.SCHEDULE_KNOBS
    augment: Any = None  # e.g. [medium, heavy]
    label_smoothing: Any = None  # e.g. [0.0, 0.1]
    batch_size: Any = None
    mixup: Any = None  # e.g. [0.0, 0.2]: train.mixup (0: off)
    cutmix: Any = None  # e.g. [0.0, 1.0]: train.cutmix (0: off)
    ema: Any = None  # e.g. [0.0, 0.99]: train.ema (0: off)
    progressive_from: Any = None  # e.g. [0, 32]: train.progressive_from (0: off)


@dataclass
class TuneConfig:
    """`imgclf tune`: the tuner, what it optimises, its budget and the search space (docs/search.md)."""

    tuner: str = "random"  # random | asha | hyperband | bayesian | grid
    objective: str = "val_accuracy"  # a Keras log (val_accuracy, val_loss) or a metrics.json field (macro_f1, log_loss, mean_column_auc)
    max_trials: int = 10  # trained networks (asha: networks started; their promotions do not count); invalid ones do not count
    max_minutes: float | None = None  # the search's wall-clock limit over all resumes: a trial running then stops at its epoch's end
    reference_trial: bool = True  # the first trial is the config's own network and training (model.blocks, train.*), when tune.space holds them
    median_stop: bool = False  # random, bayesian, grid: stop a trial whose best score is below the median of finished trials at the same share of their epochs
    seed: int | None = None  # proposals; null: the top-level seed
    min_feature_size: int = 2  # smallest feature map (pixels) allowed before global pooling
    reduction_factor: int = 3  # asha, hyperband: 1/factor of the trials go on to each next rung; train.epochs is the most a trial gets
    min_epochs: int = 1  # asha: epochs of the lowest rung (then min_epochs x factor, ... up to train.epochs)
    first_rung_scale: float = 1.0  # asha: the lowest rung's image size, a share of data.image_size, growing evenly to 1 at the top
    trial_budget: str = "compute"  # compute: trials (asha: rungs) get train.epochs x (model.blocks' cost / theirs) epochs; epochs: as set
    final_epochs: int | None = None  # train.epochs of best.yaml (the final run, --then-train); null: train.epochs
    final_minutes: float | None = None  # instead: as many epochs as fit in this many minutes, at a pace timed when the search ends; its time limit
    final: dict[str, Any] | None = field(default_factory=dict)  # the final run's own settings, a partial config: {augment: {train: heavy}}
    worker_timeout: float = 120.0  # distributed search: a worker silent this many seconds is gone, and its trial runs elsewhere
    connect_timeout: float = 60.0  # distributed search: how long a worker waits for the chief to answer at start
    initial_points: int | None = None  # bayesian: random trials before the Gaussian process (null: a third of max_trials, 3 to 3 per searched value)
    space: SpaceConfig = field(default_factory=SpaceConfig)

    def __post_init__(self) -> None:
        if self.final is None:  # `final: null`, as the other tune keys say "none"
            self.final = {}


@dataclass
class OutputConfig:
    """Where runs go: `<dir>/<name>`, name defaulting to a timestamp and the model name."""

    dir: str = "runs"
    name: str | None = None
    explain: bool = False  # at the end of a run: explain/ with anatomy.md, feature maps and Grad-CAM of validation images
    tensorboard: bool = True  # tensorboard/: losses, metrics and learning rate per epoch, one augmented training batch


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    seed: int = 42


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return `value` if it fits `annotation` (ints are accepted for floats), else raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: {value!r} is not a {_type_name(annotation)}")
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if annotation is ConvBlock:
            if isinstance(value, dict):
                return from_dict(annotation, value, f"{key}.")
            return _prefixed(ConvBlock.parse, value, key)
        return from_dict(annotation, value, f"{key}.")
    if annotation is type(None):
        if value is None:
            return None
    elif origin is dict:
        if isinstance(value, dict):
            key_type, value_type = typing.get_args(annotation) or (Any, Any)
            return {_check_type(k, key_type, key): _check_type(v, value_type, f"{key}.{k}") for k, v in value.items()}
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(annotation) or (Any,)
            return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, annotation):
        return value
    raise ConfigError(f"config key {key}: {value!r} is not a {_type_name(annotation)}")


def _prefixed(make: Any, value: Any, key: str) -> Any:
    try:
        return make(value)
    except ConfigError as exc:
        raise ConfigError(f"config key {key}: {exc}") from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '(top level)'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; valid keys here: {', '.join(sorted(names))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config section {prefix.rstrip('.') or '(top level)'}: {missing[0]} is required")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(hint)}:
                value = {"name": value}  # shorthand: `schedule: cosine`
            kwargs[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, hint, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        message = str(exc)
        named = not prefix or message.startswith(("config key", prefix))
        raise ConfigError(message if named else f"config key {prefix.rstrip('.')}: {message}") from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML: 3, 0.1, true, null, [1, 2])."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value, e.g. train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc.problem})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node.get(part), str):  # `schedule: cosine` shorthand, now given a sub-key
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        last = parts[-1]
        if isinstance(node.get(last), dict) and "name" in node[last] and isinstance(value, str):
            node[last] = {**node[last], "name": value}  # `train.schedule=step` keeps the other schedule knobs
        else:
            node[last] = value
    return data


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"  # package data: example, finetune, search, finetune_search


def shipped_configs() -> dict[str, Path]:
    """The configs that ship with the package, by name (`imgclf train DATA -c finetune`)."""
    return {path.stem: path for path in sorted(SHIPPED_CONFIGS.glob("*.yaml"))}


def copy_shipped_configs(folder: str | os.PathLike, force: bool = False) -> list[Path]:
    """Copy the shipped configs (and their augmentation example) into `folder`, to edit. Every copy is checked before
    any is written, so that a user's edited file is never replaced without `force`; each is written atomically."""
    from app.atomic import OutputExistsError, atomic_write, check_output

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder}: is a file. Fix: give a folder to write the configs into")
    copies = {path: folder / path.relative_to(SHIPPED_CONFIGS) for path in sorted(SHIPPED_CONFIGS.rglob("*.yaml"))}
    for target in copies.values():
        check_output(target, force=force)
    for path, target in copies.items():
        text = path.read_text()
        atomic_write(target, lambda tmp, text=text: tmp.write_text(text), force=force)
    return list(copies.values())


def config_path(path: str | os.PathLike) -> Path:
    """A YAML file, or the name of a shipped config (a file of that name in the current folder comes first)."""
    given = Path(path)
    if given.is_file():
        return given
    shipped = shipped_configs()
    if str(path) in shipped:
        return shipped[str(path)]
    hint = did_you_mean(str(path), list(shipped))
    raise ConfigError(f"{path}: config file not found. Fix: pass a YAML file, or the name of a shipped config: {', '.join(shipped)}{hint}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None, base: Config | None = None, check_files: bool = True) -> Config:
    """Defaults (or `base`), then the YAML file (or shipped config) at `path`, then `overrides`; validated against the
    schema and every name against its registry (app/checks.py), before any image is read. `check_files`: also
    that augmentation pipeline files exist (not for a saved run, which may have moved to another machine)."""
    data = to_dict(base) if base is not None else {}
    if path is not None:
        path = config_path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, train:...)")
        data = merge_tree(data, loaded)
    data = apply_overrides(data, list(overrides or []))
    config = from_dict(Config, data)
    from app.checks import check_values  # the registries import this module: checked here, defined there

    check_values(config, check_files)
    return config


def merge_tree(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update`'s values written over it, section by section (a config tree and a partial one)."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge_tree(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def dump_config(config: Config) -> str:
    """YAML text that `load_config` reads back into an equal Config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
