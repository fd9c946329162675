"""tf.data pipeline: image indices -> batch -> decode + Albumentations (one Python call per batch) -> prefetch.

Images stay uint8 up to the model (which normalizes them): float32 batches cost 1.2-1.6x throughput here.
Augmentation is deterministic given the seed: each batch carries its own seed, drawn from a seeded
`tf.data.Dataset.random` that changes every epoch, and each thread (or worker process, `workers` > 0)
owns its copy of the transform. The per-batch work itself lives in pipelines.batches (no TensorFlow).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

import albumentations as A
import numpy as np
import tensorflow as tf

from pipelines.batches import BatchLoader, Size, decode_all, resize
from pipelines.sources import ImageSet

__all__ = ["BatchLoader", "Size", "abandon_dataset", "decode_all", "make_dataset", "resize"]


def make_dataset(
    images: ImageSet,
    image_size: Size,
    batch_size: int,
    *,
    transform: A.BaseCompose | None = None,
    shuffle: bool = False,
    seed: int = 0,
    cache: np.ndarray | None = None,
    drop_remainder: bool = False,
    num_parallel_calls: int | None = None,
    workers: int = 0,
) -> tf.data.Dataset:
    """Batches of (uint8 images [B, H, W, 3], labels), or images alone for an unlabeled set.

    `cache` is an (N, H, W, 3) array from `decode_all` (decoding then happens once). Element order and
    augmentation are a function of `seed` and the epoch alone, whatever the thread or process scheduling.
    `workers` > 0 decodes and augments in that many processes (pipelines.workers), writing into shared memory:
    the same batches, on every core. The processes live as long as the returned dataset (and any dataset
    derived from it) and stop when it is garbage-collected; `dataset.worker_pool.close()` stops them at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cache is not None and len(cache) != len(images):
        raise ValueError(f"cache holds {len(cache)} images but the set has {len(images)}")
    height, width = int(image_size[0]), int(image_size[1])
    loader = BatchLoader(images.paths, (height, width), transform, cache)
    pool = None
    if workers > 0:
        from pipelines.workers import WorkerPool

        pool = WorkerPool(loader, workers, batch_size)
        pool_ref = weakref.ref(pool)  # the dataset owns the pool; the traced function must not keep it alive

        def produce(batch_indices: np.ndarray, batch_seed: np.ndarray) -> np.ndarray:
            live = pool_ref()
            if live is None:
                raise RuntimeError("the dataset's worker pool is gone: keep a reference to the dataset while iterating")
            return live(batch_indices, batch_seed)
    else:
        produce = loader
    calls = _BatchCalls(produce, (height, width))
    parallel = (workers * 2 if workers else tf.data.AUTOTUNE) if num_parallel_calls is None else num_parallel_calls

    indices = tf.data.Dataset.range(len(images))
    if shuffle:
        indices = indices.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size, drop_remainder=drop_remainder)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    labels = None if images.labels is None else tf.constant(images.labels)

    def load(batch_indices: tf.Tensor, batch_seed: tf.Tensor):
        x = tf.numpy_function(calls, [batch_indices, batch_seed], tf.uint8, stateful=False, name="load_and_augment")
        x.set_shape([batch_size if drop_remainder else None, height, width, 3])
        if labels is None:
            return x
        return x, tf.gather(labels, batch_indices)

    dataset = tf.data.Dataset.zip(indices, seeds).map(load, num_parallel_calls=parallel, deterministic=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    if pool is not None:
        dataset.worker_pool = pool
    dataset.batch_calls = calls
    return dataset


class _BatchCalls:
    """The body of the pipeline's `tf.numpy_function`, counted, and stoppable: once `settle` has stopped it (the
    stream is being abandoned), a call returns a blank batch at once instead of decoding."""

    def __init__(self, produce: Callable[[np.ndarray, np.ndarray], np.ndarray], image_size: Size):
        self.produce = produce
        self.image_size = image_size
        self.stopped = False
        self.started = 0
        self.running = 0
        self._lock = threading.Lock()

    def __call__(self, batch_indices: np.ndarray, batch_seed: np.ndarray) -> np.ndarray:
        with self._lock:
            self.started += 1
            self.running += 1
        try:
            if self.stopped:  # only once abandoned: a batch a consumer will read is never blank
                return np.zeros((len(batch_indices), *self.image_size, 3), dtype=np.uint8)
            return self.produce(batch_indices, batch_seed)
        finally:
            with self._lock:
                self.running -= 1

    def settle(self, quiet: float = 0.1, timeout: float = 30.0) -> None:
        """Stop, then sleep (which frees the GIL for the calls tf.data has in flight) until none runs and none has
        started for `quiet` seconds: tf.data's read-ahead is bounded, so the calls it made end quickly."""
        self.stopped = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.started
            time.sleep(quiet)
            if self.started == seen and self.running == 0:
                return


def abandon_dataset(dataset: tf.data.Dataset) -> None:
    """Stop a dataset made by `make_dataset` that will not be read again, typically after an error in one batch.

    tf.data reads ahead: when the error surfaces, other batch calls are in flight or queued, and each needs the GIL
    to run Python. Deleting the iterator waits for them while holding the GIL; at interpreter exit they can never
    take it, so the process hung after printing its error (measured: a truncated JPEG, `check_images: false`).
    Here they finish at once (no decoding) while we wait without the GIL, so the iterator is deleted cleanly."""
    calls = getattr(dataset, "batch_calls", None)
    if calls is not None:
        calls.settle()
