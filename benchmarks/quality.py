"""Quality benchmark: the toolkit's default config against the plain Keras model a user would otherwise write, at the
same wall-clock budget, on real photo sets. The default must win.

    .venv/bin/python benchmarks/quality.py                    # every set: about 35 minutes on 2 cores
    .venv/bin/python benchmarks/quality.py --sets flowers     # one set
    .venv/bin/python benchmarks/quality.py --quick            # a smoke run: few images, one epoch

For each set, in one run:
  1. a stratified, seeded hold-out test set (hymenoptera: its own val/ folder) that neither side sees in training;
  2. toolkit: configs/example.yaml with only `data.train` (and the image size) changed, as a new user runs it;
     its wall time W, from the start of `train()` to the saved model (data loading and checks included);
  3. plain Keras: the model of the TensorFlow/keras-io image-classification tutorial (RandomFlip + RandomRotation,
     Rescaling, three conv-pool layers, dropout, a dense layer, Adam 1e-3), fed by
     `keras.utils.image_dataset_from_directory` with its own 20 % validation split, trained until W has passed
     (the epoch in progress then ends; its time is counted);
  4. both scored on the hold-out set: accuracy, log-loss, seconds.
Sets: flowers (5 classes, 4,317 photos), hymenoptera (ants/bees, 398), dog-breed sample (120 breeds, 1,000: both
sides stay near chance from scratch, reported for completeness), digits (scikit-learn's 8x8 scans, 32 px).
"""

from __future__ import annotations

import argparse
import json
import math
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

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from app.config import load_config  # noqa: E402
from app.data import load_labeled  # noqa: E402
from app.inference.evaluation import evaluate_images  # noqa: E402
from app.runs import load_run  # noqa: E402
from app.training.run import train  # noqa: E402
from pipelines.datasets.digits import export_digits  # noqa: E402
from pipelines.sources import ImageSet, from_csv, from_folder  # noqa: E402
from pipelines.split import train_val_split  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SETS = ("flowers", "hymenoptera", "dog-breed", "digits")
SIZES = {"flowers": 64, "hymenoptera": 64, "dog-breed": 64, "digits": 32}


def link_tree(images: ImageSet, target: Path) -> Path:
    """target/<class>/<id><suffix> as symbolic links: the folder-per-class layout both sides read."""
    for path, image_id, label in zip(images.paths, images.ids, images.labels):
        link = target / images.class_names[int(label)] / (Path(image_id).name + Path(path).suffix.lower())
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(path).resolve())
    return target


def split_holdout(source: Path, work: Path, fraction: float, seed: int, limit: int | None) -> tuple[Path, Path]:
    """work/train/<class>/ and work/holdout/<class>/ as symbolic links to the images of `source`."""
    images = from_folder(source)
    paths, labels = list(images.paths), list(images.labels)
    if limit:
        paths, _, labels, _ = train_test_split(paths, labels, train_size=limit, stratify=labels, random_state=seed)
    kept, held, kept_labels, held_labels = train_test_split(paths, labels, test_size=fraction, stratify=labels, random_state=seed)
    for name, group, group_labels in (("train", kept, kept_labels), ("holdout", held, held_labels)):
        for path, label in zip(group, group_labels):
            target = work / name / images.class_names[label] / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path(path).resolve())
    return work / "train", work / "holdout"


def make_set(name: str, work: Path, holdout: float, seed: int, limit: int | None) -> tuple[Path, Path]:
    """(training folder, hold-out folder) for one set, under work/name/."""
    if name == "hymenoptera":
        train_set, test_set = from_folder(SHARED / name / "train"), from_folder(SHARED / name / "val")
    else:
        if name == "flowers":
            labeled = from_folder(SHARED / name)
        elif name == "dog-breed":
            labeled = from_csv(SHARED / name / "labels.csv", SHARED / name / "train", id_column="id", label_column="breed")
        else:
            digits = export_digits(work / "digits-export")
            labeled = from_csv(digits / "train.csv", digits / "train")
            test_set = from_csv(digits / "test_labels.csv", digits / "test", class_names=labeled.class_names)
        if name != "digits":
            keep, held = train_val_split(labeled.labels, holdout, seed)
            train_set, test_set = labeled.subset(keep), labeled.subset(held)
        else:
            train_set = labeled
    if limit:
        rng = np.random.default_rng(seed)
        train_set = train_set.subset(np.sort(rng.permutation(len(train_set))[:limit]))
        seen = np.flatnonzero(np.isin(test_set.labels, train_set.labels))  # classes the smaller training set still has
        test_set = test_set.subset(np.sort(rng.permutation(seen)[: max(limit // 4, 20)]))
    return link_tree(train_set, work / name / "train"), link_tree(test_set, work / name / "holdout")


def run_toolkit(train_dir: Path, holdout_dir: Path, size: int, out: Path, seed: int, overrides: list[str], quick: bool) -> dict[str, Any]:
    config = load_config(
        "example",
        [
            f"data.train={train_dir}",
            f"data.image_size={size}",
            f"output.dir={out}",
            "train.verbose=0",
            f"seed={seed}",
            *(["train.epochs=1"] if quick else []),
            *overrides,
        ],
    )
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    run = load_run(result.run_dir)
    metrics, _ = evaluate_images(run, load_labeled(str(holdout_dir), None, config.data, class_names=run.class_names))
    return {
        "seconds": round(seconds, 1),
        "accuracy": metrics["accuracy"],
        "log_loss": metrics["log_loss"],
        "val_accuracy": result.metrics["val"]["accuracy"],
        "epochs_run": result.metrics["epochs_run"],
        "best_epoch": result.metrics["best_epoch"],
        "stopped": result.metrics.get("stopped"),
    }


def plain_keras_model(size: int, num_classes: int) -> keras.Model:
    """The tutorial's model (tensorflow.org/tutorials/images/classification, keras-io's simple CNNs)."""
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            layers.RandomFlip("horizontal"),
            layers.RandomRotation(0.1),
            layers.Rescaling(1.0 / 255),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Dropout(0.2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the first epoch that ends after `seconds` from the start of `fit`."""

    def __init__(self, seconds: float, started: float):
        super().__init__()
        self.seconds, self.started = seconds, started

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if time.perf_counter() - self.started >= self.seconds:
            self.model.stop_training = True


def run_plain(train_dir: Path, holdout_dir: Path, size: int, budget: float, seed: int) -> dict[str, Any]:
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    train_ds, val_ds = keras.utils.image_dataset_from_directory(
        train_dir, validation_split=0.2, subset="both", seed=seed, image_size=(size, size), batch_size=32
    )
    num_classes = len(train_ds.class_names)
    model = plain_keras_model(size, num_classes)
    history = model.fit(train_ds.prefetch(2), validation_data=val_ds.prefetch(2), epochs=10_000, callbacks=[TimeBudget(budget, started)], verbose=0)
    seconds = time.perf_counter() - started
    index = {name: i for i, name in enumerate(train_ds.class_names)}
    files = sorted(p for p in holdout_dir.glob("*/*") if p.parent.name in index)
    images = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size), interpolation="bilinear")) for p in files])
    labels = np.array([index[p.parent.name] for p in files])
    probs = model.predict(images, batch_size=64, verbose=0)
    return {
        "seconds": round(seconds, 1),
        "accuracy": float(np.mean(probs.argmax(1) == labels)),
        "log_loss": float(log_loss(labels, np.clip(probs, 1e-7, 1), labels=list(range(num_classes)))),
        "val_accuracy": float(history.history["val_accuracy"][-1]),
        "epochs_run": len(history.history["loss"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--holdout", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the toolkit's config (configs/example.yaml) to try another default (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="200 images per set, one epoch: checks that the script runs")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "quality.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="imgclf-quality-"))
    report: dict[str, Any] = {"holdout_fraction": args.holdout, "seed": args.seed, "overrides": args.overrides, "sets": {}}
    try:
        for name in args.sets:
            if name != "digits" and not (SHARED / name).is_dir():
                print(f"{name}: skipped, {SHARED / name} not found")
                continue
            size = 32 if args.quick else SIZES[name]
            train_dir, holdout_dir = make_set(name, work, args.holdout, args.seed, 200 if args.quick else None)
            toolkit = run_toolkit(train_dir, holdout_dir, size, work / "runs", args.seed, args.overrides, args.quick)
            plain = run_plain(train_dir, holdout_dir, size, toolkit["seconds"], args.seed)
            row = {
                "image_size": size,
                "toolkit": toolkit,
                "plain_keras": plain,
                "accuracy_gain": round(toolkit["accuracy"] - plain["accuracy"], 4),
                "toolkit_wins": toolkit["accuracy"] > plain["accuracy"] and toolkit["log_loss"] < plain["log_loss"],
            }
            report["sets"][name] = row
            print(
                f"{name} ({size} px): toolkit {toolkit['accuracy']:.4f} acc, {toolkit['log_loss']:.3f} log-loss, {toolkit['seconds']:.0f} s, "
                f"{toolkit['epochs_run']} epochs | plain Keras {plain['accuracy']:.4f}, {plain['log_loss']:.3f}, {plain['seconds']:.0f} s, "
                f"{plain['epochs_run']} epochs",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
