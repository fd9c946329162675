"""Fine-tuning with real ImageNet weights: configs/finetune.yaml as shipped against keras-io's "Transfer learning &
fine-tuning" recipe written plainly in Keras, at the same image size and the same wall-clock budget.

    .venv/bin/python ../shared/weights/xception_imagenet.py          # once: Keras' Xception ImageNet weights, no top
    .venv/bin/python benchmarks/finetune_quality.py                  # hymenoptera, dog-breed, flowers: about 50 minutes
    .venv/bin/python benchmarks/finetune_quality.py --sets hymenoptera --set finetune.unfreeze_blocks=8
    .venv/bin/python benchmarks/finetune_quality.py --part features  # cached features against the frozen backbone
    .venv/bin/python benchmarks/finetune_quality.py --part sizes --sets hymenoptera dog-breed   # minutes and scores per size
    .venv/bin/python benchmarks/finetune_quality.py --part search --sets hymenoptera   # the search against the recipe
    .venv/bin/python benchmarks/finetune_quality.py --quick          # a smoke run: few images, one epoch per stage

Part `compare` (default), for each set, in one run:
  1. a stratified, seeded hold-out set (hymenoptera: its own val/ folder) that neither side trains on or selects from;
  2. toolkit: configs/finetune.yaml with only data.train, data.image_size and model.weights (the shared file) set;
     its wall time W, from the start of `train()` to the saved model (image checks and features included);
  3. keras-io's recipe: Xception(weights=file, include_top=False), inputs scaled to [-1, 1], the frozen base called
     with training=False, global average pooling, dropout 0.2, a dense softmax head, Adam 1e-3; then the whole base
     unfrozen at Adam 1e-5 (BatchNormalization stays in inference mode); RandomFlip + RandomRotation(0.1); fed by
     `image_dataset_from_directory` with its own 20 % validation split. It gets W: the head trains until a third of W
     has passed (keras-io's own run spends a third of its time on the head: 20 epochs of 23 s against 10 of 90 s),
     fine-tuning until W (each stage ends at the end of the epoch after which another would pass its share);
  4. both scored on the hold-out set: accuracy and log-loss; seconds and epochs per stage.
Part `features`, on one set: stage 1 alone for the same epochs with `train.cache_features` on and off: seconds per
head epoch, the features' one-off cost, and the time each takes to reach the frozen-backbone run's best validation
accuracy.
Part `sizes`: configs/finetune.yaml alone at each of `--sizes` on each set: hold-out accuracy, log-loss and minutes.
Part `search`, on the first of `--sets`: `imgclf tune -c configs/finetune_search.yaml --then-train` (image size, unfrozen
blocks, fine-tuning rate, dropout); its total time T, search and final run, is the budget. Against it, on the same
hold-out set: configs/finetune.yaml as shipped, and configs/finetune.yaml given T (its fine-tuning stage has as many
epochs as fit in T at the pace the shipped run measured, early stopping off, and stops at T).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402
from quality import make_set  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402

from app.config import load_config  # noqa: E402
from app.data import load_labeled  # noqa: E402
from app.inference.evaluation import evaluate_images  # noqa: E402
from app.runs import load_run  # noqa: E402
from app.training.run import train  # noqa: E402
from tuning import search, train_best  # noqa: E402

SHARED = REPO.parent / "shared"
WEIGHTS = Path.home() / ".cache" / "imgclf" / "weights" / "xception_imagenet_notop.weights.h5"
SETS = ("hymenoptera", "dog-breed", "flowers")
SIZE = 128


class StageTimer(keras.callbacks.Callback):
    """Seconds of each `fit` it is passed to and of each of its epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.fits: list[dict[str, Any]] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.fits.append({"started": time.perf_counter(), "epoch_s": [], "val_accuracy": []})

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.fits[-1]["epoch_s"].append(round(time.perf_counter() - self._epoch, 2))
        self.fits[-1]["val_accuracy"].append(float((logs or {}).get("val_accuracy", float("nan"))))
        self.fits[-1]["ended"] = time.perf_counter()


class ShareOfBudget(keras.callbacks.Callback):
    """Stop at the end of the epoch after which one more (as long as the median one so far) would pass `deadline`."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.durations: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self.durations.append(now - self._start)
        if now + float(np.median(self.durations)) > self.deadline:
            self.model.stop_training = True


def toolkit_config(train_dir: Path, out: Path, seed: int, overrides: list[str], quick: bool):
    return load_config("finetune", [
        f"data.train={train_dir}", f"data.image_size={SIZE}", f"model.weights={WEIGHTS}", f"output.dir={out}", "output.tensorboard=false",
        "train.verbose=0", f"seed={seed}", *(["train.epochs=1", "finetune.epochs=1", "train.feature_views=1"] if quick else []), *overrides,
    ])  # fmt: skip


def run_toolkit(train_dir: Path, holdout_dir: Path, out: Path, seed: int, overrides: list[str], quick: bool, deadline: float | None = None) -> dict[str, Any]:
    """configs/finetune.yaml with `overrides`, scored on the hold-out set; `deadline` (perf_counter seconds): stop at
    the end of the epoch after which another would pass it."""
    config = toolkit_config(train_dir, out, seed, overrides, quick)
    timer = StageTimer()
    started = time.perf_counter()
    result = train(config, callbacks=[timer] + ([ShareOfBudget(deadline)] if deadline else []))
    seconds = time.perf_counter() - started
    metrics = holdout_metrics(result.run_dir, holdout_dir)
    stages = {name: {"epochs": len(fit["epoch_s"]), "seconds": round(fit["ended"] - fit["started"], 1)} for name, fit in zip(("train", "finetune"), timer.fits)}
    return {
        "seconds": round(seconds, 1), "accuracy": metrics["accuracy"], "log_loss": metrics["log_loss"], "val_accuracy": result.metrics["val"]["accuracy"],
        "best_epoch": result.metrics["best_epoch"], "stages": stages, "stopped": result.metrics["stopped"],
        "outside_fits_s": round(seconds - sum(s["seconds"] for s in stages.values()), 1),  # checks, features, evaluation, report
    }  # fmt: skip


def holdout_metrics(run_dir: Path, holdout_dir: Path) -> dict[str, float]:
    run = load_run(run_dir)
    metrics, _ = evaluate_images(run, load_labeled(str(holdout_dir), None, run.config.data, class_names=run.class_names))
    return metrics


def keras_io_model(size: int, num_classes: int) -> tuple[keras.Model, keras.Model]:
    """(model, base): keras-io's transfer-learning model, with a softmax head for any number of classes."""
    base = keras.applications.Xception(weights=None, include_top=False, input_shape=(size, size, 3))
    base.load_weights(WEIGHTS)
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = layers.RandomFlip("horizontal")(inputs)
    x = layers.RandomRotation(0.1)(x)
    x = layers.Rescaling(scale=1 / 127.5, offset=-1)(x)
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs), base


def run_keras_io(train_dir: Path, holdout_dir: Path, budget: float, seed: int, quick: bool) -> dict[str, Any]:
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    train_ds, val_ds = keras.utils.image_dataset_from_directory(
        train_dir, validation_split=0.2, subset="both", seed=seed, image_size=(SIZE, SIZE), batch_size=32, verbose=False
    )
    names = train_ds.class_names
    model, base = keras_io_model(SIZE, len(names))
    timer = StageTimer()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    head_epochs = 1 if quick else 20
    model.fit(train_ds.prefetch(2), validation_data=val_ds.prefetch(2), epochs=head_epochs, callbacks=[timer, ShareOfBudget(started + budget / 3)], verbose=0)
    base.trainable = True
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    finetune_epochs = 1 if quick else 10_000  # until the budget ends
    model.fit(train_ds.prefetch(2), validation_data=val_ds.prefetch(2), epochs=finetune_epochs, callbacks=[timer, ShareOfBudget(started + budget)], verbose=0)
    seconds = time.perf_counter() - started
    index = {name: i for i, name in enumerate(names)}
    files = sorted(p for p in holdout_dir.glob("*/*") if p.parent.name in index)
    images = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(SIZE, SIZE), interpolation="bilinear")) for p in files])
    labels = np.array([index[p.parent.name] for p in files])
    probs = model.predict(images, batch_size=64, verbose=0)
    stages = {name: {"epochs": len(fit["epoch_s"]), "seconds": round(fit["ended"] - fit["started"], 1)} for name, fit in zip(("head", "finetune"), timer.fits)}
    return {
        "seconds": round(seconds, 1), "accuracy": float(np.mean(probs.argmax(1) == labels)),
        "log_loss": float(log_loss(labels, np.clip(probs, 1e-7, 1), labels=list(range(len(names))))), "stages": stages,
    }  # fmt: skip


def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name in args.sets:
        if not (SHARED / "data" / name).is_dir():
            print(f"{name}: skipped, {SHARED / 'data' / name} not found")
            continue
        train_dir, holdout_dir = make_set(name, work, args.holdout, args.seed, 120 if args.quick else None)
        toolkit = run_toolkit(train_dir, holdout_dir, work / "runs", args.seed, args.overrides, args.quick)
        plain = run_keras_io(train_dir, holdout_dir, toolkit["seconds"], args.seed, args.quick)
        wins = toolkit["accuracy"] > plain["accuracy"] and toolkit["log_loss"] < plain["log_loss"]
        rows[name] = {"toolkit": toolkit, "keras_io": plain, "toolkit_wins": wins}
        print(f"{name} ({SIZE} px): toolkit {toolkit['accuracy']:.4f} acc, {toolkit['log_loss']:.3f} log-loss, {toolkit['seconds']:.0f} s "
              f"{toolkit['stages']} | keras-io {plain['accuracy']:.4f}, {plain['log_loss']:.3f}, {plain['seconds']:.0f} s {plain['stages']}",
              flush=True)  # fmt: skip
    return rows


def features(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Stage 1 alone, the same epochs, with and without cached features, on the first set."""
    name = args.sets[0]
    train_dir, _ = make_set(name, work, args.holdout, args.seed, 120 if args.quick else None)
    epochs = 2 if args.quick else args.head_epochs
    row: dict[str, Any] = {"set": name, "epochs": epochs}
    for cached in (False, True):
        overrides = [*args.overrides, "finetune.epochs=0", f"train.epochs={epochs}", "train.early_stopping_patience=0", f"train.cache_features={cached}"]
        config = toolkit_config(train_dir, work / "runs", args.seed, overrides, args.quick)
        timer = StageTimer()
        started = time.perf_counter()
        train(config, callbacks=[timer])
        fit = timer.fits[0]
        ends = np.cumsum(fit["epoch_s"]) + (fit["started"] - started)  # seconds from the start of train() to each epoch's end
        row["cached" if cached else "frozen_backbone"] = {
            "epoch_s": fit["epoch_s"], "median_epoch_s": float(np.median(fit["epoch_s"])), "before_first_epoch_s": round(fit["started"] - started, 1),
            "val_accuracy": fit["val_accuracy"], "epoch_end_s": [round(float(e), 1) for e in ends],
        }  # fmt: skip
    plain, fast = row["frozen_backbone"], row["cached"]
    target = max(plain["val_accuracy"])
    for side in (plain, fast):
        reached = [t for t, acc in zip(side["epoch_end_s"], side["val_accuracy"]) if acc >= target - 0.01]
        side["seconds_to_within_a_point_of_target"] = reached[0] if reached else None
    row["target_val_accuracy"] = target
    row["epoch_speedup"] = round(plain["median_epoch_s"] / fast["median_epoch_s"], 1)
    row["best_val_accuracy_gap"] = round(max(fast["val_accuracy"]) - target, 4)
    print(json.dumps(row, indent=1), flush=True)
    return row


def sizes(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """configs/finetune.yaml at each of `--sizes` on each set: hold-out accuracy, log-loss and minutes."""
    rows: dict[str, Any] = {}
    for name in args.sets:
        train_dir, holdout_dir = make_set(name, work, args.holdout, args.seed, 120 if args.quick else None)
        for size in args.sizes:
            row = run_toolkit(train_dir, holdout_dir, work / "runs", args.seed, [f"data.image_size={size}", *args.overrides], args.quick)
            row["minutes"] = round(row["seconds"] / 60, 2)
            rows.setdefault(name, {})[str(size)] = row
            print(f"{name} at {size} px: {row['accuracy']:.4f} acc, {row['log_loss']:.3f} log-loss, {row['minutes']:.1f} min {row['stages']}", flush=True)
    return rows


def search_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """configs/finetune_search.yaml (`imgclf tune --then-train`) against configs/finetune.yaml as shipped and against
    configs/finetune.yaml given the search's total time T (its fine-tuning stage runs until T), on the first set."""
    name = args.sets[0]
    train_dir, holdout_dir = make_set(name, work, args.holdout, args.seed, 120 if args.quick else None)
    quick = ["train.epochs=1", "finetune.epochs=1", "train.feature_views=1", "tune.max_trials=2", "tune.space.image_size=[96, 128]"] if args.quick else []
    config = load_config("finetune_search", [
        f"data.train={train_dir}", f"model.weights={WEIGHTS}", f"output.dir={work / 'runs'}", "output.tensorboard=false", "train.verbose=0",
        f"seed={args.seed}", *quick, *args.overrides,
    ])  # fmt: skip
    started = time.perf_counter()
    result = search(config, progress=lambda line: print(line, flush=True))
    searched = time.perf_counter() - started
    trained = train_best(result)
    budget = time.perf_counter() - started
    best = load_config(result.best_config)
    scores = holdout_metrics(trained.run_dir, holdout_dir)
    found = {
        "seconds": round(budget, 1), "search_seconds": round(searched, 1), "trials": len(result.trials),
        "best": {"image_size": best.data.image_size, "unfreeze_blocks": best.finetune.unfreeze_blocks,
                 "finetune_learning_rate": best.finetune.learning_rate, "dropout": best.model.dropout},
        "trials_table": json.loads(result.trials.drop(columns=["message"], errors="ignore").to_json(orient="records")),
        "accuracy": scores["accuracy"], "log_loss": scores["log_loss"],
    }  # fmt: skip
    print(f"search + final run: {found['accuracy']:.4f} acc, {found['log_loss']:.3f} log-loss, {budget:.0f} s, best {found['best']}", flush=True)
    shipped = run_toolkit(train_dir, holdout_dir, work / "runs", args.seed, args.overrides, args.quick)
    print(f"finetune.yaml: {shipped['accuracy']:.4f} acc, {shipped['log_loss']:.3f} log-loss, {shipped['seconds']:.0f} s {shipped['stages']}", flush=True)
    tuned = shipped["stages"]["finetune"]
    pace = tuned["seconds"] / tuned["epochs"]
    epochs = max(tuned["epochs"], round((budget - (shipped["seconds"] - tuned["seconds"])) / pace))
    overrides = [*args.overrides, f"finetune.epochs={epochs}", "train.early_stopping_patience=0"]
    same_time = run_toolkit(train_dir, holdout_dir, work / "runs", args.seed, overrides, args.quick, deadline=time.perf_counter() + budget)
    same_time["planned_finetune_epochs"] = epochs
    print(f"finetune.yaml for T: {same_time['accuracy']:.4f} acc, {same_time['log_loss']:.3f} log-loss, {same_time['seconds']:.0f} s {same_time['stages']}")
    wins = all(found["accuracy"] > r["accuracy"] and found["log_loss"] < r["log_loss"] for r in (shipped, same_time))
    return {"set": name, "search": found, "finetune_yaml": shipped, "finetune_yaml_same_time": same_time, "search_wins": wins}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("compare", "features", "sizes", "search"), default="compare")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--holdout", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--head-epochs", type=int, default=8, help="part features: stage-1 epochs of each side")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160, 224], help="part sizes: the image sizes")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override configs/finetune.yaml (repeatable)")
    parser.add_argument("--quick", action="store_true", help="120 images per set, one epoch per stage: checks that the script runs")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/finetune_<part>.json")
    args = parser.parse_args(argv)
    if not WEIGHTS.is_file():
        print(f"error: {WEIGHTS} not found. Fix: .venv/bin/python ../shared/weights/xception_imagenet.py", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="imgclf-finetune-"))
    report: dict[str, Any] = {"part": args.part, "image_size": SIZE, "holdout_fraction": args.holdout, "seed": args.seed, "overrides": args.overrides}
    try:
        report[args.part] = {"compare": compare, "features": features, "sizes": sizes, "search": search_part}[args.part](args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.output or REPO / "benchmarks" / "results" / f"finetune_{args.part}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
