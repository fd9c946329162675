"""Keras callbacks the standard set lacks: an atomic, resumable best-model checkpoint, a resumable history CSV, the
best weights kept in memory, and a wall-clock limit."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from app.atomic import atomic_write, write_json
from app.config import ConfigError
from app.models.backbones import whole_model
from app.models.portable import portable_model


def monitor_mode(monitor: str) -> str:
    """'min' for losses and errors, 'max' for everything else (accuracy, AUC, F1)."""
    return "min" if "loss" in monitor or "error" in monitor else "max"


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model to a `.keras` file whenever `monitor` improves, atomically (temp file + rename), so an
    interrupted run never leaves a truncated model behind. Records `best_epoch` (1-based). The file holds the
    inference model (`portable_model`: no optimizer or schedule), which plain Keras loads without this toolkit;
    resuming uses BackupAndRestore's own state, not this file.

    With `state_path`, the best value so far is kept in a JSON file too, so a resumed run (or a second training
    stage) only replaces the checkpoint with a better one."""

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss", state_path: str | os.PathLike | None = None):
        super().__init__()
        self.filepath = Path(filepath)
        self.monitor = monitor
        self.better = np.less if monitor_mode(monitor) == "min" else np.greater
        self.state_path = Path(state_path) if state_path else None
        self.best: float | None = None
        self.best_epoch: int | None = None
        if self.state_path and self.state_path.is_file() and self.filepath.is_file():
            state = json.loads(self.state_path.read_text())
            self.best, self.best_epoch = state["best"], state["best_epoch"]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"train.monitor={self.monitor!r} is not among the logged metrics {sorted(logs or {})}")
        if self.best is None or self.better(value, self.best):
            self.best, self.best_epoch = float(value), epoch + 1
            atomic_write(self.filepath, lambda tmp: portable_model(whole_model(self.model)).save(tmp))
            if self.state_path:
                write_json(self.state_path, {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch})

    def restore(self, model: keras.Model) -> None:
        """Load the best weights saved so far into `model` (the one being trained), if any were saved."""
        if not self.filepath.is_file():
            return
        with warnings.catch_warnings():  # the file has no optimizer state, by design: Keras warns that it skips it
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(self.filepath)


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch (numbered across stages), with the stage name and the learning rate at the epoch's end, rewritten atomically
    at each epoch end. A resumed run replaces rows from the epoch it restarts at, so no epoch appears twice."""

    def __init__(self, path: str | os.PathLike, stage: str):
        super().__init__()
        self.path = Path(path)
        self.stage = stage
        self.last_epoch = 0  # 1-based number of the last epoch logged

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        rows = pd.read_csv(self.path) if self.path.is_file() else pd.DataFrame({"epoch": []})
        rows = rows[rows["epoch"] < epoch + 1]
        row = {"epoch": epoch + 1, "stage": self.stage, "learning_rate": current_learning_rate(self.model), **{k: float(v) for k, v in (logs or {}).items()}}
        rows = pd.concat([rows, pd.DataFrame([row])], ignore_index=True).astype({"epoch": int})
        atomic_write(self.path, lambda tmp: rows.to_csv(tmp, index=False))
        self.last_epoch = epoch + 1


def current_learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate now (a schedule evaluated at the current step)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def check_plateau_callbacks(callbacks: Sequence[keras.callbacks.Callback], optimizer: keras.optimizers.Optimizer, schedule_name: str) -> None:
    """Keras' ReduceLROnPlateau crashes mid-training when the learning rate follows a schedule: refuse up front."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer under mixed precision
    scheduled = isinstance(inner.get_config()["learning_rate"], dict)  # a serialized schedule, not a number
    if scheduled and any(isinstance(cb, keras.callbacks.ReduceLROnPlateau) for cb in callbacks):
        raise ConfigError(
            f"ReduceLROnPlateau cannot change a learning rate that follows the {schedule_name!r} schedule. "
            "Fix: use schedule plateau (a constant rate reduced on plateaus), or drop the ReduceLROnPlateau callback."
        )


class BestWeights(keras.callbacks.Callback):
    """Keep the weights and logs of the best epoch by `monitor` in memory, across every fit it is passed to (stages),
    and put them back with `restore()`: what a search trial needs instead of a checkpoint file per epoch."""

    def __init__(self, monitor: str = "val_loss"):
        super().__init__()
        self.monitor = monitor
        self.better = np.less if monitor_mode(monitor) == "min" else np.greater
        self.best: float | None = None
        self.best_epoch: int | None = None  # 1-based
        self.best_logs: dict[str, float] = {}
        self.epochs_run = 0
        self._weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"{self.monitor!r} is not among the logged metrics {sorted(logs)}")
        self.epochs_run += 1
        if self.best is None or (np.isfinite(value) and self.better(value, self.best)):
            self.best, self.best_epoch = float(value), epoch + 1
            self.best_logs = {k: float(v) for k, v in logs.items()}
            self._weights = whole_model(self.model).get_weights()

    def restore(self) -> None:
        if self._weights is not None:
            whole_model(self.model).set_weights(self._weights)


class EpochTimer(keras.callbacks.Callback):
    """Each epoch's wall time in seconds (training and validation), in `seconds`."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(round(time.perf_counter() - self._started, 3))


class TimeLimit(keras.callbacks.Callback):
    """Stop training at the end of the first epoch that ends after `ends_at` (a `time.time()` instant): a run's
    `train.max_minutes`, a search's `tune.max_minutes`. An epoch is never cut short; `stopped_epoch` (1-based) says
    where it stopped, None while it has not."""

    def __init__(self, ends_at: float | Callable[[], float | None]):
        super().__init__()
        self._ends_at = ends_at
        self.stopped_epoch: int | None = None

    @classmethod
    def after_minutes(cls, minutes: float | None) -> TimeLimit | None:
        """A limit `minutes` from now, or None without one."""
        return None if minutes is None else cls(time.time() + minutes * 60)

    @property
    def ends_at(self) -> float | None:
        return self._ends_at() if callable(self._ends_at) else self._ends_at

    def passed(self) -> bool:
        ends_at = self.ends_at
        return ends_at is not None and time.time() >= ends_at

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.passed():
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1
