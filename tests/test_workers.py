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
from pipelines.workers import AUTO_MIN_IMAGES, THREADS_FROM_FILES_MIN_SIZE, WorkerPool, auto_workers, usable_cores

REPO = Path(__file__).resolve().parents[1]


def _batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset]


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize(("workers", "per_call"), [(1, 1), (2, 1), (2, 2)])
def test_workers_yield_exactly_the_in_process_batches(folder_dataset: Path, cached: bool, workers: int, per_call: int):
    """Same seed -> bit-identical augmented batches and labels, for two epochs, as the reference (threads, one batch
    per call) path, whatever the batches per call."""
    images = from_folder(folder_dataset)
    transform = build_transform("heavy", (32, 32))
    cache = decode_all(images.paths, (32, 32))[0] if cached else None
    reference = make_dataset(images, (32, 32), 5, transform=transform, shuffle=True, seed=11, cache=cache, batches_per_call=1)
    fast = make_dataset(images, (32, 32), 5, transform=transform, shuffle=True, seed=11, cache=cache, workers=workers, batches_per_call=per_call)
    try:
        for _ in range(2):  # the second epoch has other seeds and order: still equal
            expected, got = _batches(reference.dataset), _batches(fast.dataset)
            assert len(expected) == len(got) == 5
            for (ex, ey), (gx, gy) in zip(expected, got, strict=True):
                assert gx.dtype == np.uint8 and gx.shape[1:] == (32, 32, 3)
                np.testing.assert_array_equal(gx, ex)
                np.testing.assert_array_equal(gy, ey)
        assert any(not np.array_equal(a[0], b[0]) for a, b in zip(_batches(reference.dataset), expected, strict=True))  # augmentation is live
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


def test_dropping_the_pipeline_stops_its_workers(folder_dataset: Path):
    import gc

    pipeline = make_dataset(from_folder(folder_dataset), (32, 32), 8, workers=2)
    _batches(pipeline.dataset)
    pids = [p.pid for p in pipeline.worker_pool.processes]
    del pipeline
    gc.collect()
    assert _wait_gone(pids) == []


CHILD = """
import faulthandler, os, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for every thread's stack if we hang
# Ctrl-C as in a terminal: a shell without job control starts background jobs (`make test &`) with SIGINT ignored,
# and Python then installs no handler, so the child slept its 60 s through the signal (the "hang" of issue 14)
signal.signal(signal.SIGINT, signal.default_int_handler)
import numpy as np
from pipelines.sources import from_folder
from pipelines.tfdata import make_dataset
pipeline = make_dataset(from_folder(sys.argv[1]), (32, 32), 4, workers=2)
next(iter(pipeline.dataset))
print(" ".join(str(p.pid) for p in pipeline.worker_pool.processes), flush=True)
if sys.argv[2] == "raise":
    raise RuntimeError("boom")
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["raise", "sigint", "sigkill"])
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

    from app.training.run import train

    threads = train(replace(tiny_config, data=replace(tiny_config.data, workers=0), output=replace(tiny_config.output, name="threads")))
    workers = train(replace(tiny_config, data=replace(tiny_config.data, workers=2), output=replace(tiny_config.output, name="workers")))
    assert workers.history == threads.history
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("imgclf-worker")]


@pytest.mark.parametrize(
    ("images", "size", "cached", "cores", "expected"),
    [  # the cases of benchmarks/pipeline.py (2,000+ images), then the limits
        (AUTO_MIN_IMAGES, 32, False, 4, 4),  # small images from files: processes (1.4x threads on 2 cores)
        (AUTO_MIN_IMAGES, 32, True, 4, 4),  # from the cache: processes (2.4x)
        (AUTO_MIN_IMAGES, 224, False, 4, 0),  # large images from files: threads (1.07x processes)
        (AUTO_MIN_IMAGES, 224, True, 4, 4),  # from the cache: processes (1.2x)
        (AUTO_MIN_IMAGES, THREADS_FROM_FILES_MIN_SIZE - 1, False, 4, 4),
        (AUTO_MIN_IMAGES - 1, 32, True, 4, 0),  # too few images to repay starting processes
        (10**6, 32, True, 1, 0),  # one core
    ],
)
def test_auto_workers_picks_the_faster_way_and_says_why(images, size, cached, cores, expected):
    workers, why = auto_workers(images, size, cached, cores=cores)
    assert workers == expected
    assert why.startswith("threads" if expected == 0 else f"{expected} worker processes")


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_training_workers_follows_data_workers_else_decides_and_says_why(cores: int, monkeypatch: pytest.MonkeyPatch):
    """The same on any machine: the core count is the parameter (a container with one CPU, a laptop, a server)."""
    import pipelines.workers
    from app.config import ConfigError, DataConfig
    from app.data import training_workers

    monkeypatch.setattr(pipelines.workers, "usable_cores", lambda: cores)
    assert training_workers(DataConfig(workers=3), 10) == (3, "3 worker processes: data.workers=3")
    assert training_workers(DataConfig(workers=0), 10**6) == (0, "threads: data.workers=0")
    workers, why = training_workers(DataConfig(), 24)
    assert workers == 0 and ("too few" in why if cores > 1 else "one usable core" in why)
    workers, why = training_workers(DataConfig(cache=True, image_size=224), AUTO_MIN_IMAGES)
    assert (workers, "one usable core" in why) == ((0, True) if cores == 1 else (cores, False))
    with pytest.raises(ConfigError, match="data.workers: -2 is not allowed"):
        DataConfig(workers=-2)  # refused when the config loads, before any work


def test_usable_cores_without_cpu_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows have no os.sched_getaffinity: every core counts there."""
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6
    assert auto_workers(AUTO_MIN_IMAGES, 32, True)[0] == 6


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
import albumentations as A
import tensorflow  # as a training script would: the workers must not import it again
from pipelines.sources import from_folder
from pipelines.tfdata import make_dataset


class Identity(A.ImageOnlyTransform):  # a transform defined in the script: workers need the script to unpickle it
    def apply(self, img, **params):
        return img


own = sys.argv[2] == "own-transform"
transform = A.Compose([Identity(p=1.0), A.Resize(32, 32)]) if own else A.Compose([A.HorizontalFlip(), A.Resize(32, 32)])
pipeline = make_dataset(from_folder(sys.argv[1]), (32, 32), 4, transform=transform, workers=1)
next(iter(pipeline.dataset))
maps = open(f"/proc/{pipeline.worker_pool.processes[0].pid}/maps").read()
print("worker imported tensorflow:", "libtensorflow" in maps)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the worker's memory maps in /proc")
@pytest.mark.parametrize("transform", ["library", "own-transform"])
def test_workers_do_not_rerun_the_main_script_unless_its_transform_needs_it(folder_dataset: Path, tmp_path: Path, transform: str):
    """spawn re-imports the user's script in each worker, TensorFlow and all (650 MB each), and without
    `if __name__ == '__main__'` would start workers again. Workers skip it unless the transform comes from the script;
    then an unguarded script gets the fix in one line, not a spawn loop."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(folder_dataset), transform], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    if transform == "library":
        assert done.returncode == 0, done.stderr[-2000:]
        assert "worker imported tensorflow: False" in done.stdout
    else:
        assert done.returncode != 0
        assert "if __name__ == '__main__':" in done.stderr and "data.workers=0" in done.stderr


def test_too_little_shared_memory_is_one_clear_error_before_any_process_starts(folder_dataset: Path, monkeypatch):
    """A full /dev/shm (Docker's default is 64 MB) would kill the process with SIGBUS mid-epoch: refuse up front."""
    import shutil

    from pipelines.memory import SHM_DIR

    if not os.path.isdir(SHM_DIR):
        pytest.skip("no /dev/shm on this system")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(64 << 20, 64 << 20, 1 << 20))
    images = from_folder(folder_dataset)
    cache = np.zeros((len(images), 224, 224, 3), np.uint8)
    before = set(os.listdir(SHM_DIR))
    with pytest.raises(DataError, match=r"shared memory .* 1.0 MiB free.*--shm-size.*data.workers=0"):
        WorkerPool(BatchLoader(images.paths, (224, 224), None, cache), workers=2, batch_size=64)
    assert set(os.listdir(SHM_DIR)) == before  # nothing created, nothing left behind
