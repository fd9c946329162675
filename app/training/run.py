"""`train(config) -> TrainResult`: data -> model -> fit (one or two stages) -> best model, metrics and report.

The fit itself is app/training/fitting.py (shared with the LR finder and the tuner); this module adds the run directory.
Both stages share it: `history.csv` numbers epochs across them and `model.keras` is the best epoch of either. A run
interrupted anywhere and started again with the same config continues where it stopped (keras BackupAndRestore,
per stage).

Run directory contents: config.yaml (resolved), model.keras (best epoch), history.csv, metrics.json (written last),
class_names.json, curves.png, lr_schedule.png, val_predictions.csv, per_class.csv, confusion_matrix.png, mistakes.png,
augment_train.yaml / augment_eval.yaml (the exact Albumentations pipelines), tensorboard/ (output.tensorboard).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from app import runs
from app.atomic import atomic_write, write_json
from app.config import Config, ConfigError, dump_config
from app.data import PreparedData, make_datasets, make_tf_dataset, prepare_data
from app.devices import is_chief, make_strategy, precision_policy
from app.inference.prediction import predict_probs
from app.plots import plot_history, plot_lr_schedule
from app.reports import write_report
from app.training.callbacks import BestModelCheckpoint, HistoryCSV, TimeLimit
from app.training.fitting import Stage, build_model, compile_model, fit_stages, plan_stages, seed_everything, set_trainable
from pipelines.augment import build_transform, save_transform

__all__ = ["Stage", "TrainResult", "build_model", "compile_model", "plan_stages", "seed_everything", "set_trainable", "train"]

log = logging.getLogger(__name__)
TENSORBOARD_DIR = "tensorboard"
VAL_PREDICTIONS_FILE = "val_predictions.csv"  # the best model's probabilities per validation image (id, one column per class)


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    metrics: dict[str, Any]  # validation scores of the best model, plus run facts (see metrics.json)
    history: dict[str, list[float]]


def _read_history(path: Path) -> dict[str, list[float]]:
    frame = pd.read_csv(path)
    return {c: [float(v) for v in frame[c]] for c in frame.columns if c not in ("epoch", "stage")}


def train(config: Config, callbacks: Sequence[keras.callbacks.Callback] = (), data: PreparedData | None = None) -> TrainResult:
    """Train per `config` and write everything to a run directory; returns where and how well.

    `callbacks` are added to every stage's `fit` (for notebooks); `data`, already prepared from the same data
    settings (a search hands its own over), saves decoding the images again."""
    started = time.perf_counter()
    strategy = make_strategy(config.train.distribute)  # first: MultiWorkerMirroredStrategy must precede any TF op
    if not is_chief(strategy):  # another worker of a multi-worker run: trains in step with the chief, writes nothing of its own
        with tempfile.TemporaryDirectory(prefix="imgclf-worker-") as scratch:
            return _train(dataclasses.replace(config, output=dataclasses.replace(config.output, dir=scratch, name=None)), strategy, callbacks, data, started)
    return _train(config, strategy, callbacks, data, started)


def _train(
    config: Config, strategy: tf.distribute.Strategy, callbacks: Sequence[keras.callbacks.Callback], data: PreparedData | None, started: float
) -> TrainResult:
    seed_everything(config.seed, config.train.deterministic)
    if config.train.max_minutes is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # each worker would read its own clock, and one stopping an epoch before the others leaves them waiting forever
        raise ConfigError("config key train.max_minutes: not with several workers (multiworker). Fix: null, and train.epochs to size the run")
    time_limit = TimeLimit.after_minutes(config.train.max_minutes)  # counted from here: reading the data is part of the run
    size = (config.data.image_size, config.data.image_size)
    transforms = {"train": build_transform(config.augment.train, size), "eval": build_transform(config.augment.eval, size)}  # before any work
    data = data or prepare_data(config)
    steps_per_epoch = data.steps_per_epoch(config.data.batch_size)
    stages = plan_stages(config, steps_per_epoch)

    with precision_policy(config.train.mixed_precision) as policy:
        with strategy.scope():
            model = build_model(config, data.num_classes, data.multilabel)  # fails fast on a bad model config
        config_text = dump_config(config)
        with runs.open_run_dir(config.output.dir, config.output.name, config.model.name, config_text, config.train.resume) as job:
            run_dir, resumed = job.path, job.resumed
            log.info("%s the run in %s", "resuming" if resumed else "writing", run_dir)
            if not resumed:
                _write_run_files(run_dir, config, config_text, data, stages, steps_per_epoch, transforms)
            backup = run_dir / runs.BACKUP_DIR
            backup.mkdir(exist_ok=True)
            model_path = run_dir / runs.MODEL_FILE
            checkpoint = BestModelCheckpoint(model_path, monitor=config.train.monitor, state_path=backup / "best.json")
            with make_datasets(config, data, strategy) as datasets:  # worker processes, if any, stop here
                fit_history = fit_stages(
                    model,
                    config,
                    stages,
                    datasets,
                    data,
                    strategy=strategy,
                    callbacks=callbacks,
                    stage_callbacks=lambda stage: run_callbacks(run_dir, stage, checkpoint, config.output.tensorboard),
                    restore_best=lambda: checkpoint.restore(model),
                    finished=lambda stage: _finished_stage(run_dir, stage),
                    time_limit=time_limit,
                )
            history = _read_history(run_dir / "history.csv")
            best = runs.load_model_file(model_path)
            probs = predict_probs(best, data.val, config, cache=data.val_cache, verbose=0)
            report = write_report(run_dir, data.val, probs)
            _write_val_predictions(run_dir / VAL_PREDICTIONS_FILE, data.val, probs)
            state = json.loads((backup / "best.json").read_text())
            metrics: dict[str, Any] = {
                "val": report,
                "best_epoch": state["best_epoch"],
                "epochs_run": len(history.get("loss", [])),
                "stage_epochs": fit_history,
                "stopped": _stop_reason(config, stages, fit_history, state["best_epoch"], time_limit),
                "monitor": {config.train.monitor: state["best"]},
                "train_images": len(data.train),
                "val_images": len(data.val),
                "skipped_images": sorted(set(data.train.skipped) | set(data.val.skipped)),
                "replicas": strategy.num_replicas_in_sync,
                "precision_policy": policy,
                "resumed": resumed,
                "seconds": round(time.perf_counter() - started, 1),
            }
            plot_history(history, run_dir / "curves.png")
            if config.output.explain:
                from app.explain import explain_examples  # TensorFlow's gradient code only when asked for

                explain_examples(runs.Run(run_dir, config, best, list(data.train.class_names), data.multilabel), data.val, data.val_cache)
            job.finish(metrics)
            shutil.rmtree(backup, ignore_errors=True)
    return TrainResult(run_dir=run_dir, model_path=model_path, metrics=metrics, history=history)


def _write_val_predictions(path: Path, images: Any, probs: np.ndarray) -> None:
    frame = pd.concat([pd.DataFrame({"id": list(images.ids)}), pd.DataFrame(probs, columns=list(images.class_names))], axis=1)
    atomic_write(path, lambda p: frame.to_csv(p, index=False, float_format="%.6f"))


def _stop_reason(config: Config, stages: list[Stage], stage_epochs: dict[str, int], best_epoch: int, time_limit: TimeLimit | None = None) -> str:
    """Why the run ended, in words (metrics.json `stopped`, printed by the CLI)."""
    if time_limit is not None and time_limit.stopped_epoch is not None:
        planned = sum(stage.epochs for stage in stages)
        return (
            f"stopped at the time limit (train.max_minutes={config.train.max_minutes:g}) after epoch {time_limit.stopped_epoch} of {planned}; "
            f"the best epoch by {config.train.monitor}, {best_epoch}, is kept"
        )
    done = 0
    for stage in stages:
        ran = stage_epochs.get(stage.name, stage.epochs)
        done += ran
        if ran < stage.epochs:
            return (
                f"early stopping in stage {stage.name!r} after epoch {done} ({ran} of its {stage.epochs}): {config.train.monitor} had not "
                f"improved for {config.train.early_stopping_patience} epochs; the best epoch, {best_epoch}, is kept"
            )
    return f"ran all {done} planned epochs; the best epoch by {config.train.monitor}, {best_epoch}, is kept"


def run_callbacks(run_dir: Path, stage: Stage, checkpoint: BestModelCheckpoint, tensorboard: bool) -> list[keras.callbacks.Callback]:
    """What a run adds to each stage: a marker when the stage ends, BackupAndRestore, the best checkpoint, history.csv,
    and the TensorBoard logs (losses, metrics and learning rate per epoch; `output.tensorboard`)."""
    backup = run_dir / runs.BACKUP_DIR
    history = HistoryCSV(run_dir / "history.csv", stage.name)
    done = keras.callbacks.LambdaCallback(on_train_end=lambda logs: write_json(backup / f"{stage.name}.done.json", {"last_epoch": history.last_epoch}))
    board = [keras.callbacks.TensorBoard(str(run_dir / TENSORBOARD_DIR), write_graph=False, profile_batch=0)] if tensorboard else []
    return [done, keras.callbacks.BackupAndRestore(str(backup / stage.name), double_checkpoint=True), checkpoint, history, *board]


def _write_batch_grid(run_dir: Path, config: Config, data: PreparedData) -> None:
    """TensorBoard's Images tab: one training batch as the augmentation makes it (up to 16 images in a 4x4 grid)."""
    count = min(16, len(data.train))
    cache = None if data.train_cache is None else data.train_cache[:count]
    cfg = dataclasses.replace(config.data, batch_size=count)
    with make_tf_dataset(data.train.subset(range(count)), cfg, config.augment.train, training=True, seed=config.seed, cache=cache) as batch:
        images = next(iter(batch.dataset))[0].numpy()
    side = math.ceil(math.sqrt(count))
    grid = np.zeros((side * side, *images.shape[1:]), dtype=np.uint8)
    grid[:count] = images
    size = images.shape[1]
    grid = grid.reshape(side, side, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(1, side * size, side * size, 3)
    with tf.summary.create_file_writer(str(run_dir / TENSORBOARD_DIR / "train")).as_default():
        tf.summary.image("augmented training batch", grid, step=0)


def _finished_stage(run_dir: Path, stage: Stage) -> int | None:
    """The last epoch of a stage this run finished before an interruption in a later stage."""
    done = run_dir / runs.BACKUP_DIR / f"{stage.name}.done.json"
    return json.loads(done.read_text())["last_epoch"] if done.is_file() else None


def _write_run_files(
    run_dir: Path, config: Config, config_text: str, data: PreparedData, stages: list[Stage], steps_per_epoch: int, transforms: dict[str, Any]
) -> None:
    write_json(run_dir / runs.CLASSES_FILE, {"class_names": list(data.train.class_names), "multilabel": data.multilabel})
    save_transform(transforms["train"], run_dir / "augment_train.yaml")
    save_transform(transforms["eval"], run_dir / "augment_eval.yaml")
    if config.output.tensorboard:
        _write_batch_grid(run_dir, config, data)
    plot_lr_schedule([(s.name, s.lr, s.epochs) for s in stages], steps_per_epoch, run_dir / "lr_schedule.png")
