"""Input-pipeline benchmark: img/s of five ways to feed augmented images to Keras, against the hardware limit.

    .venv/bin/python benchmarks/pipeline.py                  # 32 and 224 px, all cores; JSON in benchmarks/results/
    .venv/bin/python benchmarks/pipeline.py --quick          # fewer images and repeats (a smoke run)
    .venv/bin/python benchmarks/pipeline.py --images-dir ../shared/data/flowers/daisy   # real JPEGs instead

Measured in one run, on the same image files and the same Albumentations transform (the project's `medium` preset):

  limit      cores x A, where A is the rate of the pipeline's own per-image work in a plain loop pinned to one core:
             read + decode + augment into a uint8 array ("files"), or augment alone from decoded, resized images
             ("cached", the data.cache mode)
  pydataset  keras.utils.PyDataset + Albumentations, as in courses (threads, `workers` = cores)
  layers     Keras preprocessing layers in tf.data (flip, rotation, zoom, contrast) after tf.io decoding
  naive      tf.data with one tf.numpy_function per image (parallel map), then batch
  threads    this project's make_dataset in TensorFlow's threads (data.workers=0)
  workers    this project's make_dataset with worker processes writing into shared memory (data.workers=cores)
  auto       which of the two data.workers unset picks for this case (pipelines.workers.auto_workers), and its
             rate over the faster of the two in each round
plus the cores the training process itself used during the `workers` passes (tf.data, copies, the consumer loop):
on a small machine, what the workers cannot have.

plus: small-CNN fit throughput from in-memory arrays (F) and fed by `workers` with augmentation (32 px); scaling of
`workers` (cached): a process pinned to one core with 1 worker vs one with every core, each pinned before TensorFlow
starts its threads (like `taskset`); peak memory for N and 10 N images from files (P4), and for 10 N images from the
decoded cache against the cache's bytes plus the files-mode peak (P4 cached); worker start-up (pool to first batch)
in a script that imports TensorFlow, with and without the workers re-running it.
`--batches-per-call 1` measures the pipeline as it was before several batches travelled in one call.
Every figure is the median of --repeats passes after a warm-up pass; tf.data autotuning is off and parallelism set
to the core count (autotune here sometimes locks onto a 20 ms-per-batch rhythm). The machines this was written on
(cloud VMs) change speed by up to 1.8x from one second to the next, so the passes run in rounds (one pass of each
way in turn) and each ratio is the median of the per-round ratios; P1b alternates its two processes. A is measured
with OpenCV single-threaded, so that it is the rate of one core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

CORES = len(os.sched_getaffinity(0))


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """Run the block (and processes started in it) on `cpus` only."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def make_jpegs(folder: Path, count: int, size: tuple[int, int] = (320, 240), seed: int = 0) -> list[str]:
    """Synthetic photos: smooth colour fields with shapes and noise, JPEG quality 90 (decoding cost like a photo)."""
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        base = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
        for _ in range(4):
            center = (int(rng.integers(0, size[0])), int(rng.integers(0, size[1])))
            cv2.circle(base, center, int(rng.integers(10, 80)), [int(c) for c in rng.integers(0, 256, 3)], -1)
        image = np.clip(base.astype(np.int16) + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


@contextlib.contextmanager
def single_core() -> Iterator[None]:
    """This thread on one core, OpenCV without its own threads: the rate of one core's work."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with pinned({min(os.sched_getaffinity(0))}):
            yield
    finally:
        cv2.setNumThreads(threads)


def rate(passes: Callable[[], int], repeats: int, warm_up: bool = True, pin: bool = False) -> float:
    """Median images per second over `repeats` timed passes (at least one), after one warm-up pass;
    `pin`: in this thread on one core (see `single_core`)."""
    with single_core() if pin else contextlib.nullcontext():
        if warm_up:
            passes()
        rates = []
        for _ in range(max(repeats, 1)):
            start = time.perf_counter()
            count = passes()
            rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def rounds(passes: dict[str, tuple[Callable[[], int], bool]], repeats: int) -> dict[str, list[float]]:
    """img/s of each (pass, pinned) in turn, `repeats` rounds after a warm-up round: figures of one round were
    taken seconds apart, so their ratios hold even when the machine's speed drifts."""
    for passes_once, pin in passes.values():
        rate(passes_once, 1, warm_up=False, pin=pin)
    out: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, (passes_once, pin) in passes.items():
            out[name].append(rate(passes_once, 1, warm_up=False, pin=pin))
    return out


def _shown(key: str, value: Any) -> str:
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={value:,.0f}" if abs(value) > 10 else f"{key}={value:.2f}"


def with_process_cpu(passes: Callable[[], int], cores_used: list[float]) -> Callable[[], int]:
    """`passes`, also recording the cores this (training) process used meanwhile: its CPU seconds over wall seconds."""

    def run() -> int:
        cpu, start = time.process_time(), time.perf_counter()  # process_time: ns resolution (os.times ticks in 10 ms)
        count = passes()
        cores_used.append((time.process_time() - cpu) / (time.perf_counter() - start))
        return count

    return run


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def own_work(paths: list[str], size: int, transform: Any, cache: np.ndarray | None) -> Callable[[], int]:
    """One pass of the pipeline's own per-image work in a plain loop (A): read + decode + augment into a uint8
    array, or augment alone from the decoded cache."""
    from pipelines.images import read_image

    def loop() -> int:
        out = np.empty((len(paths), size, size, 3), np.uint8)
        for i, path in enumerate(paths):
            image = cache[i] if cache is not None else read_image(path, 2 * size)
            out[i] = transform(image=image)["image"]
        return len(paths)

    return loop


def two_class_set(paths: list[str]) -> Any:
    """The images as a labelled set (two alternating classes; the labels only need to exist)."""
    from pipelines.sources import ImageSet

    return ImageSet(paths=list(paths), ids=[str(i) for i in range(len(paths))], class_names=("a", "b"), labels=np.arange(len(paths)) % 2, multilabel=False)


def count_batches(batches: Iterable) -> int:
    total = 0
    for batch in batches:
        x = batch[0] if isinstance(batch, tuple) else batch
        total += int(x.shape[0])
    return total


def no_autotune(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def measure_modes(size: int, paths: list[str], batch: int, repeats: int, workers: int, per_call: int | None, others: bool = True) -> dict:
    """img/s of each way at `size`, from files and from the cache; `others`: also PyDataset, layers and naive."""
    import albumentations as A
    import keras
    import tensorflow as tf

    from pipelines.augment import build_transform
    from pipelines.images import read_image
    from pipelines.tfdata import decode_all, make_dataset
    from pipelines.workers import auto_workers

    shape = (size, size)
    transform = build_transform("medium", shape)
    images = two_class_set(paths)
    cache, _ = decode_all(paths, shape)
    results: dict = {}

    class CourseDataset(keras.utils.PyDataset):
        def __init__(self, mode: str, **kwargs):
            super().__init__(**kwargs)
            self.mode = mode

        def __len__(self) -> int:
            return (len(paths) + batch - 1) // batch

        def __getitem__(self, index: int):
            rows = range(index * batch, min((index + 1) * batch, len(paths)))
            local = A.Compose(transform.transforms)  # per call: Albumentations transforms are not thread-safe
            x = np.stack([local(image=cache[i] if self.mode == "cached" else read_image(paths[i], 2 * size))["image"] for i in rows])
            return x, images.labels[list(rows)]

    def pydataset(mode: str) -> Callable[[], int]:
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

        adapter = PyDatasetAdapter(CourseDataset(mode, workers=CORES, use_multiprocessing=False, max_queue_size=2 * CORES), shuffle=False)
        return lambda: count_batches(adapter.get_numpy_iterator())

    augment_layers = keras.Sequential(
        [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.05), keras.layers.RandomZoom(0.1), keras.layers.RandomContrast(0.2)]
    )

    def layers(mode: str) -> Callable[[], int]:
        if mode == "cached":
            ds = tf.data.Dataset.from_tensor_slices(cache)
        else:

            def decode(path):
                image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
                return tf.cast(tf.image.resize(image, shape, antialias=True), tf.uint8)

            ds = tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=CORES)
        ds = ds.batch(batch).map(lambda x: tf.cast(augment_layers(tf.cast(x, tf.float32), training=True), tf.uint8), num_parallel_calls=CORES)
        ds = no_autotune(ds.prefetch(2))
        return lambda: count_batches(ds)

    def naive(mode: str) -> Callable[[], int]:
        def one(index):
            i = int(index)
            image = cache[i] if mode == "cached" else read_image(paths[i], 2 * size)
            return transform(image=image)["image"]

        ds = tf.data.Dataset.range(len(paths)).map(lambda i: tf.ensure_shape(tf.numpy_function(one, [i], tf.uint8), (size, size, 3)), num_parallel_calls=CORES)
        ds = no_autotune(ds.batch(batch).prefetch(2))
        return lambda: count_batches(ds)

    def project(mode: str, n_workers: int) -> tuple[Callable[[], int], Any]:
        base = make_dataset(
            images,
            shape,
            batch,
            transform=transform,
            shuffle=True,
            seed=0,
            cache=cache if mode == "cached" else None,
            workers=n_workers,
            num_parallel_calls=max(CORES, 2 * n_workers),
            batches_per_call=per_call,
        )
        ds = no_autotune(base.dataset)
        return (lambda: count_batches(ds)), base

    for mode in ("files", "cached"):
        threads, _ = project(mode, 0)
        fast, fast_dataset = project(mode, workers)
        try:
            passes = {"A_single_core": (own_work(paths, size, transform, cache if mode == "cached" else None), True)}
            if others:
                passes |= {"pydataset": (pydataset(mode), False), "layers": (layers(mode), False), "naive": (naive(mode), False)}
            parent_cores: list[float] = []
            passes |= {"threads": (threads, False), "workers": (with_process_cpu(fast, parent_cores), False)}
            measured = rounds(passes, repeats)
        finally:
            fast_dataset.close()
        row = {name: statistics.median(values) for name, values in measured.items()}
        row = {"A_single_core": row["A_single_core"], "limit": CORES * row["A_single_core"], **{k: v for k, v in row.items() if k != "A_single_core"}}
        row["P1_workers_over_limit"] = median_ratio(measured["workers"], [CORES * a for a in measured["A_single_core"]])
        row["workers_training_process_cores"] = statistics.median(parent_cores)  # what the workers cannot have
        if others:
            row["P3_workers_over_pydataset"] = median_ratio(measured["workers"], measured["pydataset"])
        chosen, why = auto_workers(len(paths), size, mode == "cached", cores=workers)
        auto = "workers" if chosen else "threads"
        row["auto"] = auto
        row["auto_over_best"] = median_ratio(measured[auto], [max(t, w) for t, w in zip(measured["threads"], measured["workers"], strict=True)])
        print(f"  {size}px {mode:6s} " + "  ".join(_shown(k, v) for k, v in row.items()), flush=True)
        results[mode] = {**row, "auto_reason": why, "rounds": measured}  # every pass, for a second look at the spread
    return results


SCALING_CHILD = """
import json, os, sys
spec = json.load(open(sys.argv[1]))
os.sched_setaffinity(0, spec["cpus"])  # before NumPy, OpenCV or TensorFlow start a thread: every thread inherits it
sys.path.insert(0, spec["benchmarks"])
import pipeline
print(json.dumps(pipeline.scaling_rate(spec)))
"""


def scaling_rate(spec: dict) -> float:
    """In a child pinned to spec["cpus"]: img/s of the cached 32 px `workers` pipeline with spec["workers"] processes."""
    import tensorflow as tf  # noqa: F401

    from pipelines.augment import build_transform
    from pipelines.tfdata import decode_all, make_dataset

    paths, shape, n_workers = spec["paths"], (spec["size"], spec["size"]), spec["workers"]
    images = two_class_set(paths)
    cache, _ = decode_all(paths, shape)
    base = make_dataset(
        images,
        shape,
        spec["batch"],
        transform=build_transform("medium", shape),
        shuffle=True,
        seed=0,
        cache=cache,
        workers=n_workers,
        num_parallel_calls=2 * n_workers,
        batches_per_call=spec["per_call"],
    )
    ds = no_autotune(base.dataset)
    try:
        return rate(lambda: count_batches(ds), spec["repeats"])
    finally:
        base.close()


def measure_scaling(size: int, paths: list[str], batch: int, repeats: int, per_call: int | None) -> dict:
    """P1b: the cached `workers` pipeline in a process pinned to one core (1 worker) vs one on all cores (one worker
    per core), alternated `repeats` times; the speedup is the median of the per-round ratios."""
    cpus = sorted(os.sched_getaffinity(0))

    def child(on: list[int], n_workers: int) -> float:
        spec = {
            "cpus": on,
            "workers": n_workers,
            "paths": paths,
            "size": size,
            "batch": batch,
            "repeats": 2,
            "per_call": per_call,
            "benchmarks": str(Path(__file__).resolve().parent),
        }
        with tempfile.NamedTemporaryFile("w", suffix=".json") as arg:  # the path list can exceed a command line
            json.dump(spec, arg)
            arg.flush()
            done = subprocess.run([sys.executable, "-c", SCALING_CHILD, arg.name], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"scaling child failed:\n{done.stderr[-3000:]}")
        return float(done.stdout.split()[-1])

    rounds = [(child(cpus[:1], 1), child(cpus, len(cpus))) for _ in range(repeats)]
    one, every = (statistics.median(values) for values in zip(*rounds, strict=True))
    speedup = statistics.median(b / a for a, b in rounds)
    return {"one_core": one, "all_cores": every, "speedup": speedup, "P1b_speedup_over_cores": speedup / len(cpus), "rounds": rounds}


def measure_fit(paths: list[str], batch: int, repeats: int, workers: int, per_call: int | None) -> dict:
    """P2: small CNN at 32 px, fit rate from in-memory arrays (F) vs fed by the `workers` pipeline with augmentation."""
    import keras

    from app.models import create_model
    from pipelines.augment import build_transform
    from pipelines.tfdata import decode_all, make_dataset

    shape = (32, 32)
    transform = build_transform("medium", shape)
    images = two_class_set(paths)
    cache, _ = decode_all(paths, shape)
    keras.utils.set_random_seed(0)
    small_cnn = [{"filters": 16, "repeats": 1}, {"filters": 32, "repeats": 1}, {"filters": 64, "repeats": 1}]  # ~2,000-3,000 img/s here: augmentation matters
    model = create_model("baseline_cnn", input_shape=(32, 32, 3), num_classes=2, blocks=small_cnn)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

    import tensorflow as tf

    # F: from in-memory arrays through tf.data (shuffled uint8 batches, prefetched): the fastest feed, a stricter
    # reference than model.fit(x=arrays), whose array adapter was slower than the pipeline itself here
    arrays = tf.data.Dataset.from_tensor_slices((cache, images.labels)).shuffle(len(paths), seed=0).batch(batch).prefetch(2)

    def fit_arrays() -> int:
        model.fit(arrays, epochs=1, verbose=0, shuffle=False)
        return len(paths)

    base = make_dataset(
        images, shape, batch, transform=transform, shuffle=True, seed=0, cache=cache, workers=workers, num_parallel_calls=2 * workers, batches_per_call=per_call
    )
    ds = no_autotune(base.dataset)

    def fit_pipeline() -> int:
        model.fit(ds, epochs=1, verbose=0, shuffle=False)  # the dataset shuffles itself
        return len(paths)

    try:
        measured = rounds(
            {"A_cached": (own_work(paths, 32, transform, cache), True), "F_arrays": (fit_arrays, False), "fit_with_augmentation": (fit_pipeline, False)},
            repeats,
        )
    finally:
        base.close()
    limits = [1 / (1 / f + 1 / (CORES * a)) for f, a in zip(measured["F_arrays"], measured["A_cached"], strict=True)]
    out = {name: statistics.median(values) for name, values in measured.items()}
    out["cpu_limit"] = statistics.median(limits)
    out["P2_fit_over_cpu_limit"] = median_ratio(measured["fit_with_augmentation"], limits)
    out["fit_over_F"] = median_ratio(measured["fit_with_augmentation"], measured["F_arrays"])
    out["rounds"] = measured
    return out


RSS_CHILD = """
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
from app.config import DataConfig
from app.data import prepare
from pipelines.augment import build_transform
from pipelines.sources import ImageSet
from pipelines.tfdata import make_dataset

def peak_kib(pid="self"):  # VmHWM: this process's own high-water mark (getrusage's ru_maxrss keeps the forking parent's)
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

def pss_kib(pid):  # proportional set size: a shared page counts 1/n in each of the n processes that map it
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return 0

paths = open(sys.argv[2]).read().split() * int(sys.argv[3])
workers, mode = int(sys.argv[4]), sys.argv[5]
pids, peak, stop = [os.getpid()], [0], threading.Event()

def sample():  # the peak of the processes' summed PSS: the memory they take together, shared pages once
    while not stop.wait(0.05):
        peak[0] = max(peak[0], sum(pss_kib(pid) for pid in list(pids)))

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
images = ImageSet(paths=paths, ids=[str(i) for i in range(len(paths))], class_names=("a", "b"), labels=np.arange(len(paths)) % 2, multilabel=False)
cache = None
if mode != "files":  # the application's own path: checked, decoded once, into shared memory when workers will read it
    # ("cached_copy": a private array, which the pool copies into shared memory: how every cache was held before)
    images, cache = prepare(images, DataConfig(cache=True, image_size=224), shared=workers > 0 and mode == "cached")
pipeline = make_dataset(images, (224, 224), 64, transform=build_transform("medium", (224, 224)), shuffle=True, seed=0, cache=cache, workers=workers)
if workers:
    pids += [p.pid for p in pipeline.worker_pool.processes]
n = sum(int(x.shape[0]) for x, _ in pipeline.dataset)
stop.set()
sampler.join()
worker_peaks = [peak_kib(p.pid) for p in pipeline.worker_pool.processes] if workers else []
print(n, peak_kib(), sum(worker_peaks), peak[0], 0 if cache is None else cache.nbytes // 1024)
"""


def measure_rss(paths: list[str], workers: int) -> dict:
    """P4: peak memory of a process iterating one epoch over N and 10 N images (224 px, files, no cache) and of
    its worker processes: RSS of each (VmHWM) and the peak of their summed PSS (a shared page counted once).
    P4 cached: the same for 10 N images from the decoded cache, against the cache's bytes plus the files-mode peak
    (and, for comparison, with the cache in private memory, copied by the pool: how it was held before)."""
    listing = Path(tempfile.mkstemp(suffix=".txt")[1])
    listing.write_text("\n".join(paths))
    out = {}
    for factor, mode in ((1, "files"), (10, "files"), (10, "cached"), (10, "cached_copy")):
        done = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, str(Path(__file__).resolve().parents[1]), str(listing), str(factor), str(workers), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        n, own, children, pss, cache = (int(v) for v in done.stdout.split()[-5:])
        key = f"x{factor}" if mode == "files" else f"x{factor}_{mode}"
        out[key] = {
            "images": n,
            "peak_rss_kib": own,
            "workers_peak_rss_kib": children,
            "total_peak_rss_kib": own + children,
            "peak_pss_kib": pss,
            "cache_kib": cache,
        }
    listing.unlink()
    out["P4_rss_ratio"] = out["x10"]["peak_rss_kib"] / out["x1"]["peak_rss_kib"]
    out["P4_total_rss_ratio"] = out["x10"]["total_peak_rss_kib"] / out["x1"]["total_peak_rss_kib"]
    out["P4_total_pss_ratio"] = out["x10"]["peak_pss_kib"] / out["x1"]["peak_pss_kib"]
    for mode in ("cached", "cached_copy"):
        row = out[f"x10_{mode}"]
        out[f"P4_{mode}_pss_over_cache_plus_files"] = row["peak_pss_kib"] / (row["cache_kib"] + out["x10"]["peak_pss_kib"])
    return out


STARTUP_CHILD = """
import statistics, sys, time
sys.path.insert(0, sys.argv[1])
import albumentations as A
import numpy as np
import tensorflow  # noqa: F401  (as the imgclf command or a training script has)
from pipelines.sources import ImageSet
from pipelines.tfdata import make_dataset


class Identity(A.ImageOnlyTransform):  # defined in this script: the workers must re-run it to unpickle the transform
    def apply(self, img, **params):
        return img


if __name__ == "__main__":
    paths = open(sys.argv[2]).read().split()
    images = ImageSet(paths=paths, ids=[str(i) for i in range(len(paths))], class_names=("a", "b"), labels=np.arange(len(paths)) % 2, multilabel=False)
    seconds = {"library_transform": [], "transform_from_the_script": []}
    rss_kib = {name: [] for name in seconds}
    for _ in range(int(sys.argv[4])):
        for name, first in zip(seconds, (A.HorizontalFlip(), Identity(p=1.0))):
            start = time.perf_counter()
            pipeline = make_dataset(images, (32, 32), 16, transform=A.Compose([first, A.Resize(32, 32)]), workers=int(sys.argv[3]))
            next(iter(pipeline.dataset))
            seconds[name].append(time.perf_counter() - start)
            with open(f"/proc/{pipeline.worker_pool.processes[0].pid}/status") as status:  # one worker's resident memory
                rss_kib[name].append(next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")))
            pipeline.close()
    print(" ".join(f"{statistics.median(v):.3f}" for v in seconds.values()), " ".join(str(int(statistics.median(v))) for v in rss_kib.values()))
"""


def measure_startup(paths: list[str], workers: int, repeats: int) -> dict:
    """Seconds from creating a `workers` dataset to its first batch, and one worker's resident memory then, in a
    script that imports TensorFlow: with a library transform (the workers do not re-run the script) and with a
    transform defined in the script (they must, and import TensorFlow: how every worker started before)."""
    with tempfile.TemporaryDirectory() as tmp:
        script, listing = Path(tmp) / "startup.py", Path(tmp) / "paths.txt"
        script.write_text(STARTUP_CHILD)
        listing.write_text("\n".join(paths))
        done = subprocess.run(
            [sys.executable, str(script), str(Path(__file__).resolve().parents[1]), str(listing), str(workers), str(max(repeats, 1))],
            capture_output=True,
            text=True,
            check=True,
        )
    library, rerun, library_rss, rerun_rss = (float(v) for v in done.stdout.split()[-4:])
    return {
        "library_transform_s": library,
        "transform_from_the_script_s": rerun,
        "speedup": rerun / library,
        "library_transform_worker_rss_mib": library_rss / 1024,
        "transform_from_the_script_worker_rss_mib": rerun_rss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--images", type=int, default=None, help="images per pass (default: 8192 at 32 px, 2048 at 224 px: long enough for a steady state)")
    parser.add_argument("--images-dir", help="use the JPEGs of this folder instead of synthetic ones")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=CORES, help="worker processes for the project's pipeline (default: cores)")
    parser.add_argument(
        "--batches-per-call", type=int, default=None, help="batches per Python call (default: the pipeline's own choice; 1: as before it amortized calls)"
    )
    parser.add_argument(
        "--threads-vs-workers",
        action="store_true",
        help="only A, threads and workers per size (what the automatic choice is set from; no other ways, scaling, fit or memory)",
    )
    parser.add_argument("--quick", action="store_true", help="256 images, 1 repeat: checks that the script runs")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "pipeline.json"))
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats

    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        if args.images_dir:
            source = sorted(str(p) for p in Path(args.images_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        else:
            source = make_jpegs(Path(tmp) / "jpegs", args.images or (256 if args.quick else 2048))
        per_call = args.batches_per_call
        report: dict = {
            "cores": CORES,
            "workers": args.workers,
            "batch": args.batch,
            "repeats": repeats,
            "images_dir": args.images_dir,
            "batches_per_call": per_call or "default",
            "sizes": {},
        }
        print(f"{CORES} cores, {args.workers} workers, batch {args.batch}, median of {repeats}", flush=True)
        for size in args.sizes:
            count = args.images or (256 if args.quick else (8192 if size <= 64 else 2048))
            paths = (source * (count // len(source) + 1))[:count]
            report["sizes"][str(size)] = {
                "images": count,
                **measure_modes(size, paths, args.batch, repeats, args.workers, per_call, others=not args.threads_vs_workers),
            }
        count = args.images or (256 if args.quick else 8192)
        small = (source * (count // len(source) + 1))[:count]
        if not args.threads_vs_workers:
            report["scaling_32px_cached"] = measure_scaling(32, small, args.batch, repeats, per_call)
            print(f"  scaling: {report['scaling_32px_cached']}", flush=True)
            fit = measure_fit(small, args.batch, repeats, args.workers, per_call)
            report["fit_32px"] = fit
            print(f"  fit: {fit}", flush=True)
            report["rss_224px_files"] = measure_rss((source * (256 // len(source) + 1))[:256], args.workers)
            print(f"  rss: {report['rss_224px_files']}", flush=True)
            report["worker_startup"] = measure_startup(small[:64], args.workers, repeats)
            print(f"  worker start-up: {report['worker_startup']}", flush=True)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = output.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    tmp_out.replace(output)
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
