"""Run directories: opened through app.resumable (a fresh one, or an interrupted one continued), read back for
evaluate/predict."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras

import app.training.optimization  # noqa: F401  (registers the custom loss for load_model)
import app.training.schedules  # noqa: F401  (registers the custom schedules for load_model)
from app.config import Config, ConfigError, load_config
from app.models.backbones import BackbonePreprocess  # noqa: F401  (registers the layer for load_model)
from app.resumable import CONFIG_FILE, ResumableDir
from pipelines.errors import DataError

MODEL_FILE = "model.keras"
CLASSES_FILE = "class_names.json"
FINISHED_FILE = "metrics.json"  # written last: a run without it was interrupted
BACKUP_DIR = "backup"  # keras BackupAndRestore state and stage bookkeeping, removed when the run finishes


def open_run_dir(base: str | os.PathLike, name: str | None, model_name: str, config_text: str, resume: bool) -> ResumableDir:
    """A training run's directory (a `with` block): with `resume`, the newest interrupted run of the same config (the
    one named `name`, if given) that holds a checkpoint; otherwise a fresh one."""
    return ResumableDir(
        base, "run", config_text, finished_file=FINISHED_FILE, stem=model_name, name=name, resume=resume, usable=lambda path: (path / BACKUP_DIR).is_dir()
    )


@dataclass
class Run:
    """A finished training run, as read back from its directory."""

    path: Path
    config: Config
    model: keras.Model
    class_names: list[str]
    multilabel: bool


def load_run(path: str | os.PathLike) -> Run:
    """Read a run directory written by `train`: its config, best model and class names."""
    path = Path(path)
    missing = [f for f in (CONFIG_FILE, MODEL_FILE, CLASSES_FILE) if not (path / f).is_file()]
    if missing:
        raise DataError(f"{path}: not a finished run directory (missing {', '.join(missing)}). Fix: pass the folder that train printed.")
    try:
        config = load_config(path / CONFIG_FILE, check_files=False)
    except ConfigError as exc:
        raise DataError(f"{path / CONFIG_FILE}: {exc}") from None
    meta = json.loads((path / CLASSES_FILE).read_text())
    model = load_model_file(path / MODEL_FILE)
    return Run(path, config, model, list(meta["class_names"]), bool(meta["multilabel"]))


def load_model_file(path: Path) -> keras.Model:
    """`keras.saving.load_model`, with one clear line for a damaged file (Keras says "File not found" for a
    truncated one, although it is there)."""
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path}: not a complete .keras file (a .keras model is a zip archive; this one is damaged or truncated). Fix: restore it, or train the run again."
        )
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot be read as a Keras model ({reason}). Fix: restore the file, or train the run again.") from None


CV_FILE = "cv.json"  # written last by a cross-validation (app.training.crossval): its folds are all trained
FOLD_PREFIX = "fold_"


def fold_dirs(path: Path) -> list[Path]:
    """The fold run directories of a cross-validation directory, in fold order (finished or not)."""
    folds = [p for p in path.glob(f"{FOLD_PREFIX}*") if p.is_dir() and p.name[len(FOLD_PREFIX) :].isdigit()]
    return sorted(folds, key=lambda p: int(p.name[len(FOLD_PREFIX) :]))


def load_runs(paths: list[str | os.PathLike]) -> list[Run]:
    """Runs to predict with: each path a run directory, or a cross-validation directory (all its fold runs)."""
    loaded: list[Run] = []
    for raw in paths:
        path = Path(raw)
        folds = fold_dirs(path) if path.is_dir() and not (path / MODEL_FILE).exists() else []
        if not folds:
            loaded.append(load_run(path))
            continue
        if not (path / CV_FILE).is_file():
            done = sum((f / FINISHED_FILE).is_file() for f in folds)
            raise DataError(
                f"{path}: the cross-validation is not finished ({done} fold(s) trained, no {CV_FILE}). "
                "Fix: start the same `imgclf cv` command again to finish it."
            )
        loaded += [load_run(f) for f in folds]
    return loaded
