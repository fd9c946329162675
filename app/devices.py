"""Where training runs: the tf.distribute strategy and the mixed-precision policy."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator

import keras
import tensorflow as tf

log = logging.getLogger(__name__)

DISTRIBUTE = ("auto", "none", "mirrored", "multiworker")


def _tf_config_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON ({exc}). Fix: see https://www.tensorflow.org/guide/distributed_training") from None
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def make_strategy(mode: str = "auto") -> tf.distribute.Strategy:
    """`auto`: MultiWorkerMirroredStrategy when TF_CONFIG names several workers, MirroredStrategy over several GPUs,
    else the default (one device). `mirrored` also mirrors over logical CPU devices when there is no GPU (that is how
    the tests exercise it). The global batch is data.batch_size, split across the replicas."""
    if mode not in DISTRIBUTE:
        raise ValueError(f"unknown train.distribute={mode!r}. Fix: use one of {', '.join(DISTRIBUTE)}")
    if mode == "multiworker" or (mode == "auto" and _tf_config_workers() > 1):
        if _tf_config_workers() == 0:
            raise ValueError("train.distribute=multiworker needs TF_CONFIG describing the cluster. Fix: set TF_CONFIG on every worker, or use mirrored/auto.")
        try:
            strategy: tf.distribute.Strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:  # "Collective ops must be configured at program startup"
            raise ValueError(f"MultiWorkerMirroredStrategy must be created before TensorFlow runs anything ({exc}). Fix: call train() first in a fresh process.") from None
        fix_keras_distributed_fit()
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
    fix_keras_distributed_fit()
    log.info("training on %d replicas (%s)", strategy.num_replicas_in_sync, type(strategy).__name__)
    return strategy


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run's outputs: always, but for the non-chief workers of a multi-worker
    cluster (TF_CONFIG: the `chief` task, else worker 0), which train in step with it and write to a scratch folder."""
    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def fix_keras_distributed_fit() -> None:
    """Make Keras 3's `fit`/`evaluate` work under MultiWorkerMirroredStrategy beyond one worker, and take the same
    steps under any tf.distribute strategy as in one process.

    Keras 3.15 (keras-team/keras#20585, open since TF 2.16) fails there twice, both in its TensorFlow trainer:
    - `_maybe_symbolic_build` draws a first batch, an (x, y) tuple, and all-reduces it to learn its shapes; the
      collective all-reduce takes one tensor, not a tuple ("Attempt to convert a value (PerReplica...) to a
      Tensor"). Drawing it also starts an epoch of the dataset that is then thrown away, so a dataset that
      reshuffles each epoch trains on another order than in one process. The shapes and dtypes, all the build
      needs, are taken from the dataset's `element_spec` instead (under any tf.distribute strategy).
    - `reduce_per_replica` averages the step's logs with `axis=0`, and they are scalars ("Invalid reduction
      dimension 0 for input with 0 dimensions"). They are averaged over replicas with `axis=None` instead.
    Everything else (the train step, the gradient all-reduce, metrics, callbacks) is Keras' own; the tests check that
    two workers reach the same weights as one process on the same global batches. Applied once, and only where
    Keras has those functions (a Keras that renamed them has changed this code and may well have fixed it)."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    trainer = getattr(tf_trainer, "TensorFlowTrainer", None)
    needed = ("reduce_per_replica", "_collective_all_reduce_multi_worker", "_is_per_replica_instance")
    if getattr(trainer, "_imgclf_distributed_fit_fixed", False) or not all(hasattr(tf_trainer, name) for name in needed) or not hasattr(trainer, "_maybe_symbolic_build"):
        return
    keras_build = trainer._maybe_symbolic_build
    keras_reduce = tf_trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):  # noqa: ANN001, ANN202 - Keras' signature
        if iterator is None or self._distribute_strategy is None:
            return keras_build(self, iterator, data_batch)
        with self.distribute_strategy.scope():  # shapes and dtypes are all the build needs
            self._symbolic_build(data_batch=iterator.data_adapter.get_tf_dataset().element_spec)

    def reduce_per_replica(values, strategy, reduction):  # noqa: ANN001, ANN202 - Keras' signature
        if tf_trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None) if tf_trainer._is_per_replica_instance(v) else v, values)
        return keras_reduce(values, strategy, reduction)

    trainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    trainer._imgclf_distributed_fit_fixed = True


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
