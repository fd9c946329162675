"""Where training runs: the tf.distribute strategy and the mixed-precision policy."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator

import keras
import tensorflow as tf

from app import keras_compat
from app.config import ConfigError

log = logging.getLogger(__name__)

DISTRIBUTE = ("auto", "none", "mirrored", "multiworker")


def _tf_config_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}). Fix: see https://www.tensorflow.org/guide/distributed_training") from None
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def make_strategy(mode: str = "auto") -> tf.distribute.Strategy:
    """`auto`: MultiWorkerMirroredStrategy when TF_CONFIG names several workers, MirroredStrategy over several GPUs,
    else the default (one device). `mirrored` also mirrors over logical CPU devices when there is no GPU (that is how
    the tests exercise it). The global batch is data.batch_size, split across the replicas."""
    if mode not in DISTRIBUTE:
        raise ConfigError(f"unknown train.distribute={mode!r}. Fix: use one of {', '.join(DISTRIBUTE)}")
    if mode == "multiworker" or (mode == "auto" and _tf_config_workers() > 1):
        if _tf_config_workers() == 0:
            raise ConfigError("train.distribute=multiworker needs TF_CONFIG describing the cluster. Fix: set TF_CONFIG on every worker, or use mirrored/auto.")
        try:
            strategy: tf.distribute.Strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:  # "Collective ops must be configured at program startup"
            raise ConfigError(
                f"MultiWorkerMirroredStrategy must be created before TensorFlow runs anything ({exc}). Fix: call train() first in a fresh process."
            ) from None
        keras_compat.fix_distributed_fit()
        log.info("training on %d replicas (%s, %s)", strategy.num_replicas_in_sync, type(strategy).__name__, "the chief" if is_chief(strategy) else "a worker")
        return strategy
    gpus = tf.config.list_logical_devices("GPU")  # initialises the TF runtime: only after the multi-worker case
    if mode == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    elif mode == "auto" and len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        return tf.distribute.get_strategy()
    keras_compat.fix_distributed_fit()
    log.info("training on %d replicas (%s)", strategy.num_replicas_in_sync, type(strategy).__name__)
    return strategy


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run's outputs: always, but for the non-chief workers of a multi-worker
    cluster (TF_CONFIG: the `chief` task, else worker 0), which train in step with it and write to a scratch folder."""
    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


@contextlib.contextmanager
def precision_policy(mixed: bool) -> Iterator[str]:
    """Keras' `mixed_float16` policy inside the block when asked for and a GPU is visible; yields the policy name.

    On a CPU float16 compute is slower and no more accurate, so the switch is ignored there with a note."""
    if not mixed:
        yield keras.mixed_precision.global_policy().name
        return
    if not tf.config.list_logical_devices("GPU"):
        log.warning("train.mixed_precision: no GPU visible; float16 compute only pays off on GPUs, so this run stays in float32")
        yield keras.mixed_precision.global_policy().name
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy(previous)
