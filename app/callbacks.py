"""Keras callbacks the standard set lacks."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

from app.atomic import atomic_write


def monitor_mode(monitor: str) -> str:
    """'min' for losses and errors, 'max' for everything else (accuracy, AUC, F1)."""
    return "min" if "loss" in monitor or "error" in monitor else "max"


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the whole model to a `.keras` file whenever `monitor` improves, atomically (temp file + rename),
    so an interrupted run never leaves a truncated model behind. Records `best_epoch` (1-based)."""

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss"):
        super().__init__()
        self.filepath = Path(filepath)
        self.monitor = monitor
        self.better = np.less if monitor_mode(monitor) == "min" else np.greater
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"train.monitor={self.monitor!r} is not among the logged metrics {sorted(logs or {})}")
        if self.best is None or self.better(value, self.best):
            self.best, self.best_epoch = float(value), epoch + 1
            atomic_write(self.filepath, lambda tmp: self.model.save(tmp))
