"""`train(config) -> TrainResult`: data -> model -> fit -> best model, metrics and plots in a fresh run directory.

Run directory contents: config.yaml (resolved), model.keras (best epoch), history.csv, metrics.json,
class_names.json, curves.png, augment_train.yaml / augment_eval.yaml (the exact Albumentations pipelines).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from app import runs
from app.atomic import write_json, write_text
from app.callbacks import BestModelCheckpoint, monitor_mode
from app.config import Config, dump_config
from app.data import load_train_val, make_tf_dataset, prepare
from app.evaluation import classification_metrics
from app.models import create_model
from app.plots import plot_history
from app.prediction import predict_probs
from app.schedules import make_schedule
from pipelines.augment import build_transform, save_transform

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    metrics: dict[str, Any]  # validation scores of the best model, plus run facts (see metrics.json)
    history: dict[str, list[float]]


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with `deterministic`, also make TF ops deterministic (same metrics on CPU)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def compile_model(model: keras.Model, config: Config, steps_per_epoch: int, multilabel: bool) -> None:
    """Optimizer with the configured schedule; the loss and metrics that fit the label type."""
    tc = config.train
    schedule = make_schedule(tc.schedule, tc.learning_rate, tc.epochs * steps_per_epoch, tc.warmup_epochs * steps_per_epoch)
    optimizers = {"adam": lambda: keras.optimizers.Adam(schedule), "sgd": lambda: keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)}
    if tc.optimizer not in optimizers:
        raise ValueError(f"unknown optimizer {tc.optimizer!r}. Fix: set train.optimizer to one of {', '.join(optimizers)}")
    if multilabel:
        loss, metrics = keras.losses.BinaryCrossentropy(), [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(multi_label=True, name="auc")]
    else:
        loss, metrics = keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=optimizers[tc.optimizer](), loss=loss, metrics=metrics)


def build_model(config: Config, num_classes: int, multilabel: bool) -> keras.Model:
    mc = config.model
    size = config.data.image_size
    return create_model(mc.name, input_shape=(size, size, 3), num_classes=num_classes, multilabel=multilabel, blocks=mc.blocks, dropout=mc.dropout)


def train(config: Config) -> TrainResult:
    """Train per `config` and write everything to a new run directory; returns where and how well."""
    started = time.perf_counter()
    seed_everything(config.seed, config.train.deterministic)
    train_set, val_set = load_train_val(config.data, config.seed)
    train_set, train_cache = prepare(train_set, config.data)
    val_set, val_cache = prepare(val_set, config.data)
    model = build_model(config, train_set.num_classes, train_set.multilabel)  # fails fast on a bad model config

    run_dir = runs.create_run_dir(config.output.dir, config.output.name, config.model.name)
    log.info("writing the run to %s", run_dir)
    write_text(run_dir / runs.CONFIG_FILE, dump_config(config))
    write_json(run_dir / runs.CLASSES_FILE, {"class_names": list(train_set.class_names), "multilabel": train_set.multilabel})
    size = (config.data.image_size, config.data.image_size)
    save_transform(build_transform(config.augment.train, size), run_dir / "augment_train.yaml")
    save_transform(build_transform(config.augment.eval, size), run_dir / "augment_eval.yaml")

    train_ds = make_tf_dataset(train_set, config.data, config.augment.train, training=True, seed=config.seed, cache=train_cache)
    val_ds = make_tf_dataset(val_set, config.data, config.augment.eval, training=False, seed=config.seed, cache=val_cache)
    steps_per_epoch = math.ceil(len(train_set) / config.data.batch_size)
    compile_model(model, config, steps_per_epoch, train_set.multilabel)

    model_path = run_dir / runs.MODEL_FILE
    checkpoint = BestModelCheckpoint(model_path, monitor=config.train.monitor)
    callbacks: list[keras.callbacks.Callback] = [checkpoint, keras.callbacks.CSVLogger(str(run_dir / "history.csv"))]
    if config.train.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(config.train.monitor, patience=config.train.early_stopping_patience, mode=monitor_mode(config.train.monitor))
        )
    fit = model.fit(train_ds, validation_data=val_ds, epochs=config.train.epochs, callbacks=callbacks, verbose=config.train.verbose, shuffle=False)  # the dataset shuffles
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

    best = keras.saving.load_model(model_path, safe_mode=True)
    probs = predict_probs(best, val_set, config, cache=val_cache, verbose=0)
    metrics: dict[str, Any] = {
        "val": classification_metrics(val_set.labels, probs, val_set.multilabel),
        "best_epoch": checkpoint.best_epoch,
        "epochs_run": len(history.get("loss", [])),
        "monitor": {config.train.monitor: checkpoint.best},
        "train_images": len(train_set),
        "val_images": len(val_set),
        "skipped_images": sorted(set(train_set.skipped) | set(val_set.skipped)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run_dir / "metrics.json", metrics)
    plot_history(history, run_dir / "curves.png")
    return TrainResult(run_dir=run_dir, model_path=model_path, metrics=metrics, history=history)
