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
    device with the run's precision: epochs fitted on the same share of the training and validation batches (about
    `batches` training batches), the first tracing the model, the next timed until they add up to PROBE_SECONDS (two
    at least) and scaled up by that share, but for the run's own epoch-end callbacks, timed apart and counted once an
    epoch (they do not scale with batches). None for a config that trains in two stages or on cached backbone
    features, whose epochs differ too much for one measurement, or on several devices (train.distribute)."""
    if config.finetune.epochs > 0 or several_devices(config):
        return None
    probe = probe_config(config)
    steps = data.steps_per_epoch(probe.data.batch_size)
    val_steps = math.ceil(len(data.val) / probe.data.batch_size) if data.val is not None else 0
    share = min(steps, batches) / steps
    timer, saving = EpochTimer(), EpochEndWork()
    with precision_policy(probe.train.mixed_precision):  # the model is built in it, as a run's is
        model = build_model(probe, data.num_classes, data.multilabel)
        if uses_cached_features(model, probe, "train"):
            return None
        with make_datasets(probe, data) as datasets, tempfile.TemporaryDirectory(prefix="imgclf-pace-") as scratch:
            val = datasets.val.take(math.ceil(share * val_steps)) if datasets.val is not None else None
            short = Datasets(datasets.train.take(min(steps, batches)), val, contextlib.ExitStack())
            checkpoint = BestModelCheckpoint(Path(scratch) / "model.keras", monitor=probe.train.monitor)
            fit_stages(
                model,
                probe,
                plan_stages(probe, steps),
                short,
                data,
                callbacks=[timer, StopWhenTimed(timer, PROBE_SECONDS)],
                stage_callbacks=lambda stage: saving.around(run_callbacks(Path(scratch), stage, checkpoint, probe.output.tensorboard)),
            )
    work = statistics.mean(saving.seconds[1:])  # once an epoch, whatever the share
    return statistics.mean(timer.seconds[1:]) / share - work / share + work


class StopWhenTimed(keras.callbacks.Callback):
    """Stop a fit once the epochs after the first (which traces the model) add up to `seconds`, two at least."""

    def __init__(self, timer: EpochTimer, seconds: float):
        super().__init__()
        self.timer, self.seconds = timer, seconds

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        timed = self.timer.seconds[1:]
        if len(timed) >= 2 and sum(timed) >= self.seconds:
            self.model.stop_training = True


class EpochEndWork:
    """The seconds a run's own epoch-end callbacks take (BackupAndRestore's backup, the best checkpoint, history.csv,
    TensorBoard): a fixed cost per epoch, which a probe on a share of the batches must not scale up with the rest,
    and which in epochs under a second is a fifth or more of the epoch (benchmarks/README.md, "Search")."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def around(self, callbacks: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
        """`callbacks`, between a first and a last callback that time their on_epoch_end."""
        start = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(self, "_started", time.perf_counter()))
        end = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: self.seconds.append(time.perf_counter() - self._started))
        return [start, *callbacks, end]


def several_devices(config: Config) -> bool:
    """Whether a run of `config` may train on several devices or machines (train.distribute: mirrored, multiworker,
    or auto with several GPUs or a TF_CONFIG cluster)."""
    mode = config.train.distribute
    return mode in ("mirrored", "multiworker") or (mode == "auto" and (len(tf.config.list_logical_devices("GPU")) > 1 or "TF_CONFIG" in os.environ))
