"""Worker processes: the same batches as the in-process path, errors surfaced, clean shutdown, one worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.augment import build_transform
from pipelines.errors import DataError
from pipelines.sources import from_folder
from pipelines.tfdata import BatchLoader, decode_all, make_dataset
from pipelines.workers import WorkerPool

REPO = Path(__file__).resolve().parents[1]


def _batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset]


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("workers", [1, 2])
def test_workers_yield_exactly_the_in_process_batches(folder_dataset: Path, cached: bool, workers: int):
    """Same seed -> bit-identical augmented batches and labels, for two epochs, as the reference (threads) path."""
    images = from_folder(folder_dataset)
    transform = build_transform("heavy", (32, 32))
    cache = decode_all(images.paths, (32, 32))[0] if cached else None
    reference = make_dataset(images, (32, 32), 5, transform=transform, shuffle=True, seed=11, cache=cache)
    fast = make_dataset(images, (32, 32), 5, transform=transform, shuffle=True, seed=11, cache=cache, workers=workers)
    try:
        for _ in range(2):  # the second epoch has other seeds and order: still equal
            expected, got = _batches(reference), _batches(fast)
            assert len(expected) == len(got) == 5
            for (ex, ey), (gx, gy) in zip(expected, got, strict=True):
                assert gx.dtype == np.uint8 and gx.shape[1:] == (32, 32, 3)
                np.testing.assert_array_equal(gx, ex)
                np.testing.assert_array_equal(gy, ey)
        assert any(not np.array_equal(a[0], b[0]) for a, b in zip(_batches(reference), expected, strict=True))  # augmentation is live
    finally:
        fast.worker_pool.close()


def test_a_bad_image_is_reported_by_name(folder_dataset: Path):
    images = from_folder(folder_dataset)
    bad = Path(images.paths[3])
    bad.write_bytes(b"not an image")
    with WorkerPool(BatchLoader(images.paths, (32, 32), None), workers=1, batch_size=8) as pool:
        with pytest.raises(DataError, match=str(bad)):
            pool(np.arange(8), 0)
        assert pool(np.arange(4, 12), 0).shape == (8, 32, 32, 3)  # the pool still works after an error


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] != "Z":
                    alive.append(pid)
        except (ProcessLookupError, FileNotFoundError):
            pass
    return alive


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def test_close_stops_workers_and_frees_shared_memory(folder_dataset: Path):
    images = from_folder(folder_dataset)
    pool = WorkerPool(BatchLoader(images.paths, (32, 32), None), workers=2, batch_size=4)
    pool(np.arange(4), 0)
    pids = [p.pid for p in pool.processes]
    names = [shm.name for shm in pool._shms]
    pool.close()
    pool.close()  # twice is fine
    assert _wait_gone(pids) == []
    assert not any(Path("/dev/shm", name.lstrip("/")).exists() for name in names)
    with pytest.raises(RuntimeError, match="closed"):
        pool(np.arange(4), 0)


def test_dropping_the_dataset_stops_its_workers(folder_dataset: Path):
    import gc

    dataset = make_dataset(from_folder(folder_dataset), (32, 32), 8, workers=2)
    _batches(dataset)
    pids = [p.pid for p in dataset.worker_pool.processes]
    del dataset
    gc.collect()
    assert _wait_gone(pids) == []


CHILD = """
import faulthandler, os, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for every thread's stack if we hang
import numpy as np
from pipelines.sources import from_folder
from pipelines.tfdata import make_dataset
dataset = make_dataset(from_folder(sys.argv[1]), (32, 32), 4, workers=2)
next(iter(dataset))
print(" ".join(str(p.pid) for p in dataset.worker_pool.processes), flush=True)
if sys.argv[2] == "raise":
    raise RuntimeError("boom")
time.sleep(60)
"""


SIGINT_EXIT_HANG = pytest.mark.xfail(
    strict=False,
    reason="known, under diagnosis: in full fresh-clone runs of the fast suite (4 of 4 on 2026-11-27; 10 of 10 passed run by itself or with its file) the "
    "child, after SIGINT, waited past 60 s in threading._shutdown -> concurrent.futures.process._python_exit (t.join); see issue 14",
)


@pytest.mark.parametrize("how", ["raise", pytest.param("sigint", marks=SIGINT_EXIT_HANG), "sigkill"])
def test_no_orphans_after_an_exception_ctrl_c_or_kill(folder_dataset: Path, how: str):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder_dataset), how], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) == 2 and len(_alive(pids)) == 2
        if how == "sigint":
            child.send_signal(signal.SIGINT)
        elif how == "sigkill":
            child.kill()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGUSR1)  # faulthandler: every thread's Python stack to stderr
            time.sleep(2)
            child.kill()
            pytest.fail(f"the child did not exit within 60 s after {how}; its threads:\n{child.communicate()[1][-6000:]}")
        assert _wait_gone(pids, 15) == []
    finally:
        child.kill()
        child.wait()


def test_training_with_workers_gives_the_same_run(tiny_config):
    """data.workers only changes where batches are made: the same seed gives the same history, and no process is left."""
    import multiprocessing
    from dataclasses import replace

    from app.training import train

    threads = train(replace(tiny_config, data=replace(tiny_config.data, workers=0), output=replace(tiny_config.output, name="threads")))
    workers = train(replace(tiny_config, data=replace(tiny_config.data, workers=2), output=replace(tiny_config.output, name="workers")))
    assert workers.history == threads.history
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("imgclf-worker")]


def test_automatic_worker_count():
    from app.config import ConfigError, DataConfig
    from app.data import AUTO_WORKERS_MIN_IMAGES, training_workers

    cores = len(os.sched_getaffinity(0))
    assert training_workers(DataConfig(), AUTO_WORKERS_MIN_IMAGES) == cores
    assert training_workers(DataConfig(), AUTO_WORKERS_MIN_IMAGES - 1) == 0
    assert training_workers(DataConfig(workers=3), 10) == 3
    with pytest.raises(ConfigError, match="data.workers: -2 is not allowed"):
        DataConfig(workers=-2)  # refused when the config loads, before any work


def test_automatic_worker_count_without_cpu_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows have no os.sched_getaffinity: every core counts there."""
    from app.config import DataConfig
    from app.data import AUTO_WORKERS_MIN_IMAGES, training_workers

    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert training_workers(DataConfig(), AUTO_WORKERS_MIN_IMAGES) == 6


def test_a_transform_that_cannot_be_pickled_is_one_clear_error(folder_dataset: Path):
    import albumentations as A

    images = from_folder(folder_dataset)
    transform = A.Compose([A.Lambda(image=lambda image, **kwargs: image), A.Resize(32, 32)])
    with pytest.raises(DataError, match="cannot be sent to worker processes.*data.workers=0"):
        make_dataset(images, (32, 32), 4, transform=transform, workers=1)


def test_a_worker_killed_mid_run_is_an_error_not_a_hang(folder_dataset: Path):
    images = from_folder(folder_dataset)
    with WorkerPool(BatchLoader(images.paths, (32, 32), None), workers=2, batch_size=4) as pool:
        pool(np.arange(4), 0)
        victim = pool.processes[1]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
        start = time.monotonic()
        with pytest.raises(DataError, match=rf"{victim.name} .*exit code -9.*data.workers"):
            for _ in range(20):  # the surviving worker may serve a few batches before a call notices
                pool(np.arange(4), 0)
                time.sleep(0.2)
        assert time.monotonic() - start < 30
        with pytest.raises(DataError, match="died"):  # and the pool stays failed: no batch from a half-written slot
            pool(np.arange(4), 0)


UNGUARDED_SCRIPT = """
import sys
from pipelines.sources import from_folder
from pipelines.tfdata import make_dataset
dataset = make_dataset(from_folder(sys.argv[1]), (32, 32), 4, workers=1)
next(iter(dataset))
"""


def test_a_script_without_main_guard_gets_the_fix_not_a_spawn_loop(folder_dataset: Path, tmp_path: Path):
    """spawn re-imports the user's script in each worker: without `if __name__ == '__main__'` that would start workers again."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(folder_dataset)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "if __name__ == '__main__':" in done.stderr and "data.workers=0" in done.stderr


def test_too_little_shared_memory_is_one_clear_error_before_any_process_starts(folder_dataset: Path, monkeypatch):
    """A full /dev/shm (Docker's default is 64 MB) would kill the process with SIGBUS mid-epoch: refuse up front."""
    import shutil

    import pipelines.workers as workers_module

    if not os.path.isdir(workers_module._SHM_DIR):
        pytest.skip("no /dev/shm on this system")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(64 << 20, 64 << 20, 1 << 20))
    images = from_folder(folder_dataset)
    cache = np.zeros((len(images), 224, 224, 3), np.uint8)
    before = set(os.listdir(workers_module._SHM_DIR))
    with pytest.raises(DataError, match=r"shared memory .* 1 MiB free.*--shm-size.*data.workers=0"):
        WorkerPool(BatchLoader(images.paths, (224, 224), None, cache), workers=2, batch_size=64)
    assert set(os.listdir(workers_module._SHM_DIR)) == before  # nothing created, nothing left behind
