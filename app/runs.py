"""Run directories: created fresh for every run (never reused), and read back for evaluate/predict."""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras

import app.training.optimization  # noqa: F401  (registers the custom loss for load_model)
import app.training.schedules  # noqa: F401  (registers the custom schedules for load_model)
from app.config import Config, ConfigError, load_config
from app.models.backbones import BackbonePreprocess  # noqa: F401  (registers the layer for load_model)
from pipelines.errors import DataError

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.keras"
CLASSES_FILE = "class_names.json"
FINISHED_FILE = "metrics.json"  # written last: a run without it was interrupted
BACKUP_DIR = "backup"  # keras BackupAndRestore state and stage bookkeeping, removed when the run finishes
LOCK_FILE = ".lock"  # pid of the process training in the run directory


def create_run_dir(base: str | os.PathLike, name: str | None, model_name: str) -> Path:
    """`base/name` (default: timestamp + model name), created here; an existing run is never reused."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stem = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{model_name}"
    for attempt in range(100):
        path = base / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if name:
                raise DataError(f"{path}: run directory already exists. Fix: choose another output.name, or leave it unset for a fresh timestamped one.") from None
    raise DataError(f"{base}: could not create a fresh run directory for {stem!r}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resumable(path: Path, config_text: str) -> bool:
    """An interrupted run of the very same config that no live process is training."""
    if (path / FINISHED_FILE).exists() or not (path / BACKUP_DIR).is_dir() or not (path / CONFIG_FILE).is_file():
        return False
    if (path / CONFIG_FILE).read_text() != config_text:
        return False
    return not is_locked(path)


def is_locked(path: Path) -> bool:
    """A live process is working in this run (or search) directory."""
    lock = path / LOCK_FILE
    return lock.is_file() and lock.read_text().strip().isdigit() and _alive(int(lock.read_text()))


def lock_run_dir(path: Path) -> None:
    (path / LOCK_FILE).write_text(str(os.getpid()))


def open_run_dir(base: str | os.PathLike, name: str | None, model_name: str, config_text: str, resume: bool) -> tuple[Path, bool]:
    """(run directory, resumed): with `resume`, the newest interrupted run of the same config (the one named
    `name`, if given) is continued; otherwise a fresh directory is created. The directory is locked with our pid."""
    base = Path(base)
    path: Path | None = None
    if resume and base.is_dir():
        candidates = [base / name] if name else sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        path = next((p for p in candidates if p.is_dir() and _resumable(p, config_text)), None)
    resumed = path is not None
    if path is None:
        path = create_run_dir(base, name, model_name)
    lock_run_dir(path)
    return path, resumed


def release_run_dir(path: Path) -> None:
    (path / LOCK_FILE).unlink(missing_ok=True)


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
        raise DataError(f"{path}: not a complete .keras file (a .keras model is a zip archive; this one is damaged or truncated). Fix: restore it, or train the run again.")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot be read as a Keras model ({reason}). Fix: restore the file, or train the run again.") from None


CV_FILE = "cv.json"  # written last by a cross-validation (app.training.crossval): its folds are all trained
FOLD_PREFIX = "fold_"


def fold_dirs(path: Path) -> list[Path]:
    """The fold run directories of a cross-validation directory, in fold order (finished or not)."""
    folds = [p for p in path.glob(f"{FOLD_PREFIX}*") if p.is_dir() and p.name[len(FOLD_PREFIX):].isdigit()]
    return sorted(folds, key=lambda p: int(p.name[len(FOLD_PREFIX):]))


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
            raise DataError(f"{path}: the cross-validation is not finished ({done} fold(s) trained, no {CV_FILE}). Fix: start the same `imgclf cv` command again to finish it.")
        loaded += [load_run(f) for f in folds]
    return loaded
