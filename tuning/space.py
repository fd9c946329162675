"""The search space: `tune.space` entries checked at once, and declared as KerasTuner hyperparameters.

An entry is a single value (fixed: `hp.Fixed`), a list of choices (`hp.Choice`), a range (`{min, max, step,
sampling}`: `hp.Int` or `hp.Float`), or null (not searched: the rest of the config decides). Every mistake in the
space is one `ConfigError` line naming the key, before any image is read.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras_tuner as kt

from app.checks import pipeline_problem
from app.config import POOLS, Config, ConfigError, ScheduleConfig, check_choice, did_you_mean, from_dict, merge_tree, to_dict
from app.models import is_backbone
from app.models.backbones import BACKBONES, canonical_name
from app.training.optimization import OPTIMIZERS
from app.training.schedules import SCHEDULES
from pipelines.augment import PRESETS
from tuning.oracles import rung_epochs

TUNERS = ("random", "asha", "hyperband", "bayesian", "grid")
TRIAL_BUDGETS = ("compute", "epochs")

# Conditional knobs searched for each schedule, merged under tune.space.schedule_knobs (knob -> entry).
SCHEDULE_KNOBS: dict[str, dict[str, Any]] = {
    "constant": {},
    "cosine": {"warmup_epochs": [0, 1]},
    "step": {"decay_rate": [0.1, 0.3]},
    "exponential": {"decay_rate": [0.3, 0.5]},
    "cosine_restarts": {"cycle_mul": [1.0, 2.0]},
    "one_cycle": {"pct_start": [0.2, 0.3, 0.4]},
    "polynomial": {"power": [1.0, 2.0]},
    "ramp_sustain_step": {"warmup_epochs": [1, 2], "decay_rate": [0.7, 0.8]},
    "plateau": {"patience": [1, 2]},
}

# Keras logs an objective can name, and the metrics.json fields computed at the end of each trial.
KERAS_OBJECTIVES = ("val_loss", "val_accuracy", "val_auc")
REPORT_OBJECTIVES = ("accuracy", "macro_f1", "log_loss", "top_3_accuracy", "top_5_accuracy", "mean_column_auc", "micro_f1", "exact_match_accuracy")


@dataclass(frozen=True)
class Entry:
    """One searched quantity: `fixed` (value), `choice` (values), or a range (`int` / `float`: low, high, step, sampling)."""

    kind: str
    value: Any = None
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    sampling: str = "linear"

    def candidates(self) -> list[Any]:
        """Every value for a choice or a fixed entry; the two ends of a range."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "choice":
            return list(self.values)
        return [self.low, self.high]

    def member(self, value: Any) -> Any:
        """`value` as this entry holds it when the entry contains it (2 in a choice of 1.5 and 2.0 is 2.0), else None."""
        if isinstance(value, bool) or value is None:
            return None
        if self.kind == "fixed":
            return self.value if value == self.value else None
        if self.kind == "choice":
            return next((v for v in self.values if v == value), None)
        if not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return None
        return int(value) if self.kind == "int" and value == int(value) else (float(value) if self.kind == "float" else None)

    def declare(self, hp: kt.HyperParameters, name: str, default: Any = None) -> Any:
        """The hyperparameter `name` on `hp` (KerasTuner returns its value for this trial). `default`: the config's own
        value, KerasTuner's default when the entry contains it (the reference trial, the grid's first combination)."""
        default = self.member(default)
        if self.kind == "fixed":
            return hp.Fixed(name, self.value)
        if self.kind == "choice":
            return hp.Choice(name, list(self.values), default=default)
        if self.kind == "int":
            return hp.Int(name, int(self.low), int(self.high), step=int(self.step) if self.step else None, sampling=self.sampling, default=default)
        return hp.Float(name, self.low, self.high, step=self.step, sampling=self.sampling, default=default)


def parse_entry(key: str, raw: Any, kind: type, check: Callable[[Any], str | None] | None = None) -> Entry | None:
    """`raw` (from YAML) as an Entry of `kind` values (int, float or str); None when raw is null."""
    if raw is None:
        return None

    def value(v: Any) -> Any:
        if kind is float and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = float(v)
        elif kind is float and isinstance(v, str):
            try:
                v = float(v)  # YAML 1.1 reads 1e-4 as text
            except ValueError:
                pass
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ConfigError(f"config key {key}: {v!r} is not a {kind.__name__}")
        problem = check(v) if check else None
        if problem:
            raise ConfigError(f"config key {key}: {problem}")
        return v

    if isinstance(raw, dict):
        unknown = set(raw) - {"min", "max", "step", "sampling"}
        if unknown or not {"min", "max"} <= set(raw):
            raise ConfigError(f"config key {key}: a range is {{min, max}} with optional step and sampling (linear or log), got {raw}")
        if kind is str:
            raise ConfigError(f"config key {key}: takes a value or a list of choices, not a range")
        low, high = value(raw["min"]), value(raw["max"])
        if low > high:
            raise ConfigError(f"config key {key}: min {low} is larger than max {high}")
        sampling = raw.get("sampling", "linear")
        if sampling not in ("linear", "log"):
            raise ConfigError(f"config key {key}: sampling must be linear or log, got {sampling!r}")
        if sampling == "log" and low <= 0:
            raise ConfigError(f"config key {key}: log sampling needs min > 0, got {low}")
        step = raw.get("step")
        if step is not None and (not isinstance(step, (int, float)) or step <= 0):
            raise ConfigError(f"config key {key}: step must be a positive number, got {step!r}")
        if low == high:
            return Entry("fixed", value=low)
        return Entry("int" if kind is int else "float", low=low, high=high, step=step, sampling=sampling)
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"config key {key}: the list of choices is empty. Fix: give at least one value, or null to leave it to the rest of the config")
        values = tuple(dict.fromkeys(value(v) for v in raw))  # in order, without repeats
        return Entry("fixed", value=values[0]) if len(values) == 1 else Entry("choice", values=values)
    return Entry("fixed", value=value(raw))


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"{v} must be > 0"


def _one_of(names: tuple[str, ...], what: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in names else f"unknown {what} {v!r}; choose from {', '.join(names)}{did_you_mean(v, names)}"


def _augment(v: str) -> str | None:
    return pipeline_problem(v, tuple(PRESETS))


def _backbone(v: str) -> str | None:
    return None if canonical_name(v) in BACKBONES else f"unknown backbone {v!r}; `imgclf models` lists them"


def _rate(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else f"{v} is not a rate in [0, 1)"


# tune.space key -> (value type, check)
SPACE_KEYS: dict[str, tuple[type, Callable[[Any], str | None] | None]] = {
    "blocks": (int, _positive),
    "filters": (int, _positive),
    "filters_growth": (float, lambda v: None if v >= 1.0 else f"{v} would shrink the network (a growth factor is >= 1)"),
    "kernel_size": (int, _positive),
    "strides": (int, _positive),
    "repeats": (int, _positive),
    "pool": (str, _one_of(POOLS, "pooling")),
    "backbone": (str, _backbone),
    "unfreeze_blocks": (int, _positive),
    "finetune_learning_rate": (float, _positive),
    "image_size": (int, lambda v: None if v >= 8 else f"image size {v} is too small (8 pixels at least)"),
    "dropout": (float, _rate),
    "optimizer": (str, _one_of(OPTIMIZERS, "optimizer")),
    "learning_rate": (float, _positive),
    "schedule": (str, _one_of(SCHEDULES, "schedule")),
    "augment": (str, _augment),
    "label_smoothing": (float, _rate),
    "batch_size": (int, _positive),
    "mixup": (float, lambda v: None if v >= 0 else f"{v}: MixUp's alpha is >= 0 (0: off)"),
    "cutmix": (float, lambda v: None if v >= 0 else f"{v}: CutMix's alpha is >= 0 (0: off)"),
    "ema": (float, lambda v: None if 0 <= v < 1 else f"{v} is not an EMA momentum in [0, 1) (0: off)"),
    "progressive_from": (int, lambda v: None if v == 0 or v >= 8 else f"{v}: a start size >= 8, or 0 (off)"),
}
RECIPE_KEYS = {"mixup": "train.mixup", "cutmix": "train.cutmix", "ema": "train.ema", "progressive_from": "train.progressive_from"}  # 0: off
BASELINE_ONLY = ("blocks", "filters", "filters_growth", "kernel_size", "strides", "repeats", "pool")
BACKBONE_ONLY = ("backbone", "unfreeze_blocks", "finetune_learning_rate", "image_size")


@dataclass(frozen=True)
class SearchSpace:
    """The parsed `tune.space`: an Entry (or None) per key, and the knobs of each searched schedule."""

    entries: dict[str, Entry | None]
    schedule_knobs: dict[str, dict[str, Entry]]
    backbone: bool  # model.name is a pretrained backbone: BackboneHyperModel, else BaselineHyperModel

    def __getitem__(self, key: str) -> Entry | None:
        return self.entries[key]

    def searched(self) -> list[str]:
        """Keys that take more than one value, among those this kind of model reads (a backbone search ignores the
        baseline CNN's block keys, and the other way round)."""
        ignored = BASELINE_ONLY if self.backbone else BACKBONE_ONLY
        return [k for k, e in self.entries.items() if e is not None and e.kind != "fixed" and k not in ignored]


FINAL_KEEPS = {"data": "images", "seed": "split", "tune": "search settings"}  # what tune.final cannot change


def check_final_settings(config: Config) -> None:
    """tune.final, the final run's own settings, must be a partial config that keeps the search's images, split
    and settings, and leaves the run's length to tune.final_epochs or tune.final_minutes; ConfigError names the key."""
    final = config.tune.final
    for key, kept in FINAL_KEEPS.items():
        if key in final:
            raise ConfigError(f"config key tune.final.{key}: the final run keeps the search's {kept}. Fix: set {key} outside tune.final")
    if isinstance(final.get("train"), dict) and "epochs" in final["train"]:
        raise ConfigError("config key tune.final.train.epochs: the final run's length is tune.final_epochs or tune.final_minutes. Fix: set one of those")
    try:
        from_dict(Config, merge_tree(to_dict(config), final))
    except ConfigError as exc:
        raise ConfigError(f"config key tune.final: {exc}") from None


def config_rungs(config: Config) -> list[int]:
    """asha's rungs for this config: tune.min_epochs, x tune.reduction_factor, ... up to train.epochs."""
    tune = config.tune
    return rung_epochs(min(tune.min_epochs, config.train.epochs), config.train.epochs, max(2, tune.reduction_factor))


def rung_image_size(config: Config, rung: int) -> int:
    """asha: the image size of `rung`: from tune.first_rung_scale x data.image_size at the lowest rung, evenly up to
    data.image_size at the top one (multiples of 4 in between, 8 pixels at least)."""
    tune, full = config.tune, config.data.image_size
    top = len(config_rungs(config)) - 1
    if tune.first_rung_scale == 1.0 or rung >= top:
        return full
    scale = tune.first_rung_scale + (1.0 - tune.first_rung_scale) * rung / top
    return max(8, round(full * scale / 4) * 4)


def check_rung_scale(config: Config) -> None:
    """tune.first_rung_scale: a share in (0, 1], for asha only; ConfigError names it."""
    scale = config.tune.first_rung_scale
    if not 0.0 < scale <= 1.0:
        raise ConfigError(f"config key tune.first_rung_scale: {scale} must be a share of data.image_size in (0, 1] (e.g. 0.5)")
    if scale != 1.0 and config.tune.tuner != "asha":
        raise ConfigError("config key tune.first_rung_scale: rungs are asha's. Fix: tune.tuner=asha, or first_rung_scale=1.0")


def parse_space(config: Config) -> SearchSpace:
    """Check `config.tune` (tuner, objective, budget, space) and parse its space; ConfigError names the key."""
    tune = config.tune
    check_choice("tune.tuner", tune.tuner, TUNERS)
    check_choice("tune.objective", tune.objective, KERAS_OBJECTIVES + REPORT_OBJECTIVES, extra=" (a Keras log, or a metrics.json field)")
    if tune.max_trials < 1:
        raise ConfigError(f"config key tune.max_trials: {tune.max_trials} must be >= 1")
    if tune.max_minutes is not None and tune.max_minutes <= 0:
        raise ConfigError(f"config key tune.max_minutes: {tune.max_minutes} must be > 0 (or null for no time limit)")
    if tune.min_feature_size < 1:
        raise ConfigError(f"config key tune.min_feature_size: {tune.min_feature_size} must be >= 1")
    if tune.final_epochs is not None and tune.final_epochs < 1:
        raise ConfigError(f"config key tune.final_epochs: {tune.final_epochs} must be >= 1 (or null for train.epochs)")
    check_choice("tune.trial_budget", tune.trial_budget, TRIAL_BUDGETS)
    if tune.final_minutes is not None and tune.final_minutes <= 0:
        raise ConfigError(f"config key tune.final_minutes: {tune.final_minutes} must be > 0 (or null)")
    if tune.final_minutes is not None and tune.final_epochs is not None:
        raise ConfigError("config keys tune.final_epochs and tune.final_minutes both size the final run. Fix: set one of them to null")
    check_final_settings(config)
    if tune.reduction_factor < 2:
        raise ConfigError(f"config key tune.reduction_factor: {tune.reduction_factor} must be >= 2")
    check_rung_scale(config)
    if not 1 <= tune.min_epochs <= config.train.epochs:
        raise ConfigError(f"config key tune.min_epochs: {tune.min_epochs} must be in 1..train.epochs ({config.train.epochs}), the lowest and highest rungs")
    for key in ("worker_timeout", "connect_timeout"):
        if getattr(tune, key) <= 0:
            raise ConfigError(f"config key tune.{key}: {getattr(tune, key)} must be > 0 seconds")
    backbone = is_backbone(config.model.name)
    if not backbone and config.model.name != "baseline_cnn":
        raise ConfigError(f"config key model.name: unknown model {config.model.name!r}; `imgclf models` lists them")
    if tune.tuner in ("hyperband", "asha") and config.finetune.epochs > 0:
        raise ConfigError(
            f"config key tune.tuner: {tune.tuner} grows one stage's epochs, and finetune.epochs > 0 makes two. "
            f"Fix: set finetune.epochs=0 (train.epochs is {tune.tuner}'s most epochs), or use tune.tuner=random or bayesian"
        )
    space = tune.space
    entries = {}
    for key, (kind, check) in SPACE_KEYS.items():
        entries[key] = parse_entry(f"tune.space.{key}", getattr(space, key), kind, check)
    unknown = set(space.schedule_knobs) - set(SCHEDULES)
    if unknown:
        raise ConfigError(f"config key tune.space.schedule_knobs: unknown schedule {sorted(unknown)[0]!r}; choose from {', '.join(SCHEDULES)}")
    knob_types = typing.get_type_hints(ScheduleConfig)
    knobs: dict[str, dict[str, Entry]] = {}
    schedule_names = entries["schedule"].candidates() if entries["schedule"] else [config.train.schedule.name]
    for name in schedule_names:
        merged = {**SCHEDULE_KNOBS[name], **(space.schedule_knobs.get(name) or {})}
        knobs[name] = {}
        for knob, raw in merged.items():
            if knob not in knob_types or knob == "name":
                valid = ", ".join(f.name for f in dataclasses.fields(ScheduleConfig) if f.name != "name")
                raise ConfigError(f"config key tune.space.schedule_knobs.{name}: unknown knob {knob!r}; valid knobs: {valid}")
            kind = int if knob_types[knob] is int else float
            entry = parse_entry(f"tune.space.schedule_knobs.{name}.{knob}", raw, kind, lambda v: None if v >= 0 else f"{v} must be >= 0")
            if entry is not None:
                knobs[name][knob] = entry
    return SearchSpace(entries, knobs, backbone)
