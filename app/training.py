"""`train(config) -> TrainResult`: data -> model -> fit (one or two stages) -> best model, metrics and report.

Stage 1 (`train`) trains the whole baseline CNN, or the head of a pretrained backbone kept frozen. Stage 2
(`finetune`, when finetune.epochs > 0) unfreezes the top of the backbone, BatchNorm layers staying frozen, and
recompiles at a lower rate. Both stages share one run directory: `history.csv` numbers epochs across them and
`model.keras` is the best epoch of either. A run interrupted anywhere and started again with the same config
continues where it stopped (keras BackupAndRestore, per stage).

Run directory contents: config.yaml (resolved), model.keras (best epoch), history.csv, metrics.json (written last),
class_names.json, curves.png, lr_schedule.png, per_class.csv, confusion_matrix.png, mistakes.png,
augment_train.yaml / augment_eval.yaml (the exact Albumentations pipelines).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
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
from app.atomic import write_json, write_text
from app.callbacks import BestModelCheckpoint, HistoryCSV, check_plateau_callbacks, monitor_mode
from app.config import Config, ScheduleConfig, dump_config
from app.data import close_workers, load_train_val, make_tf_dataset, prepare, training_workers
from app.devices import make_strategy, precision_policy
from app.models import create_model, is_backbone
from app.models.backbones import find_backbone, freeze_backbone, unfreeze_model
from app.optimization import class_weights, make_loss_and_metrics, make_optimizer
from app.plots import plot_history, plot_lr_schedule
from app.prediction import predict_probs
from app.reports import write_report
from app.schedules import make_schedule
from pipelines.augment import build_transform, save_transform
from pipelines.sources import ImageSet

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    metrics: dict[str, Any]  # validation scores of the best model, plus run facts (see metrics.json)
    history: dict[str, list[float]]


@dataclass(frozen=True)
class Stage:
    """One `model.fit` call: its epochs, peak learning rate and schedule, and what of the backbone trains."""

    name: str  # "train" | "finetune"
    epochs: int
    learning_rate: float
    schedule: ScheduleConfig
    unfreeze_blocks: int | None = None
    unfreeze_layers: int | None = None


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with `deterministic`, also make TF ops deterministic (same metrics on CPU)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def plan_stages(config: Config) -> list[Stage]:
    """Stage 1, and stage 2 when finetune.epochs > 0 (only for a backbone)."""
    stages = [Stage("train", config.train.epochs, config.train.learning_rate, config.train.schedule)]
    ft = config.finetune
    if ft.epochs > 0:
        if not is_backbone(config.model.name):
            raise ValueError(
                f"finetune.epochs={ft.epochs}, but model.name={config.model.name} has no pretrained backbone to unfreeze. "
                "Fix: set finetune.epochs=0, or choose a backbone (imgclf models lists them)."
            )
        stages.append(Stage("finetune", ft.epochs, ft.learning_rate, ft.schedule, ft.unfreeze_blocks, ft.unfreeze_layers))
    return stages


def stage_schedules(config: Config, steps_per_epoch: int) -> list[Any]:
    """Each stage's learning-rate schedule (checks warmup lengths and schedule options before anything is written)."""
    return [make_schedule(s.schedule, s.learning_rate, s.epochs, steps_per_epoch) for s in plan_stages(config)]


def build_model(config: Config, num_classes: int, multilabel: bool) -> keras.Model:
    mc = config.model
    size = config.data.image_size
    return create_model(
        mc.name, input_shape=(size, size, 3), num_classes=num_classes, multilabel=multilabel, weights=mc.weights, dropout=mc.dropout, blocks=mc.blocks
    )


def compile_model(model: keras.Model, config: Config, learning_rate: Any, multilabel: bool) -> None:
    """The configured optimizer at `learning_rate` (a number or schedule), and the loss and metrics for the label type."""
    tc = config.train
    loss, metrics = make_loss_and_metrics(multilabel, tc.label_smoothing)
    model.compile(optimizer=make_optimizer(tc.optimizer, learning_rate, tc.weight_decay, tc.momentum), loss=loss, metrics=metrics)


def set_trainable(model: keras.Model, stage: Stage, config: Config) -> None:
    """Stage 1 freezes a pretrained backbone (train.freeze_backbone); stage 2 unfreezes its top."""
    if find_backbone(model) is None:
        return
    if stage.name == "finetune":
        unfrozen = unfreeze_model(model, blocks=stage.unfreeze_blocks, num_layers=stage.unfreeze_layers)
        log.info("fine-tuning %d backbone layers with weights (BatchNormalization stays frozen)", len(unfrozen))
    elif config.train.freeze_backbone:
        freeze_backbone(model)


def _stage_callbacks(config: Config, stage: Stage, run_dir: Path, checkpoint: BestModelCheckpoint, history: HistoryCSV) -> list[keras.callbacks.Callback]:
    tc = config.train
    backup = run_dir / runs.BACKUP_DIR
    done = keras.callbacks.LambdaCallback(on_train_end=lambda logs: write_json(backup / f"{stage.name}.done.json", {"last_epoch": history.last_epoch}))
    callbacks: list[keras.callbacks.Callback] = [done, keras.callbacks.BackupAndRestore(str(backup / stage.name), double_checkpoint=True)]
    callbacks += [checkpoint, history]
    if tc.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(tc.monitor, patience=tc.early_stopping_patience, mode=monitor_mode(tc.monitor)))
    if stage.schedule.name == "plateau":
        rate = stage.schedule.decay_rate if stage.schedule.decay_rate is not None else 0.1
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(tc.monitor, factor=rate, patience=stage.schedule.patience, min_lr=stage.schedule.min_lr, mode=monitor_mode(tc.monitor))
        )
    return callbacks


def _read_history(path: Path) -> dict[str, list[float]]:
    frame = pd.read_csv(path)
    return {c: [float(v) for v in frame[c]] for c in frame.columns if c not in ("epoch", "stage")}


def train(config: Config, callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Train per `config` and write everything to a run directory; returns where and how well.

    `callbacks` are added to every stage's `fit` (for notebooks and the tuner)."""
    started = time.perf_counter()
    strategy = make_strategy(config.train.distribute)  # first: MultiWorkerMirroredStrategy must precede any TF op
    seed_everything(config.seed, config.train.deterministic)
    train_set, val_set = load_train_val(config.data, config.seed)
    train_set, train_cache = prepare(train_set, config.data)
    val_set, val_cache = prepare(val_set, config.data)
    weights = class_weights(train_set.labels, train_set.class_names, config.train.class_weight, train_set.multilabel)
    steps_per_epoch = math.ceil(len(train_set) / config.data.batch_size)
    stages = plan_stages(config)
    schedules = stage_schedules(config, steps_per_epoch)

    with precision_policy(config.train.mixed_precision) as policy:
        with strategy.scope():
            model = build_model(config, train_set.num_classes, train_set.multilabel)  # fails fast on a bad model config
        config_text = dump_config(config)
        run_dir, resumed = runs.open_run_dir(config.output.dir, config.output.name, config.model.name, config_text, config.train.resume)
        try:
            log.info("%s the run in %s", "resuming" if resumed else "writing", run_dir)
            if not resumed:
                _write_run_files(run_dir, config, config_text, train_set, schedules, steps_per_epoch)
            train_ds, fed_ds, val_ds = _make_datasets(config, strategy, train_set, val_set, train_cache, val_cache)
            try:
                fit_history = _run_stages(model, config, stages, schedules, run_dir, strategy, weights, fed_ds, val_ds, callbacks, train_set.multilabel)
            finally:
                close_workers(train_ds)  # worker processes, if any, stop here rather than at garbage collection
            history = _read_history(run_dir / "history.csv")
            best = keras.saving.load_model(run_dir / runs.MODEL_FILE, safe_mode=True)
            probs = predict_probs(best, val_set, config, cache=val_cache, verbose=0)
            report = write_report(run_dir, val_set, probs)
            state = json.loads((run_dir / runs.BACKUP_DIR / "best.json").read_text())
            metrics: dict[str, Any] = {
                "val": report,
                "best_epoch": state["best_epoch"],
                "epochs_run": len(history.get("loss", [])),
                "stage_epochs": fit_history,
                "monitor": {config.train.monitor: state["best"]},
                "train_images": len(train_set),
                "val_images": len(val_set),
                "skipped_images": sorted(set(train_set.skipped) | set(val_set.skipped)),
                "replicas": strategy.num_replicas_in_sync,
                "precision_policy": policy,
                "resumed": resumed,
                "seconds": round(time.perf_counter() - started, 1),
            }
            plot_history(history, run_dir / "curves.png")
            write_json(run_dir / runs.FINISHED_FILE, metrics)
            shutil.rmtree(run_dir / runs.BACKUP_DIR, ignore_errors=True)
        finally:
            runs.release_run_dir(run_dir)
    return TrainResult(run_dir=run_dir, model_path=run_dir / runs.MODEL_FILE, metrics=metrics, history=history)


def _write_run_files(run_dir: Path, config: Config, config_text: str, train_set: ImageSet, schedules: list[Any], steps_per_epoch: int) -> None:
    write_text(run_dir / runs.CONFIG_FILE, config_text)
    write_json(run_dir / runs.CLASSES_FILE, {"class_names": list(train_set.class_names), "multilabel": train_set.multilabel})
    size = (config.data.image_size, config.data.image_size)
    save_transform(build_transform(config.augment.train, size), run_dir / "augment_train.yaml")
    save_transform(build_transform(config.augment.eval, size), run_dir / "augment_eval.yaml")
    stages = plan_stages(config)
    plot_lr_schedule([(s.name, sched, s.epochs) for s, sched in zip(stages, schedules, strict=True)], steps_per_epoch, run_dir / "lr_schedule.png")


def _make_datasets(
    config: Config, strategy: tf.distribute.Strategy, train_set: ImageSet, val_set: ImageSet, train_cache: np.ndarray | None, val_cache: np.ndarray | None
) -> tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset]:
    """(training set as made, training set as fed to fit, validation set). Close the first's workers when done."""
    # Several replicas: Keras 3.15's fit/evaluate under MirroredStrategy fail on a short last batch that splits
    # unevenly (AddN shape error), so whole batches only; the final metrics (predict) still use every image.
    whole = strategy.num_replicas_in_sync > 1
    if whole and min(len(train_set), len(val_set)) < config.data.batch_size:
        raise ValueError(
            f"with {strategy.num_replicas_in_sync} replicas every batch must be whole, and the training or validation set "
            f"is smaller than one batch of {config.data.batch_size}. Fix: lower data.batch_size."
        )
    if whole and len(val_set) % config.data.batch_size:
        left_out = len(val_set) % config.data.batch_size
        log.info("%d validation images are left out of the per-epoch scores (whole batches on %d replicas)", left_out, strategy.num_replicas_in_sync)
    val_ds = make_tf_dataset(val_set, config.data, config.augment.eval, training=False, seed=config.seed, cache=val_cache, drop_remainder=whole)
    workers = training_workers(config.data, len(train_set))
    train_ds = make_tf_dataset(
        train_set, config.data, config.augment.train, training=True, seed=config.seed, cache=train_cache, drop_remainder=whole, workers=workers
    )
    fed_ds = train_ds
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        fed_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    return train_ds, fed_ds, val_ds


def _run_stages(
    model: keras.Model,
    config: Config,
    stages: list[Stage],
    schedules: list[Any],
    run_dir: Path,
    strategy: tf.distribute.Strategy,
    weights: dict[int, float] | None,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    multilabel: bool,
) -> dict[str, int]:
    """One `fit` per stage not finished yet (a resumed run skips finished ones); returns epochs per stage,
    numbered across stages."""
    backup = run_dir / runs.BACKUP_DIR
    backup.mkdir(exist_ok=True)
    model_path = run_dir / runs.MODEL_FILE
    checkpoint = BestModelCheckpoint(model_path, monitor=config.train.monitor, state_path=backup / "best.json")
    epoch, stage_epochs = 0, {}
    for stage, schedule in zip(stages, schedules, strict=True):
        done = backup / f"{stage.name}.done.json"
        if done.is_file():  # finished before an interruption in a later stage
            last = json.loads(done.read_text())["last_epoch"]
            stage_epochs[stage.name], epoch = last - epoch, last
            continue
        set_trainable(model, stage, config)
        if stage.name != "train" and model_path.is_file():
            model.load_weights(model_path)  # stage 2 starts from the best weights of stage 1
        with strategy.scope():
            compile_model(model, config, schedule, multilabel)
        history = HistoryCSV(run_dir / "history.csv", stage.name)
        callbacks = [*_stage_callbacks(config, stage, run_dir, checkpoint, history), *extra_callbacks]
        check_plateau_callbacks(callbacks, model.optimizer, stage.schedule.name)
        model._initial_epoch = None  # a restore in an earlier stage's fit must not carry over (Keras keeps it on the model)
        model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=epoch,
            epochs=epoch + stage.epochs,
            class_weight=weights,
            callbacks=callbacks,
            verbose=config.train.verbose,
            shuffle=False,  # the dataset shuffles
        )
        last = history.last_epoch or epoch
        stage_epochs[stage.name], epoch = last - epoch, last
    return stage_epochs
