"""How long an epoch of a config takes in this process, timed on a short fit: what sizes a search's final run to its
minutes (tune.final_minutes), where the pace its trials measured earlier, with their own settings and cores, misleads."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os

import tensorflow as tf

from app.config import Config, ScheduleConfig
from app.data import Datasets, PreparedData, make_datasets
from app.devices import precision_policy
from app.training.callbacks import EpochTimer
from app.training.features import uses_cached_features
from app.training.fitting import build_model, fit_stages, plan_stages


def probe_config(config: Config) -> Config:
    """`config` as the probe fits it: two epochs at full image size, constant rate, nothing that ends it early, quiet,
    training batches made by threads (the network is timed; worker processes would outlive the short epochs)."""
    train = dataclasses.replace(
        config.train, epochs=2, schedule=ScheduleConfig("constant"), progressive_from=None, early_stopping_patience=0, max_minutes=None, verbose=0
    )
    return dataclasses.replace(config, train=train, finetune=dataclasses.replace(config.finetune, epochs=0), data=dataclasses.replace(config.data, workers=0))


def measure_epoch_seconds(config: Config, data: PreparedData, batches: int = 16) -> float | None:
    """Seconds a full epoch (training and validation) of `config`'s network takes here at data.image_size: two
    epochs fitted on the same share of the training and validation batches (about `batches` training batches), the
    first tracing the model, the second timed and scaled up by that share, on one device with the run's precision.
    None for a config that trains in two stages or on cached backbone features, whose epochs differ too much for one
    measurement, or on several devices (train.distribute), which this process does not time."""
    if config.finetune.epochs > 0 or several_devices(config):
        return None
    probe = probe_config(config)
    steps = data.steps_per_epoch(probe.data.batch_size)
    val_steps = math.ceil(len(data.val) / probe.data.batch_size) if data.val is not None else 0
    share = min(steps, batches) / steps
    stages = plan_stages(probe, steps)
    timer = EpochTimer()
    with precision_policy(probe.train.mixed_precision):  # the model is built in it, as a run's is
        model = build_model(probe, data.num_classes, data.multilabel)
        if uses_cached_features(model, probe, "train"):
            return None
        with make_datasets(probe, data) as datasets:
            val = datasets.val.take(math.ceil(share * val_steps)) if datasets.val is not None else None
            short = Datasets(datasets.train.take(min(steps, batches)), val, contextlib.ExitStack())
            fit_stages(model, probe, stages, short, data, callbacks=[timer])
    return timer.seconds[-1] / share


def several_devices(config: Config) -> bool:
    """Whether a run of `config` may train on several devices or machines (train.distribute: mirrored, multiworker,
    or auto with several GPUs or a TF_CONFIG cluster)."""
    mode = config.train.distribute
    return mode in ("mirrored", "multiworker") or (mode == "auto" and (len(tf.config.list_logical_devices("GPU")) > 1 or "TF_CONFIG" in os.environ))
