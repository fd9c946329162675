"""Worker processes that decode and augment batches straight into shared memory, so that Albumentations runs on
every core instead of one (a thread pool shares the GIL; PyDataset's processes pickle every batch).

    pool = WorkerPool(loader, workers=4, batch_size=64, batches_per_call=2)   # loader: a pipelines.batches.BatchLoader
    batches = pool(indices, seeds)   # what the tf.numpy_function calls; the same as loader.batches(indices, seeds, 64)
    pool.close()

Each worker holds its own copy of the BatchLoader (paths, transform) and imports no TensorFlow. The decoded-image
cache is attached from shared memory: where it was decoded straight into a `pipelines.memory.shared_array` (what
app.data does when workers will read it) nothing is copied; a private array is copied into shared memory once.
The pool owns `slots` buffers in shared memory, each for one call's batches (`batches_per_call` of them), with a
task record beside it (state, ticket, count, seeds, indices). A call takes a free slot, writes its task record,
marks it posted and signals the `ready` semaphore; the first idle worker takes the oldest posted slot (so a slow
call, say big JPEGs, holds no other up), fills the buffer with exactly what `BatchLoader.batches` returns for those
arguments and signals that slot's `done` semaphore. Nothing is pickled and no pipe or helper
thread is involved per batch: the parent's cost per batch is a few semaphore operations and one copy out, which
matters at small image sizes where a batch is only milliseconds of work. Results do not depend on which worker ran
or in what order. Errors come back as their message and are raised in the caller as `DataError`.

Workers ignore Ctrl-C (the parent shuts them down) and exit on their own when the parent process disappears (they
poll its pid). `close()`, also run at exit and when the pool is garbage-collected, stops and joins them and frees
the memory. A worker that dies (killed for memory, say) makes the waiting call raise a DataError instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Iterator
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from pipelines.errors import DataError
from pipelines.memory import check_shared_memory_room, shared_block

_POLL_S = 0.5  # how often an idle worker checks that its parent is still alive
_WAIT_S = 1.0  # how often a waiting call checks that the workers are still alive
_ERROR_BYTES = 4096  # room for one error message per slot
# Task record columns (int64): state, ticket (posting order), image count, then one seed per batch, then the image indices.
_STATE, _TICKET, _COUNT, _SEEDS = range(4)
_FREE, _POSTED, _TAKEN, _DONE, _FAILED = range(5)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS keeps one (Linux, containers with a CPU set),
    else every core (macOS and Windows have no `os.sched_getaffinity`)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


AUTO_MIN_IMAGES = 2000  # below this, starting worker processes (about 1 s: pool and first batch) costs more than it saves
THREADS_FROM_FILES_MIN_SIZE = 160  # from files at this input size and up, threads were as fast (benchmarks/pipeline.py)


def auto_workers(num_images: int, image_size: int, cached: bool, cores: int | None = None) -> tuple[int, str]:
    """Worker processes for a training set when the user did not say (0: TensorFlow's threads), and why.

    Python holds the GIL for a roughly fixed time per image (Albumentations' per-transform code, Pillow's header
    parsing), while decoding and OpenCV's pixel work release it. Small images are mostly the fixed part, so threads
    queue on the GIL and processes win (1.4x at 32 px from files, 2.4x from the cache, on 2 cores). From the
    cache, processes won at 224 px too (1.2x). Only large inputs decoded from files leave the GIL free enough that
    threads match processes without their copies through shared memory (threads 1.07x at 224 px)."""
    cores = usable_cores() if cores is None else cores
    if cores < 2:
        return 0, "threads: one usable core, worker processes could only add copies"
    if num_images < AUTO_MIN_IMAGES:
        return 0, f"threads: {num_images:,} images are too few to repay starting worker processes (about 1 s)"
    if cached:
        return cores, f"{cores} worker processes: from the decoded cache the work is augmentation, mostly Python that holds the GIL"
    if image_size >= THREADS_FROM_FILES_MIN_SIZE:
        return 0, f"threads: at {image_size} px from files, decoding and pixel work release the GIL, and processes would only add copies"
    return cores, f"{cores} worker processes: at {image_size} px, per-image Python (which holds the GIL) is much of the work"


class _Shared:
    """The pool's shared memory: call buffers (`call_shape`: images of one call), task records, error messages and
    a stop flag, as NumPy views."""

    def __init__(self, slots: int, call_shape: tuple[int, ...], seeds: int, names: list[str] | None = None):
        self.call_shape = call_shape
        self.indices = _SEEDS + seeds  # the column where a record's image indices start
        if names is None:
            self.handles = [shared_memory.SharedMemory(create=True, size=size) for size in self._sizes(slots, call_shape, seeds)]
        else:
            self.handles = [shared_memory.SharedMemory(name=name) for name in names]
        self.batches = np.ndarray((slots, *call_shape), dtype=np.uint8, buffer=self.handles[0].buf)
        self.tasks = np.ndarray((slots, self.indices + call_shape[0]), dtype=np.int64, buffer=self.handles[1].buf)
        self.errors = np.ndarray((slots, _ERROR_BYTES), dtype=np.uint8, buffer=self.handles[2].buf)
        self.stop = np.ndarray((1,), dtype=np.int64, buffer=self.handles[3].buf)

    @staticmethod
    def nbytes(slots: int, call_shape: tuple[int, ...], seeds: int) -> int:
        return sum(_Shared._sizes(slots, call_shape, seeds))

    @staticmethod
    def _sizes(slots: int, call_shape: tuple[int, ...], seeds: int) -> list[int]:
        return [int(np.prod(call_shape)) * slots, 8 * slots * (_SEEDS + seeds + call_shape[0]), _ERROR_BYTES * slots, 8]

    @property
    def names(self) -> list[str]:
        return [handle.name for handle in self.handles]

    def set_error(self, slot: int, message: str) -> None:
        data = message.encode("utf-8", "replace")[: _ERROR_BYTES - 1]
        self.errors[slot, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.errors[slot, len(data)] = 0

    @staticmethod
    def read_error(row: np.ndarray) -> str:
        raw = row.tobytes()
        return raw[: raw.index(0) if 0 in raw else len(raw)].decode("utf-8", "replace")

    def release(self, unlink: bool) -> None:
        """Drop the views, then close (and, in the owner, unlink) the memory; no array may point into it after."""
        self.batches = self.tasks = self.errors = self.stop = None  # type: ignore[assignment]
        for handle in self.handles:
            try:
                handle.close()
            except BufferError:  # a call still in flight holds a view: the mapping stays until it lets go
                pass
            if unlink:
                try:
                    handle.unlink()
                except FileNotFoundError:
                    pass


def _worker_main(
    loader: Any, cache_spec: tuple[str, int, tuple[int, ...]] | None, names: list[str], slots: int, call_shape: tuple[int, ...],
    batch_size: int, lock: Any, ready: Any, done: list[Any], parent: int,
) -> None:  # fmt: skip
    """Loop: wait for a posted slot -> fill its buffer with loader.batches(indices, seeds) -> mark it done or failed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole process group: the parent decides
    import cv2

    cv2.setNumThreads(1)  # one process per core already: OpenCV's own threads would only contend
    seeds = -(-call_shape[0] // batch_size)
    shared = _Shared(slots, call_shape, seeds, names)
    cache = None
    if cache_spec is not None:
        name, offset, shape = cache_spec
        cache = shared_memory.SharedMemory(name=name)
        loader.cache = np.ndarray(shape, dtype=np.uint8, buffer=cache.buf, offset=offset)
    tasks, first = shared.tasks, shared.indices
    try:
        while True:
            if not ready.acquire(timeout=_POLL_S):
                if os.getppid() != parent:  # the parent died without closing us: do not linger as an orphan
                    return
                continue
            if shared.stop[0]:
                return
            with lock:  # take the oldest posted task
                posted = np.flatnonzero(tasks[:, _STATE] == _POSTED)
                slot = int(posted[np.argmin(tasks[posted, _TICKET])])
                tasks[slot, _STATE] = _TAKEN
            count = int(tasks[slot, _COUNT])
            try:  # straight into shared memory
                loader.batches(tasks[slot, first : first + count].copy(), tasks[slot, _SEEDS:first].copy(), batch_size, out=shared.batches[slot])
                tasks[slot, _STATE] = _DONE
            except Exception as exc:  # reported to the caller, which raises it where the user sees it
                message = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
                shared.set_error(slot, message)
                tasks[slot, _STATE] = _FAILED
            done[slot].release()
    finally:
        tasks = None
        loader.cache = None
        if cache is not None:
            cache.close()
        shared.release(unlink=False)


def _check_not_bootstrapping() -> None:
    if getattr(mp.current_process(), "_inheriting", False):
        raise DataError(
            "worker processes were started while a spawned process was importing your main script. "
            "Fix: put the script's top-level code under `if __name__ == '__main__':` (multiprocessing's spawn re-imports it), or set data.workers=0."
        )


@contextlib.contextmanager
def _main_not_rerun_unless_needed(payload: Any) -> Iterator[None]:
    """Start processes in this block without re-running the parent's main script (or `python -m` module) in them,
    unless `payload` refers to it.

    spawn imports the parent's __main__ in each child, so that objects pickled from it resolve there. A worker needs
    nothing from it unless the transform was defined in it, and would only pay for the script's imports: with the
    `imgclf` command or a training script, TensorFlow's (measured: 650 MB of RSS and seconds of start-up per worker,
    again at every trial of a search). A script without the `if __name__ == "__main__":` guard then works too."""
    main = sys.modules.get("__main__")
    if main is None or b"__main__" in pickle.dumps(payload):
        yield
        return
    saved = {key: main.__dict__[key] for key in ("__spec__", "__file__") if key in main.__dict__}
    main.__spec__ = None  # spawn's preparation data: no init_main_from_name ...
    main.__dict__.pop("__file__", None)  # ... and no init_main_from_path
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class WorkerPool:
    """`workers` processes running `loader` into `slots` shared-memory buffers (default 2 per worker), each
    holding the `batches_per_call` batches of `batch_size` images that one call asks for."""

    def __init__(self, loader: Any, workers: int, batch_size: int, batches_per_call: int = 1, slots: int | None = None, start_method: str = "spawn"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if batches_per_call < 1:
            raise ValueError(f"batches_per_call must be >= 1, got {batches_per_call}")
        _check_not_bootstrapping()
        self.batch_size = int(batch_size)
        self.batches_per_call = int(batches_per_call)
        self.shape = (self.batch_size * self.batches_per_call, *loader.image_size, 3)  # one call's images
        slot_count = slots or 2 * workers
        cache_spec = shared_block(loader.cache) if loader.cache is not None else None
        copied = loader.cache is not None and cache_spec is None
        check_shared_memory_room(_Shared.nbytes(slot_count, self.shape, self.batches_per_call) + (int(loader.cache.nbytes) if copied else 0))
        self._cache_shm: shared_memory.SharedMemory | None = None
        if copied:  # a private array: copied to shared memory once, not to every worker
            cache = np.ascontiguousarray(loader.cache, dtype=np.uint8)
            self._cache_shm = shared_memory.SharedMemory(create=True, size=max(cache.nbytes, 1))
            np.ndarray(cache.shape, dtype=np.uint8, buffer=self._cache_shm.buf)[...] = cache
            cache_spec = (self._cache_shm.name, 0)
        if cache_spec is not None:
            cache_spec = (*cache_spec, tuple(loader.cache.shape))
        self._cache = None if copied else loader.cache  # a shared cache's block lives while an array on it does: keep one
        self._shared = _Shared(slot_count, self.shape, self.batches_per_call)
        self._shared.tasks[:, _STATE] = _FREE
        self._shared.stop[0] = 0

        context = mp.get_context(start_method)  # spawn: never fork a process that runs TensorFlow threads
        self._lock = context.Lock()
        self._ready = context.Semaphore(0)
        self._done = [context.Semaphore(0) for _ in range(slot_count)]
        worker_loader = loader.without_cache() if loader.cache is not None else loader
        args = (worker_loader, cache_spec, self._shared.names, slot_count, self.shape, self.batch_size, self._lock, self._ready, self._done, os.getpid())
        self._processes = [context.Process(target=_worker_main, args=args, daemon=True, name=f"imgclf-worker-{i}") for i in range(workers)]
        self._closed = False
        self._finalizer = weakref.finalize(self, WorkerPool._shutdown, self._processes, self._ready, self._done, self._shared, self._cache_shm)
        try:
            with _main_not_rerun_unless_needed(worker_loader):
                for process in self._processes:
                    process.start()  # spawn pickles the loader here: a transform that cannot be pickled fails now
        except Exception as exc:
            self.close()
            raise DataError(
                f"the augmentation pipeline cannot be sent to worker processes ({type(exc).__name__}: {exc}). "
                "Fix: use transforms that Albumentations can save (no Lambda), or set data.workers=0."
            ) from None
        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(slot_count):
            self._free.put(slot)
        self._last_check = time.monotonic()
        self._broken: str | None = None  # set once a worker died or a call was interrupted mid-batch: every later call fails
        self._tickets = itertools.count()  # next() is atomic under the GIL: calls from TensorFlow's threads stay ordered

    @property
    def processes(self) -> list[Any]:
        return list(self._processes)

    @property
    def _shms(self) -> list[shared_memory.SharedMemory]:
        """Every block of shared memory the pool owns (for tests that check it is freed)."""
        return list(self._shared.handles) + ([self._cache_shm] if self._cache_shm is not None else [])

    def __call__(self, indices: np.ndarray, seeds: np.ndarray | int) -> np.ndarray:
        """The batches `loader.batches(indices, seeds, batch_size)` would return (one seed per batch; a single seed for
        one batch), computed by a worker process."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        if self._broken is not None:
            raise DataError(self._broken)
        now = time.monotonic()
        if now - self._last_check > _WAIT_S:  # once a second, not per call: a check costs a system call per worker
            self._last_check = now
            self._check_workers()
        indices = np.asarray(indices, dtype=np.int64)
        seeds = np.atleast_1d(np.asarray(seeds, dtype=np.int64))
        if len(indices) > self.shape[0]:
            raise ValueError(f"{len(indices)} images requested but a call holds {self.batches_per_call} batch(es) of {self.batch_size}")
        if len(seeds) * self.batch_size < len(indices) or len(seeds) > self.batches_per_call:
            raise ValueError(f"{len(indices)} images in batches of {self.batch_size} need {-(-len(indices) // self.batch_size)} seed(s), got {len(seeds)}")
        slot = self._free.get()
        shared = self._shared
        tasks, batches, errors = shared.tasks, shared.batches, shared.errors  # local views: the memory stays mapped even if close() runs now
        finished = False
        try:
            if tasks is None or batches is None or errors is None:
                raise RuntimeError("the worker pool is closed")
            record = tasks[slot]
            first = shared.indices
            record[_COUNT] = len(indices)
            record[_SEEDS : _SEEDS + len(seeds)] = seeds
            record[first : first + len(indices)] = indices
            while not self._lock.acquire(timeout=_WAIT_S):  # a worker killed while holding it would hold it forever
                self._check_workers()
            try:
                record[_TICKET] = next(self._tickets)
                record[_STATE] = _POSTED
            finally:
                self._lock.release()
            self._ready.release()
            while not self._done[slot].acquire(timeout=_WAIT_S):
                self._check_workers()
            finished = True
            if self._closed:
                raise RuntimeError("the worker pool was closed while a batch was in flight")
            state = int(record[_STATE])
            record[_STATE] = _FREE
            if state == _FAILED:
                raise DataError(_Shared.read_error(errors[slot]))
            return batches[slot, : len(indices)].copy()  # TensorFlow keeps the array: the slot is reused next
        finally:
            if finished or tasks is None:
                self._free.put(slot)
            elif self._broken is None:  # interrupted while a worker may still write this slot: it cannot be handed out again
                self._broken = "the worker pool was interrupted while a batch was in flight. Fix: create a new dataset (or pool)."

    def _check_workers(self) -> None:
        if self._closed:
            raise RuntimeError("the worker pool was closed while a batch was in flight")
        for process in self._processes:
            if process.exitcode is not None:  # a worker only exits on close(): this one was killed or crashed
                self._broken = (
                    f"worker process {process.name} (pid {process.pid}) died with exit code {process.exitcode} "
                    "(a negative code is the signal that killed it, -9 often means out of memory); see the log above. "
                    "Fix: fewer data.workers or a smaller batch, or data.workers=0."
                )
                raise DataError(self._broken)

    def close(self) -> None:
        """Stop and join the workers, free the shared memory. Safe to call twice."""
        self._closed = True
        self._finalizer()

    @staticmethod
    def _shutdown(processes: list[Any], ready: Any, done: list[Any], shared: _Shared, cache_shm: shared_memory.SharedMemory | None) -> None:
        # A static method holding no reference to the pool, so that dropping the pool (or its dataset) stops the workers.
        shared.stop[0] = 1
        for _ in processes:
            ready.release()
        for process in processes:
            if process.pid is None:  # never started
                continue
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for semaphore in done:  # wakes any call still waiting; it sees the pool closed
            semaphore.release()
        shared.release(unlink=True)
        if cache_shm is not None:
            cache_shm.close()
            try:
                cache_shm.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
