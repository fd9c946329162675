"""Worker processes that decode and augment batches straight into shared memory, so that Albumentations runs on
every core instead of one (a thread pool shares the GIL; PyDataset's processes pickle every batch).

    pool = WorkerPool(loader, workers=4, batch_size=64)      # loader: a pipelines.batches.BatchLoader
    batch = pool(indices, seed)                                # what the tf.numpy_function calls; same result as loader(...)
    pool.close()

Each worker holds its own copy of the BatchLoader (paths, transform; the decoded-image cache is attached from
shared memory, not copied) and imports no TensorFlow. The pool owns `slots` batch buffers in shared memory, each
with a task record beside it (state, ticket, count, seed, indices). A call takes a free slot, writes its task
record, marks it posted and signals the `ready` semaphore; the first idle worker takes the oldest posted slot
(so a slow batch, say big JPEGs, holds no other up), fills the buffer with exactly what `BatchLoader.__call__`
returns for those arguments and signals that slot's `done` semaphore. Nothing is pickled and no pipe or helper
thread is involved per batch: the parent's cost per batch is a few semaphore operations and one copy out, which
matters at small image sizes where a batch is only milliseconds of work. Results do not depend on which worker ran
or in what order. Errors come back as their message and are raised in the caller as `DataError`.

Workers ignore Ctrl-C (the parent shuts them down) and exit on their own when the parent process disappears (they
poll its pid). `close()`, also run at exit and when the pool is garbage-collected, stops and joins them and frees
the memory. A worker that dies (killed for memory, say) makes the waiting call raise a DataError instead of waiting forever.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue
import shutil
import signal
import time
import traceback
import weakref
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from pipelines.errors import DataError

_POLL_S = 0.5  # how often an idle worker checks that its parent is still alive
_WAIT_S = 1.0  # how often a waiting call checks that the workers are still alive
_ERROR_BYTES = 4096  # room for one error message per slot
_SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory
# Task record columns (int64): state, ticket (posting order), image count, seed, then the image indices.
_STATE, _TICKET, _COUNT, _SEED, _INDICES = range(5)
_FREE, _POSTED, _TAKEN, _DONE, _FAILED = range(5)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS keeps one (Linux, containers with a CPU set),
    else every core (macOS and Windows have no `os.sched_getaffinity`)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Shared:
    """The pool's shared memory: batch buffers, task records, error messages and a stop flag, as NumPy views."""

    def __init__(self, slots: int, batch_shape: tuple[int, ...], names: list[str] | None = None):
        self.batch_shape = batch_shape
        if names is None:
            self.handles = [shared_memory.SharedMemory(create=True, size=size) for size in self._sizes(slots, batch_shape)]
        else:
            self.handles = [shared_memory.SharedMemory(name=name) for name in names]
        self.batches = np.ndarray((slots, *batch_shape), dtype=np.uint8, buffer=self.handles[0].buf)
        self.tasks = np.ndarray((slots, _INDICES + batch_shape[0]), dtype=np.int64, buffer=self.handles[1].buf)
        self.errors = np.ndarray((slots, _ERROR_BYTES), dtype=np.uint8, buffer=self.handles[2].buf)
        self.stop = np.ndarray((1,), dtype=np.int64, buffer=self.handles[3].buf)

    @staticmethod
    def nbytes(slots: int, batch_shape: tuple[int, ...]) -> int:
        return sum(_Shared._sizes(slots, batch_shape))

    @staticmethod
    def _sizes(slots: int, batch_shape: tuple[int, ...]) -> list[int]:
        return [int(np.prod(batch_shape)) * slots, 8 * slots * (_INDICES + batch_shape[0]), _ERROR_BYTES * slots, 8]

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
    loader: Any, cache_spec: tuple[str, tuple[int, ...]] | None, names: list[str], slots: int, batch_shape: tuple[int, ...],
    lock: Any, ready: Any, done: list[Any], parent: int,
) -> None:  # fmt: skip
    """Loop: wait for a posted slot -> fill its buffer with loader(indices, seed) -> mark it done or failed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole process group: the parent decides
    import cv2

    cv2.setNumThreads(1)  # one process per core already: OpenCV's own threads would only contend
    shared = _Shared(slots, batch_shape, names)
    cache = None
    if cache_spec is not None:
        cache = shared_memory.SharedMemory(name=cache_spec[0])
        loader.cache = np.ndarray(cache_spec[1], dtype=np.uint8, buffer=cache.buf)
    tasks = shared.tasks
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
            count, seed = int(tasks[slot, _COUNT]), int(tasks[slot, _SEED])
            try:
                loader(tasks[slot, _INDICES : _INDICES + count].copy(), seed, out=shared.batches[slot])  # straight into shared memory
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


def _check_shared_memory_room(needed: int) -> None:
    """Fail with the fix now rather than with SIGBUS later: writing past a full /dev/shm kills the process
    (Docker gives containers 64 MB unless told otherwise)."""
    if not os.path.isdir(_SHM_DIR):
        return  # not Linux: shared memory is not a size-limited file system there
    free = shutil.disk_usage(_SHM_DIR).free
    if needed > free:
        raise DataError(
            f"worker processes need {needed / 2**20:,.0f} MiB of shared memory but {_SHM_DIR} has {free / 2**20:,.0f} MiB free. "
            "Fix: give the machine or container more (docker run --shm-size=...), turn off data.cache, or set data.workers=0."
        )


def _check_not_bootstrapping() -> None:
    if getattr(mp.current_process(), "_inheriting", False):
        raise DataError(
            "worker processes were started while a spawned process was importing your main script. "
            "Fix: put the script's top-level code under `if __name__ == '__main__':` (multiprocessing's spawn re-imports it), or set data.workers=0."
        )


class WorkerPool:
    """`workers` processes running `loader` into `slots` shared-memory batch buffers (default 2 per worker)."""

    def __init__(self, loader: Any, workers: int, batch_size: int, slots: int | None = None, start_method: str = "spawn"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        _check_not_bootstrapping()
        self.batch_size = int(batch_size)
        self.shape = (self.batch_size, *loader.image_size, 3)
        slot_count = slots or 2 * workers
        _check_shared_memory_room(_Shared.nbytes(slot_count, self.shape) + (0 if loader.cache is None else int(loader.cache.nbytes)))
        self._cache_shm: shared_memory.SharedMemory | None = None
        cache_spec = None
        if loader.cache is not None:  # the decoded-image cache goes to shared memory once, not to every worker
            cache = np.ascontiguousarray(loader.cache, dtype=np.uint8)
            self._cache_shm = shared_memory.SharedMemory(create=True, size=max(cache.nbytes, 1))
            np.ndarray(cache.shape, dtype=np.uint8, buffer=self._cache_shm.buf)[...] = cache
            cache_spec = (self._cache_shm.name, cache.shape)
        self._shared = _Shared(slot_count, self.shape)
        self._shared.tasks[:, _STATE] = _FREE
        self._shared.stop[0] = 0

        context = mp.get_context(start_method)  # spawn: never fork a process that runs TensorFlow threads
        self._lock = context.Lock()
        self._ready = context.Semaphore(0)
        self._done = [context.Semaphore(0) for _ in range(slot_count)]
        worker_loader = loader.without_cache() if loader.cache is not None else loader
        args = (worker_loader, cache_spec, self._shared.names, slot_count, self.shape, self._lock, self._ready, self._done, os.getpid())
        self._processes = [context.Process(target=_worker_main, args=args, daemon=True, name=f"imgclf-worker-{i}") for i in range(workers)]
        self._closed = False
        self._finalizer = weakref.finalize(self, WorkerPool._shutdown, self._processes, self._ready, self._done, self._shared, self._cache_shm)
        try:
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

    def __call__(self, indices: np.ndarray, seed: np.ndarray | int) -> np.ndarray:
        """The batch `loader(indices, seed)` would return, computed by a worker process."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        if self._broken is not None:
            raise DataError(self._broken)
        now = time.monotonic()
        if now - self._last_check > _WAIT_S:  # once a second, not per call: a check costs a system call per worker
            self._last_check = now
            self._check_workers()
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) > self.batch_size:
            raise ValueError(f"{len(indices)} images requested but the pool's batches hold {self.batch_size}")
        slot = self._free.get()
        shared = self._shared
        tasks, batches, errors = shared.tasks, shared.batches, shared.errors  # local views: the memory stays mapped even if close() runs now
        finished = False
        try:
            if tasks is None or batches is None or errors is None:
                raise RuntimeError("the worker pool is closed")
            record = tasks[slot]
            record[_COUNT], record[_SEED] = len(indices), int(seed)
            record[_INDICES : _INDICES + len(indices)] = indices
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
