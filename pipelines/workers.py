"""Worker processes that decode and augment batches straight into shared memory, so that Albumentations runs on
every core instead of one (a thread pool shares the GIL; PyDataset's processes pickle every batch).

    pool = WorkerPool(loader, workers=4, batch_size=64)      # loader: a pipelines.batches.BatchLoader
    batch = pool(indices, seed)                                # what the tf.numpy_function calls; same result as loader(...)
    pool.close()

Each worker holds its own copy of the BatchLoader (paths, transform; the decoded-image cache is attached from
shared memory, not copied) and imports no TensorFlow. A call takes a free slot of shared memory, puts
(slot, indices, seed) on the task queue that every worker reads (the first free worker takes it: batches that
take longer, say bigger JPEGs, do not hold others up), and waits for its slot. The worker fills it with exactly
what `BatchLoader.__call__` returns for those arguments, so results do not depend on which worker ran or in what
order. Errors come back as their message and are raised again in the caller as `DataError`. Workers ignore Ctrl-C
(the parent shuts them down) and exit on their own when the parent process disappears (they poll its pid).
`close()`, also run at exit and when the pool is garbage-collected, stops and joins them and frees the memory.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import traceback
import weakref
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from pipelines.errors import DataError

_POLL_S = 0.5  # how often an idle worker checks that its parent is still alive


def _attach(name: str, shape: tuple[int, ...]) -> tuple[shared_memory.SharedMemory, np.ndarray]:
    shm = shared_memory.SharedMemory(name=name)
    return shm, np.ndarray(shape, dtype=np.uint8, buffer=shm.buf)


def _worker_main(
    loader: Any, cache_spec: tuple[str, tuple[int, ...]] | None, slot_names: list[str], slot_shape: tuple[int, ...], tasks: Any, results: Any, parent: int
) -> None:
    """Loop: (slot, indices, seed) -> fill the slot with loader(indices, seed) -> report (slot, error or None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole process group: the parent decides
    import cv2

    cv2.setNumThreads(1)  # one process per core already: OpenCV's own threads would only contend
    handles = []
    if cache_spec is not None:
        shm, loader.cache = _attach(*cache_spec)
        handles.append(shm)
    slots = []
    for name in slot_names:
        shm, view = _attach(name, slot_shape)
        handles.append(shm)
        slots.append(view)
    try:
        while True:
            try:
                task = tasks.get(timeout=_POLL_S)
            except queue.Empty:
                if os.getppid() != parent:  # the parent died without closing us: do not linger as an orphan
                    return
                continue
            if task is None:
                return
            slot, indices, seed = task
            try:
                loader(indices, seed, out=slots[slot])  # straight into shared memory
                results.put((slot, None))
            except Exception as exc:  # reported to the caller, which raises it where the user sees it
                message = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
                results.put((slot, message))
    finally:
        for view in slots:
            del view
        slots.clear()
        loader.cache = None
        for shm in handles:
            shm.close()


class WorkerPool:
    """`workers` processes running `loader` into `slots` shared-memory batch buffers (default 2 per worker)."""

    def __init__(self, loader: Any, workers: int, batch_size: int, slots: int | None = None, start_method: str = "spawn"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.batch_size = int(batch_size)
        self.shape = (self.batch_size, *loader.image_size, 3)
        nbytes = int(np.prod(self.shape))
        self._shms: list[shared_memory.SharedMemory] = []
        cache_spec = None
        if loader.cache is not None:  # the decoded-image cache goes to shared memory once, not to every worker
            cache = np.ascontiguousarray(loader.cache, dtype=np.uint8)
            shm = shared_memory.SharedMemory(create=True, size=max(cache.nbytes, 1))
            np.ndarray(cache.shape, dtype=np.uint8, buffer=shm.buf)[...] = cache
            self._shms.append(shm)
            cache_spec = (shm.name, cache.shape)
        slot_count = slots or 2 * workers
        slot_shms = [shared_memory.SharedMemory(create=True, size=nbytes) for _ in range(slot_count)]
        self._shms += slot_shms
        self._views = [np.ndarray(self.shape, dtype=np.uint8, buffer=s.buf) for s in slot_shms]  # cleared before the memory is freed

        context = mp.get_context(start_method)  # spawn: never fork a process that runs TensorFlow threads
        self._tasks = context.Queue()
        self._results = context.SimpleQueue()  # no feeder thread: lower latency per batch
        worker_loader = loader.without_cache() if loader.cache is not None else loader
        args = (worker_loader, cache_spec, [s.name for s in slot_shms], self.shape, self._tasks, self._results, os.getpid())
        self._processes = [context.Process(target=_worker_main, args=args, daemon=True, name=f"imgclf-worker-{i}") for i in range(workers)]
        try:
            for process in self._processes:
                process.start()  # spawn pickles the loader here: a transform that cannot be pickled fails now
        except Exception as exc:
            for process in self._processes:
                if process.is_alive():
                    process.terminate()
            self._views.clear()
            for shm in self._shms:
                shm.close()
                shm.unlink()
            raise DataError(
                f"the augmentation pipeline cannot be sent to worker processes ({type(exc).__name__}: {exc}). "
                "Fix: use transforms that Albumentations can save (no Lambda), or set data.workers=0."
            ) from None

        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(slot_count):
            self._free.put(slot)
        self._done = [threading.Event() for _ in range(slot_count)]
        self._errors: list[str | None] = [None] * slot_count
        self._closed = False
        self._dispatcher = threading.Thread(
            target=WorkerPool._dispatch, args=(self._results, self._done, self._errors), name="imgclf-worker-results", daemon=True
        )
        self._dispatcher.start()
        self._finalizer = weakref.finalize(self, WorkerPool._shutdown, self._processes, self._tasks, self._results, self._shms, self._views, self._done)

    @property
    def processes(self) -> list[Any]:
        return list(self._processes)

    @staticmethod
    def _dispatch(results: Any, done: list[threading.Event], errors: list[str | None]) -> None:
        """Route each finished slot to the call waiting for it (a thread of the parent; holds no reference to
        the pool, so that dropping the pool stops the workers)."""
        while True:
            try:
                item = results.get()
            except Exception:  # the queue was closed under us: the pool or the interpreter is shutting down
                return
            if item is None:
                return
            slot, error = item
            errors[slot] = error
            done[slot].set()

    def __call__(self, indices: np.ndarray, seed: np.ndarray | int) -> np.ndarray:
        """The batch `loader(indices, seed)` would return, computed by a worker process."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        slot = self._free.get()
        try:
            self._done[slot].clear()
            self._tasks.put((slot, np.asarray(indices, dtype=np.int64), int(seed)))
            while not self._done[slot].wait(timeout=1.0):
                if self._closed:
                    raise RuntimeError("the worker pool was closed while a batch was in flight")
                if not any(p.is_alive() for p in self._processes):
                    raise RuntimeError("every worker process has died (out of memory?); see the log above")
            if self._errors[slot] is not None:
                raise DataError(self._errors[slot])
            return self._views[slot][: len(indices)].copy()  # TensorFlow keeps the array: the slot is reused next
        finally:
            self._free.put(slot)

    def close(self) -> None:
        """Stop and join the workers, free the shared memory. Safe to call twice."""
        self._closed = True
        self._finalizer()

    @staticmethod
    def _shutdown(
        processes: list[Any], tasks: Any, results: Any, shms: list[shared_memory.SharedMemory], views: list[np.ndarray], done: list[threading.Event]
    ) -> None:
        for _ in processes:
            try:
                tasks.put(None)
            except (ValueError, OSError):
                pass
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        try:
            results.put(None)  # ends the dispatcher thread
        except (ValueError, OSError):
            pass
        for event in done:
            event.set()
        views.clear()  # no array may point into the memory once it is closed
        for shm in shms:
            shm.close()
            try:
                shm.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
