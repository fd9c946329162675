"""Where decoded images live: memory checks before a large allocation, and arrays in POSIX shared memory that
worker processes attach without a copy.

    check_room(nbytes, "the decoded-image cache of 50,000 images at 224 px", fix="...")   # DataError, one line
    cache = shared_array((n, 224, 224, 3))   # decode straight into it; a WorkerPool then attaches it by name
    shared_block(cache[:10])                  # -> (name, offset): this array lies in that block

A block lives as long as the array made on it (and any view of it): it is unlinked when the array is collected, or
at exit by Python's resource tracker.
"""

from __future__ import annotations

import os
import shutil
import weakref
from multiprocessing import shared_memory

import numpy as np

from pipelines.errors import DataError

SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory
HEADROOM = 1 << 30  # left free for TensorFlow, the model and the batches in flight

# Live blocks made by shared_array: name -> (start address, size). Entries go when their array is collected.
_blocks: dict[str, tuple[int, int]] = {}


def available_memory() -> int | None:
    """Bytes the OS can give without swapping (MemAvailable: free memory plus reclaimable caches); None where
    unknown (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


def check_room(nbytes: int, what: str, fix: str) -> None:
    """Raise one DataError line with the figures and `fix` when `nbytes` (plus 1 GiB for training itself) exceed the
    memory available now: better than the out-of-memory killer after minutes of decoding."""
    available = available_memory()
    if available is not None and nbytes + HEADROOM > available:
        raise DataError(f"{what} needs {gib(nbytes)} of memory but {gib(available)} is available (and training needs about {gib(HEADROOM)} more). Fix: {fix}")


def check_shared_memory_room(nbytes: int) -> None:
    """Fail with the fix now rather than with SIGBUS later: writing past a full /dev/shm kills the process
    (Docker gives containers 64 MB unless told otherwise)."""
    if not os.path.isdir(SHM_DIR):
        return  # not Linux: shared memory is not a size-limited file system there
    free = shutil.disk_usage(SHM_DIR).free
    if nbytes > free:
        raise DataError(
            f"worker processes need {gib(nbytes)} of shared memory but {SHM_DIR} has {gib(free)} free. "
            "Fix: give the machine or container more (docker run --shm-size=...), turn off data.cache, or set data.workers=0."
        )


def shared_array(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array in a new shared-memory block that worker processes can attach (see `shared_block`)."""
    nbytes = int(np.prod(shape))
    check_shared_memory_room(nbytes)
    block = shared_memory.SharedMemory(create=True, size=max(nbytes, 1))
    array = np.ndarray(shape, dtype=np.uint8, buffer=block.buf)
    _blocks[block.name] = (array.__array_interface__["data"][0], nbytes)
    weakref.finalize(array, _release, block)
    return array


def shared_block(array: np.ndarray) -> tuple[str, int] | None:
    """(block name, byte offset) when `array` is a C-contiguous uint8 view into a block made by `shared_array`,
    else None (a private array: a pool must copy it)."""
    if array.dtype != np.uint8 or not array.flags.c_contiguous:
        return None
    start = array.__array_interface__["data"][0]
    for name, (base, size) in list(_blocks.items()):
        if base <= start and start + array.nbytes <= base + size:
            return name, start - base
    return None


def _release(block: shared_memory.SharedMemory) -> None:
    _blocks.pop(block.name, None)
    try:
        block.close()
    except BufferError:  # a view is still being torn down: the mapping goes with it
        pass
    try:
        block.unlink()
    except FileNotFoundError:
        pass
