"""Run directories: created fresh for every run (never reused), and read back for evaluate/predict."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from app.config import Config, ConfigError, load_config
from pipelines.errors import DataError

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.keras"
CLASSES_FILE = "class_names.json"


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
        config = load_config(path / CONFIG_FILE)
    except ConfigError as exc:
        raise DataError(f"{path / CONFIG_FILE}: {exc}") from None
    meta = json.loads((path / CLASSES_FILE).read_text())
    model = keras.saving.load_model(path / MODEL_FILE, safe_mode=True)
    return Run(path, config, model, list(meta["class_names"]), bool(meta["multilabel"]))
