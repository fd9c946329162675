"""Multi-worker training benchmark: what `train.distribute: multiworker` costs or gains on this machine.

    .venv/bin/python benchmarks/multiworker.py           # about 7 minutes on 2 cores; JSON in benchmarks/results/
    .venv/bin/python benchmarks/multiworker.py --quick   # a smoke run

The same run (synthetic 32 px images, the baseline CNN, `data.cache`, a fixed number of epochs) is trained, in
alternating order per round, by:
  two_workers_one_core_each  two processes on 127.0.0.1 (TF_CONFIG, MultiWorkerMirroredStrategy), each pinned to
                             one core, training one model together (gradients all-reduced every step)
  one_process_one_core       one process pinned to one core (what one worker of the pair does alone)
  two_workers_custom_loop    the same pair with the alternative engine: a minimal training step over `strategy.run`
                             (same model, data, optimizer and all-reduces; no callbacks, logs or checkpoints)
  one_process_two_cores      one process on both cores (what a user of this one machine runs)
Reported: training images per second over the epochs after the first (tracing aside), from each run's own
per-epoch wall times of its training batches (validation aside), and the ratios as medians of rounds. On one machine the pair can only lose to one
process on both cores (it does the same arithmetic plus the all-reduce over loopback); the figures say how much
a second machine must bring before it pays, and how close to 2x two machines could come per step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUN = """
import json, os, sys, time
engine, cores, cluster, index = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
os.sched_setaffinity(0, [int(c) for c in cores.split(",")])
if "," in cluster:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster.split(",")}, "task": {"type": "worker", "index": index}})
import keras
from app.config import load_config
from app.training.run import train
config = load_config(overrides=sys.argv[5:])
if engine == "loop":  # the alternative engine: a minimal custom step over strategy.run, the same model, data and optimizer
    import tensorflow as tf
    from app.data import make_datasets, prepare_data
    from app.devices import make_strategy
    from app.training.fitting import build_model, compile_model
    strategy = make_strategy("multiworker" if "," in cluster else "none")
    data = prepare_data(config)
    with strategy.scope():
        model = build_model(config, data.num_classes, data.multilabel)
        compile_model(model, config, config.train.learning_rate, data.multilabel)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True)) / strategy.num_replicas_in_sync
            model.optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            return loss
        return strategy.reduce("SUM", strategy.run(replica, args=(x, y)), axis=None)

    times = []
    with make_datasets(config, data, strategy) as datasets:
        batches = strategy.experimental_distribute_dataset(datasets.train)
        for epoch in range(config.train.epochs):
            started = time.perf_counter()
            for x, y in batches:
                step(x, y)
            times.append(time.perf_counter() - started)
    print(json.dumps({"epoch_seconds": times, "train_images": len(data.train), "replicas": strategy.num_replicas_in_sync}))
    sys.exit(0)

class EpochTimes(keras.callbacks.Callback):  # the training batches of each epoch, validation aside
    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.started = time.perf_counter()
    def on_train_batch_end(self, batch, logs=None):
        self.ended = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times.append(self.ended - self.started)

times = []
result = train(config, callbacks=[EpochTimes()])
print(json.dumps({"epoch_seconds": times, "train_images": result.metrics["train_images"], "replicas": result.metrics["replicas"]}))
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run(processes: list[tuple[str, str, int]], overrides: list[str], engine: str = "fit") -> dict[str, Any]:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = [
        subprocess.Popen(
            [sys.executable, "-c", RUN, engine, cores, cluster, str(index), *overrides],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cores, cluster, index in processes
    ]
    outputs = [process.communicate(timeout=1800) for process in started]
    for process, (_, err) in zip(started, outputs):
        if process.returncode != 0:
            raise RuntimeError(err[-3000:])
    return json.loads(outputs[0][0].strip().splitlines()[-1])  # the chief's view (the logs are the same on both)


def images_per_second(result: dict[str, Any], batch_size: int) -> float:
    steps = result["train_images"] // batch_size  # several replicas train whole batches only; the same count for all
    return steps * batch_size / float(np.median(result["epoch_seconds"][1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=800, help="images per class (3 classes)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every run (repeatable)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "multiworker.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.rounds, args.batch_size = 60, 2, 1, 16
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        print("needs 2 cores")
        return 1
    from benchmarks.tuning import make_images

    work = Path(tempfile.mkdtemp(prefix="imgclf-multiworker-bench-"))
    try:
        data = make_images(work / "images", args.images)
        overrides = [f"data.train={data}", "data.image_size=32", f"data.batch_size={args.batch_size}",
                     "data.cache=true", "model.blocks=[[16], [32], [64]]", *args.set,
                     f"train.epochs={args.epochs}", "train.early_stopping_patience=0", "train.verbose=0", f"output.dir={work / 'runs'}"]  # fmt: skip
        a, b = (str(c) for c in cores)
        names = ("two_workers_one_core_each", "two_workers_custom_loop", "one_process_one_core", "one_process_two_cores")

        def processes(name: str) -> list[tuple[str, str, int]]:
            if name.startswith("two_workers"):
                cluster = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
                return [(a, cluster, 0), (b, cluster, 1)]
            return [(a if name == "one_process_one_core" else f"{a},{b}", "single", 0)]

        rounds: list[dict[str, float]] = []
        started = time.perf_counter()
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            row = {
                name: images_per_second(run(processes(name), overrides, "loop" if name.endswith("custom_loop") else "fit"), args.batch_size) for name in order
            }
            rounds.append(row)
            print(f"round {r + 1}: " + ", ".join(f"{name} {row[name]:.0f} img/s" for name in names), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratio(x: str, y: str) -> float:
        return float(np.median([row[x] / row[y] for row in rounds]))

    report = {
        "images": 3 * args.images, "epochs": args.epochs, "batch_size": args.batch_size, "overrides": args.set, "rounds": rounds,
        "two_workers_over_one_process_one_core": ratio("two_workers_one_core_each", "one_process_one_core"),
        "two_workers_over_one_process_two_cores": ratio("two_workers_one_core_each", "one_process_two_cores"),
        "custom_loop_over_fit_two_workers": ratio("two_workers_custom_loop", "two_workers_one_core_each"),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"two one-core workers / one process on one core: {report['two_workers_over_one_process_one_core']:.2f}; "
        f"/ one process on both cores: {report['two_workers_over_one_process_two_cores']:.2f}; "
        f"a custom strategy.run loop / Keras fit, two workers: {report['custom_loop_over_fit_two_workers']:.2f}"
    )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
