"""How long an epoch of a config takes in this process, timed on a short fit: what sizes a search's final run to its
minutes (tune.final_minutes), where the pace its trials measured earlier, with their own settings and cores, misleads."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from app.config import Config, ScheduleConfig
from app.data import Datasets, PreparedData, make_datasets
from app.devices import precision_policy
from app.training.callbacks import BestModelCheckpoint, EpochTimer
from app.training.features import uses_cached_features
from app.training.fitting import build_model, fit_stages, plan_stages
from app.training.run import run_callbacks

PROBE_SECONDS = 6.0  # epochs after the first are timed until they add up to this: the VMs' pace swings from second to second
PROBE_MAX_EPOCHS = 30


def probe_config(config: Config) -> Config:
    """`config` as the probe fits it: up to PROBE_MAX_EPOCHS at full image size, constant rate, nothing that ends it
    early, quiet, training batches made by threads (the network is timed; worker processes would outlive the short
    epochs)."""
    constant = ScheduleConfig("constant")
    train = dataclasses.replace(
        config.train, epochs=PROBE_MAX_EPOCHS, schedule=constant, progressive_from=None, early_stopping_patience=0, max_minutes=None, verbose=0
    )
    return dataclasses.replace(config, train=train, finetune=dataclasses.replace(config.finetune, epochs=0), data=dataclasses.replace(config.data, workers=0))


def measure_epoch_seconds(config: Config, data: PreparedData, batches: int = 16) -> float | None:
    """Seconds a full epoch (training and validation) of `config`'s network takes here at data.image_size, on one
    device with the run's precision and the run's own epoch-end callbacks (backup, checkpoint, history): epochs
    fitted on about `batches` training batches and the same share of the validation batches, the first tracing the
    model, the next timed until they add up to PROBE_SECONDS (two at least). Each timed epoch counts as it ran, plus
    the batches it did not fit at the pace of its own batches after the first: what an epoch spends once (starting
    its iterators, the first batch, the callbacks) is not scaled up with the batches. None for a config that trains
    in two stages or on cached backbone features, whose epochs differ too much for one measurement, or on several
    devices (train.distribute)."""
    if config.finetune.epochs > 0 or several_devices(config):
        return None
    probe = probe_config(config)
    steps = data.steps_per_epoch(probe.data.batch_size)
    val_steps = math.ceil(len(data.val) / probe.data.batch_size) if data.val is not None else 0
    fitted, val_fitted = min(steps, batches), math.ceil(min(steps, batches) / steps * val_steps)
    timer, times = EpochTimer(), BatchTimes()
    with precision_policy(probe.train.mixed_precision):  # the model is built in it, as a run's is
        model = build_model(probe, data.num_classes, data.multilabel)
        if uses_cached_features(model, probe, "train"):
            return None
        with make_datasets(probe, data) as datasets, tempfile.TemporaryDirectory(prefix="imgclf-pace-") as scratch:
            val = datasets.val.take(val_fitted) if datasets.val is not None else None
            short = Datasets(datasets.train.take(fitted), val, contextlib.ExitStack())
            checkpoint = BestModelCheckpoint(Path(scratch) / "model.keras", monitor=probe.train.monitor)
            callbacks = [timer, times, StopWhenTimed(timer, PROBE_SECONDS)]
            stages = plan_stages(probe, steps)
            fit_stages(
                model,
                probe,
                stages,
                short,
                data,
                callbacks=callbacks,
                stage_callbacks=lambda stage: run_callbacks(Path(scratch), stage, checkpoint, probe.output.tensorboard),
            )
    full = [
        seconds + (steps - fitted) * steady(train) + (val_steps - val_fitted) * steady(test)
        for seconds, train, test in zip(timer.seconds[1:], times.train[1:], times.test[1:], strict=True)
    ]
    return statistics.mean(full)


def steady(seconds: list[float]) -> float:
    """The pace of an epoch's batches after its first (which waits for the input pipeline to fill), 0 without."""
    return statistics.mean(seconds[1:]) if len(seconds) > 1 else 0.0


class BatchTimes(keras.callbacks.Callback):
    """Each epoch's training and validation batch times, in seconds (`train`, `test`: one list per epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.train: list[list[float]] = []
        self.test: list[list[float]] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.train.append([])
        self.test.append([])

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.train[-1].append(time.perf_counter() - self._started)

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.test[-1].append(time.perf_counter() - self._started)


class StopWhenTimed(keras.callbacks.Callback):
    """Stop a fit once the epochs after the first (which traces the model) add up to `seconds`, two at least."""

    def __init__(self, timer: EpochTimer, seconds: float):
        super().__init__()
        self.timer, self.seconds = timer, seconds

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        timed = self.timer.seconds[1:]
        if len(timed) >= 2 and sum(timed) >= self.seconds:
            self.model.stop_training = True


def several_devices(config: Config) -> bool:
    """Whether a run of `config` may train on several devices or machines (train.distribute: mirrored, multiworker,
    or auto with several GPUs or a TF_CONFIG cluster)."""
    mode = config.train.distribute
    return mode in ("mirrored", "multiworker") or (mode == "auto" and (len(tf.config.list_logical_devices("GPU")) > 1 or "TF_CONFIG" in os.environ))
