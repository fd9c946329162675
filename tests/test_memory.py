"""The decoded cache: checked against the memory available, held once with worker processes, compacted in place."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest

import pipelines.memory as memory
from app.config import DataConfig
from app.data import prepare
from pipelines.augment import build_transform
from pipelines.batches import keep_rows
from pipelines.errors import DataError
from pipelines.sources import from_folder
from pipelines.tfdata import make_dataset


def test_a_cache_larger_than_the_memory_available_is_one_line_before_decoding(folder_dataset: Path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: (1 << 30) + 100_000)  # 1 GiB of headroom + 100 kB
    import app.data

    decoded, decode_all = [], app.data.decode_all
    monkeypatch.setattr(app.data, "decode_all", lambda *a, **k: decoded.append(a) or decode_all(*a, **k))
    images = from_folder(folder_dataset)  # 24 images x 64 x 64 x 3 = 295 kB > 100 kB
    with pytest.raises(DataError, match=r"data.cache \(24 images at 64 px, decoded\) needs 0.3 MiB of memory but 1.0 GiB is available.*Fix: data.cache: false"):
        prepare(images, DataConfig(cache=True, image_size=64))
    assert not decoded
    cached, cache = prepare(images, DataConfig(cache=True, image_size=32))  # 74 kB fits
    assert cache is not None and cache.shape == (24, 32, 32, 3) and len(decoded) == 1


def test_a_shared_cache_is_read_by_the_workers_without_a_copy(folder_dataset: Path):
    images = from_folder(folder_dataset)
    kept, shared = prepare(images, DataConfig(cache=True, image_size=32), shared=True)
    _, private = prepare(images, DataConfig(cache=True, image_size=32))
    block = memory.shared_block(shared)
    assert block is not None and block[1] == 0  # the whole block, from its start
    assert memory.shared_block(private) is None
    np.testing.assert_array_equal(shared, private)
    transform = build_transform("heavy", (32, 32))
    reference = make_dataset(kept, (32, 32), 5, transform=transform, shuffle=True, seed=4, cache=private)
    fast = make_dataset(kept, (32, 32), 5, transform=transform, shuffle=True, seed=4, cache=shared, workers=2)
    try:
        assert fast.worker_pool._cache_shm is None  # attached by name: no second copy
        for (ex, ey), (gx, gy) in zip(reference.dataset, fast.dataset, strict=True):
            np.testing.assert_array_equal(gx.numpy(), ex.numpy())
            np.testing.assert_array_equal(gy.numpy(), ey.numpy())
    finally:
        fast.worker_pool.close()
    name = memory.shared_block(shared)[0]
    del shared, fast
    gc.collect()
    assert not os.path.exists(f"{memory.SHM_DIR}/{name}")  # freed with the last view of the array


def test_skipped_images_leave_the_cache_compacted_in_place(folder_dataset: Path):
    images = from_folder(folder_dataset)
    Path(images.paths[3]).write_bytes(b"not an image")
    Path(images.paths[10]).write_bytes(b"")
    kept, cache = prepare(images, DataConfig(cache=True, image_size=16, skip_bad_images=True), shared=True)
    assert len(kept) == len(cache) == 22
    assert memory.shared_block(cache) is not None  # a view of the one block, not a copy
    _, check = prepare(kept, DataConfig(cache=True, image_size=16))
    np.testing.assert_array_equal(cache, check)  # row k is still the k-th kept image


def test_keep_rows_moves_rows_up_without_a_copy():
    array = np.arange(6 * 2).reshape(6, 2)
    kept = keep_rows(array, np.array([False, True, True, False, False, True]))
    assert np.shares_memory(kept, array)
    np.testing.assert_array_equal(kept, [[2, 3], [4, 5], [10, 11]])
