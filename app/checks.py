"""Every enumerated config value checked against the registry that owns it, when the config loads.

The schema (app/config.py) checks types and ranges; this module checks names: models, optimizers, schedules,
augmentation presets and files, TTA presets, distribute modes and class weights. Each error is one line naming the
key, the value, the choices and the closest one, raised before any image is read or any run folder exists. The
`tune` section's names (tuner, objective, space entries) are checked by `tuning.space.parse_space`, which
`imgclf tune` and `imgclf config` call first: app/ does not import tuning/.
"""

from __future__ import annotations

from pathlib import Path

from app.config import Config, ConfigError, check_choice, did_you_mean
from app.devices import DISTRIBUTE
from app.models import is_backbone, list_models
from app.models.backbones import canonical_name, size_problem
from app.training.optimization import OPTIMIZERS
from app.training.schedules import SCHEDULES
from pipelines.augment import PRESETS, TTA_PRESETS

PIPELINE_FILES = (".yaml", ".yml", ".json")  # what albumentations.save writes


def check_values(config: Config, check_files: bool = True) -> None:
    """Raise ConfigError for the first enumerated value that no registry knows (and, with `check_files`, for an
    augmentation pipeline file that does not exist)."""
    names = list_models()
    if canonical_name(config.model.name) not in {canonical_name(n) for n in names}:
        hint = did_you_mean(canonical_name(config.model.name), names)
        raise ConfigError(f"config key model.name: {config.model.name!r} is not a registered model (`imgclf models` lists {len(names)}){hint}")
    if is_backbone(config.model.name) and (problem := size_problem(config.model.name, config.data.image_size)):
        raise ConfigError(f"config key data.image_size: {problem}")
    check_choice("train.optimizer", config.train.optimizer, OPTIMIZERS)
    check_choice("train.schedule", config.train.schedule.name, SCHEDULES)
    check_choice("finetune.schedule", config.finetune.schedule.name, SCHEDULES)
    check_choice("train.distribute", config.train.distribute, DISTRIBUTE)
    for key, value in (("augment.train", config.augment.train), ("augment.eval", config.augment.eval)):
        _check_pipeline(key, value, tuple(PRESETS), check_files)
    if config.augment.tta is not None:
        _check_pipeline("augment.tta", config.augment.tta, tuple(TTA_PRESETS), check_files)
    start = config.train.progressive_from
    if start is not None and start >= config.data.image_size:
        raise ConfigError(
            f"config key train.progressive_from: {start} must be smaller than data.image_size ({config.data.image_size}), where it ends. "
            "Fix: a smaller start size, or null for no progressive resizing"
        )
    if start is not None and is_backbone(config.model.name):
        if config.train.freeze_backbone and config.train.cache_features:
            raise ConfigError(
                "config key train.progressive_from: stage 1 of a frozen backbone trains on features computed once, at data.image_size. "
                "Fix: null, or train.cache_features=false to train stage 1 on images"
            )
        if problem := size_problem(config.model.name, start):
            raise ConfigError(f"config key train.progressive_from: {problem}")
    if isinstance(config.train.class_weight, str):
        check_choice("train.class_weight", config.train.class_weight, ("balanced",), extra=", a mapping {class: weight}, or null")


def pipeline_problem(value: str, presets: tuple[str, ...], check_files: bool = True) -> str | None:
    """Why `value` is neither a preset nor an Albumentations pipeline file (that exists, with `check_files`), or None."""
    if value in presets:
        return None
    if Path(value).suffix.lower() not in PIPELINE_FILES:
        choices = ", ".join(presets)
        return f"{value!r} is not one of {choices} or the path of a pipeline saved by albumentations.save (.yaml, .json){did_you_mean(value, presets)}"
    if check_files and not Path(value).is_file():
        return f"{value!r} not found. Fix: the path of a pipeline saved by albumentations.save, or one of {', '.join(presets)}"
    return None


def _check_pipeline(key: str, value: str, presets: tuple[str, ...], check_files: bool) -> None:
    problem = pipeline_problem(value, presets, check_files)
    if problem:
        raise ConfigError(f"config key {key}: {problem}")
