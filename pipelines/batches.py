"""Batches as NumPy: decode + resize (the in-memory cache) and `BatchLoader`, the per-batch work of the pipeline.

No TensorFlow here: worker processes (pipelines.workers) import this module, and stay light and quick to start.
"""

from __future__ import annotations

import copy
import os
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import pipelines  # noqa: F401

# isort: split

import albumentations as A
import cv2

from pipelines.errors import DataError, ImageReadError
from pipelines.images import ImageCheck, read_image
from pipelines.progress import progress

Size = tuple[int, int]


def resize(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize to (height, width) with area interpolation (the right filter for shrinking)."""
    if image.shape[:2] == tuple(size):
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def decode_hint(size: Size) -> int:
    """The smallest side a JPEG is decoded at before resizing to `size`: twice the model's input, so that the area
    filter (or an augmentation's crop) starts from more pixels than it keeps. One rule for the cache and for files,
    so that the same image gives the same pixels either way."""
    return 2 * max(size)


def decode_all(paths: Sequence[str], size: Size, workers: int | None = None, out: np.ndarray | None = None) -> tuple[np.ndarray, ImageCheck]:
    """Decode and resize every image into one (N, H, W, 3) uint8 array (the in-memory cache): `out` when given (say
    a `pipelines.memory.shared_array`, so that worker processes read it without a copy), else a new array.

    Unreadable files are reported in the returned ImageCheck (their rows stay black), not raised.
    """
    shape = (len(paths), size[0], size[1], 3)
    if out is None:
        out = np.zeros(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out is {out.dtype} {out.shape}, expected uint8 {shape}")
    hint = decode_hint(size)

    def fill(i: int) -> str | None:
        try:
            out[i] = resize(read_image(paths[i], hint), size)
        except ImageReadError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 1)) as pool:
        results = list(progress(pool.map(fill, range(len(paths))), len(paths), "decoding images into the cache"))
    ok = np.array([r is None for r in results], dtype=bool)
    return out, ImageCheck(ok=ok, errors=tuple(r for r in results if r is not None))


def keep_rows(array: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`array[keep]` (a boolean mask over rows) without a second copy of the array: the kept rows move up in place
    and the result is a view of the first ones (a cache of 7 GB stays 7 GB when a few images are skipped)."""
    kept = np.flatnonzero(keep)
    for row, source in enumerate(kept):
        if row != source:
            array[row] = array[source]
    return array[: len(kept)]


def seed_batch(transform: A.BaseCompose, seed: int) -> None:
    """Start `transform` on the random stream of `seed`: one NumPy and one Python generator, shared by every transform
    in turn, as Albumentations itself shares them when a Compose has no seed.

    Not `set_random_seed`: it gives each transform its own copy of the same stream, so transforms that draw alike
    decide alike. With the `medium` preset, flip, affine and brightness were applied together or not at all on the
    first image of every batch, and two flips of p=0.5 on every image (tests/test_tfdata.py). One shared stream is
    also cheaper: two generators per batch instead of two per transform (12 against 58 us for `medium`)."""
    seed %= 2**32
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


class BatchLoader:
    """Callable (indices, seed) -> uint8 batch; `batches` makes several in one call: the body of the pipeline's
    `tf.numpy_function`."""

    def __init__(self, paths: Sequence[str], image_size: Size, transform: A.BaseCompose | None, cache: np.ndarray | None = None):
        self.paths = list(paths)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.transform = transform
        self.cache = cache
        self._local = threading.local()

    def without_cache(self) -> BatchLoader:
        """The same loader without its cache array (worker processes attach the cache from shared memory)."""
        return BatchLoader(self.paths, self.image_size, self.transform, None)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_local")  # thread-local copies of the transform stay with their process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _thread_transform(self) -> A.BaseCompose | None:
        # Albumentations transforms hold their random state: one copy per thread keeps parallel batches independent.
        if self.transform is None:
            return None
        if not hasattr(self._local, "transform"):
            self._local.transform = copy.deepcopy(self.transform)
        return self._local.transform

    def load(self, index: int) -> np.ndarray:
        """One decoded (or cached) image, before augmentation."""
        if self.cache is not None:
            return self.cache[index]
        return read_image(self.paths[index], decode_hint(self.image_size))

    def __call__(self, indices: np.ndarray, seed: np.ndarray | int, out: np.ndarray | None = None) -> np.ndarray:
        """The batch for these image indices and this seed; written into `out[:len(indices)]` when given."""
        transform = self._thread_transform()
        if transform is not None:
            seed_batch(transform, int(seed))
        batch = np.empty((len(indices), *self.image_size, 3), dtype=np.uint8) if out is None else out[: len(indices)]
        for k, index in enumerate(indices):
            image = self.load(int(index))
            image = transform(image=image)["image"] if transform is not None else resize(image, self.image_size)
            if image.shape != batch.shape[1:] or image.dtype != np.uint8:
                raise DataError(
                    f"augmentation returned {image.dtype} {image.shape} for {self.paths[int(index)]}, expected uint8 {batch.shape[1:]}. "
                    "Fix: end the augmentation pipeline at the model's input size and keep uint8 output."
                )
            batch[k] = image
        return batch

    def batches(self, indices: np.ndarray, seeds: np.ndarray | int, batch_size: int, out: np.ndarray | None = None) -> np.ndarray:
        """Consecutive batches in one call: rows [k * batch_size, (k + 1) * batch_size) are `self(those indices,
        seeds[k])`, so the images do not depend on how many batches a call carries (pipelines.tfdata amortizes its
        per-call cost this way)."""
        seeds = np.atleast_1d(np.asarray(seeds))
        count = len(indices)
        if len(seeds) * batch_size < count:
            raise ValueError(f"{count} images in batches of {batch_size} need {-(-count // batch_size)} seeds, got {len(seeds)}")
        out = np.empty((count, *self.image_size, 3), dtype=np.uint8) if out is None else out[:count]
        for k, start in enumerate(range(0, count, batch_size)):
            self(indices[start : start + batch_size], seeds[k], out=out[start : start + batch_size])
        return out
