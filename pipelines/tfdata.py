"""tf.data pipeline: image indices -> decode + Albumentations, one Python call for several batches -> re-split
into batches in TensorFlow -> prefetch.

Images stay uint8 up to the model (which normalizes them): float32 batches cost 1.2-1.6x throughput here.
A `tf.numpy_function` call costs the training process about 0.5 ms whatever it does, as much as a third of the
work of a 64-image batch at 32 px; small batches therefore travel several to a call (`batches_per_call`).
Augmentation is deterministic given the seed: each batch carries its own seed, drawn from a seeded
`tf.data.Dataset.random` that changes every epoch, and each thread (or worker process, `workers` > 0)
owns its copy of the transform; so batches are the same whatever the batches per call, threads or processes.
The per-batch work itself lives in pipelines.batches (no TensorFlow).
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable

import albumentations as A
import numpy as np
import tensorflow as tf

from pipelines.batches import BatchLoader, Size, decode_all, resize
from pipelines.errors import UserError
from pipelines.sources import ImageSet
from pipelines.workers import WorkerPool, usable_cores

__all__ = ["BatchLoader", "Pipeline", "Size", "decode_all", "default_batches_per_call", "make_dataset", "resize"]

CALL_BYTES = 1 << 21  # about the images one call returns: 2 MiB is ~10 batches of 64 at 32 px, one at 128 px and up
MAX_BATCHES_PER_CALL = 16


def default_batches_per_call(batch_size: int, image_size: Size, num_images: int, parallel: int) -> int:
    """Batches one Python call makes: enough that the call's fixed cost is small against its work (about
    CALL_BYTES of images), few enough that an epoch still has 4 calls for each one running at once (`parallel`)."""
    batch_bytes = batch_size * int(image_size[0]) * int(image_size[1]) * 3
    by_size = max(1, CALL_BYTES // batch_bytes)
    by_parallelism = max(1, -(-num_images // batch_size) // (4 * max(1, parallel)))
    return int(min(by_size, by_parallelism, MAX_BATCHES_PER_CALL))


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
    batches_per_call: int | None = None,
) -> Pipeline:
    """A `Pipeline` whose `dataset` gives batches of (uint8 images [B, H, W, 3], labels), or images alone for an
    unlabeled set.

    `cache` is an (N, H, W, 3) array from `decode_all` (decoding then happens once). Element order and
    augmentation are a function of `seed` and the epoch alone, whatever the thread or process scheduling.
    `workers` > 0 decodes and augments in that many processes (pipelines.workers), writing into shared memory:
    the same batches, on every core. The processes live as long as the returned Pipeline, which must be kept while
    its dataset is read, and stop when it is closed (`with`, or `close()`) or garbage-collected.
    `batches_per_call` (default: `default_batches_per_call`) changes the speed only, never the batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cache is not None and len(cache) != len(images):
        raise ValueError(f"cache holds {len(cache)} images but the set has {len(images)}")
    height, width = int(image_size[0]), int(image_size[1])
    parallel = (workers * 2 if workers else tf.data.AUTOTUNE) if num_parallel_calls is None else num_parallel_calls
    if batches_per_call is None:
        in_flight = max(parallel if parallel > 0 else 0, workers * 2, usable_cores())
        batches_per_call = default_batches_per_call(batch_size, (height, width), len(images), in_flight)
    if batches_per_call < 1:
        raise ValueError(f"batches_per_call must be >= 1, got {batches_per_call}")
    loader = BatchLoader(images.paths, (height, width), transform, cache)
    pool = None
    if workers > 0:
        pool = WorkerPool(loader, workers, batch_size, batches_per_call)
        pool_ref = weakref.ref(pool)  # the dataset owns the pool; the traced function must not keep it alive

        def produce(call_indices: np.ndarray, call_seeds: np.ndarray) -> np.ndarray:
            live = pool_ref()
            if live is None:
                raise RuntimeError("the dataset's worker pool is gone: keep a reference to the dataset while iterating")
            return live(call_indices, call_seeds)
    else:

        def produce(call_indices: np.ndarray, call_seeds: np.ndarray) -> np.ndarray:
            return loader.batches(call_indices, call_seeds, batch_size)

    calls = _BatchCalls(produce, (height, width))

    indices = tf.data.Dataset.range(len(images))
    if shuffle:
        indices = indices.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if drop_remainder:  # the images of the short last batch are never decoded
        indices = indices.take(len(images) // batch_size * batch_size)
    indices = indices.batch(batch_size * batches_per_call)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(batches_per_call)  # batch k: seed k
    labels = None if images.labels is None else tf.constant(images.labels)

    def load(call_indices: tf.Tensor, call_seeds: tf.Tensor):
        x = tf.numpy_function(calls, [call_indices, call_seeds], tf.uint8, stateful=False, name="load_and_augment")
        x.set_shape([batch_size if drop_remainder and batches_per_call == 1 else None, height, width, 3])
        if labels is None:
            return x
        return x, tf.gather(labels, call_indices)

    dataset = tf.data.Dataset.zip(indices, seeds).map(load, num_parallel_calls=parallel, deterministic=True)
    if batches_per_call > 1:
        dataset = dataset.rebatch(batch_size, drop_remainder=drop_remainder)  # one copy, in TensorFlow
        # rebatch leaves the length unknown: Keras would then show "?/Unknown" steps in the first epoch and warn
        # "Your input ran out of data" at the end of every fit. The number of batches is known: say it.
        batches = len(images) // batch_size if drop_remainder else -(-len(images) // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return Pipeline(dataset.prefetch(tf.data.AUTOTUNE), calls, pool)


class Pipeline:
    """A dataset made by `make_dataset` with what it owns: the batch calls behind its `tf.numpy_function` and the
    worker pool (if any). Keep it while `dataset` is read; `with pipeline:` closes it on the way out, and on an error
    first abandons it (`abandon`) and raises the UserError a batch call raised (an image deleted or damaged mid-way)
    instead of TensorFlow's error that wraps it."""

    def __init__(self, dataset: tf.data.Dataset, batch_calls: _BatchCalls, worker_pool: WorkerPool | None = None):
        self.dataset = dataset
        self.batch_calls = batch_calls
        self.worker_pool = worker_pool

    @property
    def user_error(self) -> UserError | None:
        """The first UserError a batch call raised, if any."""
        return self.batch_calls.user_error

    def abandon(self) -> None:
        """Stop a pipeline that will not be read again, typically after an error in one batch.

        tf.data reads ahead: when the error surfaces, other batch calls are in flight or queued, and each needs the
        GIL to run Python. Deleting the iterator waits for them while holding the GIL; at interpreter exit they can
        never take it, so the process hung after printing its error (measured: a truncated JPEG, `check_images:
        false`). Here they finish at once (no decoding) while we wait without the GIL, so the iterator goes cleanly."""
        self.batch_calls.settle()

    def close(self) -> None:
        """Stop the worker processes, if any (a no-op for threads)."""
        if self.worker_pool is not None:
            self.worker_pool.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.abandon()
        self.close()
        if exc is not None and not isinstance(exc, UserError) and self.user_error is not None:
            raise self.user_error from exc


class _BatchCalls:
    """The body of the pipeline's `tf.numpy_function`, counted, and stoppable: once `settle` has stopped it (the
    stream is being abandoned), a call returns a blank batch at once instead of decoding."""

    def __init__(self, produce: Callable[[np.ndarray, np.ndarray], np.ndarray], image_size: Size):
        self.produce = produce
        self.image_size = image_size
        self.stopped = False
        self.user_error: UserError | None = None  # the first one a call raised: what the user is told
        self.started = 0
        self.running = 0
        self._lock = threading.Lock()
        _LIVE_CALLS.add(self)

    def __call__(self, call_indices: np.ndarray, call_seeds: np.ndarray) -> np.ndarray:
        with self._lock:
            self.started += 1
            self.running += 1
        try:
            if self.stopped:  # only once abandoned: a batch a consumer will read is never blank
                return np.zeros((len(call_indices), *self.image_size, 3), dtype=np.uint8)
            return self.produce(call_indices, call_seeds)
        except UserError as error:
            self.user_error = self.user_error or error
            raise
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


_LIVE_CALLS: weakref.WeakSet[_BatchCalls] = weakref.WeakSet()  # the batch calls of every dataset still alive


@atexit.register
def _settle_at_exit() -> None:
    """At interpreter exit, abandon every pipeline still alive (`Pipeline.abandon`). A script that ends with an error raised
    by one batch (say, its worker process died) keeps the dataset's iterator alive in the traceback until Python
    tears its modules down, after atexit; the iterator's deletion then waits, holding the GIL, for the calls still
    in flight, which need the GIL: the process hung after printing its error (measured: 4 of 12 runs of
    test_workers' unguarded script, 4 at a time). atexit runs first, with the calls free to finish."""
    for calls in list(_LIVE_CALLS):
        calls.settle(timeout=5.0)
