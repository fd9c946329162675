"""The one fit path: build and compile a model from a config, then fit it through its stages.

`train()` (app/training/run.py), the LR finder and every trial of a search (tuning/) use these pieces, each adding only
its own callbacks: a run writes checkpoints and history into its run directory, a trial keeps its best weights in
memory and reports its score to the tuner.

Stage 1 (`train`) trains the whole baseline CNN, or the head of a pretrained backbone kept frozen (by default on the
backbone's features computed once: app/training/features.py). Stage 2
(`finetune`, when finetune.epochs > 0) unfreezes the top of the backbone, BatchNorm layers staying frozen, and
recompiles at a lower rate, starting from the best weights of stage 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from app import keras_compat
from app.config import Config, ConfigError, ScheduleConfig
from app.data import Datasets, PreparedData
from app.models import create_model, is_backbone
from app.models.backbones import find_backbone, freeze_backbone, unfreeze_model
from app.training.callbacks import TimeLimit, check_plateau_callbacks, monitor_mode
from app.training.features import head_on_features, uses_cached_features
from app.training.mixing import mix_batches, mixes_labels
from app.training.optimization import make_loss_and_metrics, make_optimizer
from app.training.progressive import ProgressiveResizing
from app.training.schedules import Schedule, make_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One `model.fit` call: its epochs, peak learning rate, schedule (options and the built schedule for its
    steps per epoch), and what of the backbone trains."""

    name: str  # "train" | "finetune"
    epochs: int
    learning_rate: float
    schedule: ScheduleConfig
    lr: float | Schedule  # the learning rate the optimizer gets: a number or a schedule over this stage's steps
    unfreeze_blocks: int | None = None
    unfreeze_layers: int | None = None


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with `deterministic`, also make TF ops deterministic (same metrics on CPU)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def plan_stages(config: Config, steps_per_epoch: int) -> list[Stage]:
    """Stage 1, and stage 2 when finetune.epochs > 0 (only for a backbone), each with its schedule built: bad
    schedule options (say, a warmup longer than the stage) fail here, before anything is written."""
    tc, ft = config.train, config.finetune
    stages = [Stage("train", tc.epochs, tc.learning_rate, tc.schedule, make_schedule(tc.schedule, tc.learning_rate, tc.epochs, steps_per_epoch))]
    if ft.epochs > 0:
        if not is_backbone(config.model.name):
            raise ConfigError(
                f"finetune.epochs={ft.epochs}, but model.name={config.model.name} has no pretrained backbone to unfreeze. "
                "Fix: set finetune.epochs=0, or choose a backbone (imgclf models lists them)."
            )
        lr = make_schedule(ft.schedule, ft.learning_rate, ft.epochs, steps_per_epoch)
        stages.append(Stage("finetune", ft.epochs, ft.learning_rate, ft.schedule, lr, ft.unfreeze_blocks, ft.unfreeze_layers))
    return stages


def build_model(config: Config, num_classes: int, multilabel: bool) -> keras.Model:
    """The model of `config.model` for square uint8 images of `data.image_size` pixels."""
    mc = config.model
    size = config.data.image_size
    return create_model(
        mc.name, input_shape=(size, size, 3), num_classes=num_classes, multilabel=multilabel, weights=mc.weights, dropout=mc.dropout, blocks=mc.blocks
    )


def compile_model(model: keras.Model, config: Config, learning_rate: Any, multilabel: bool) -> None:
    """The configured optimizer at `learning_rate` (a number or schedule), and the loss and metrics for the label type."""
    tc = config.train
    loss, metrics = make_loss_and_metrics(multilabel, tc.label_smoothing, soft_labels=mixes_labels(config))
    model.compile(optimizer=make_optimizer(tc.optimizer, learning_rate, tc.weight_decay, tc.momentum, ema=tc.ema), loss=loss, metrics=metrics)
    # Create the optimizer's slots now, eagerly: created inside the first traced train step instead, TensorFlow 2.21
    # keeps their initialisers (16 graph functions for a 3-layer model) for the life of the process, whatever
    # clear_session does: ~4 MB per model, which a search of many trials would pile up.
    model.optimizer.build(model.trainable_variables)


def set_trainable(model: keras.Model, stage: Stage, config: Config) -> None:
    """Stage 1 freezes a pretrained backbone (train.freeze_backbone); stage 2 unfreezes its top."""
    if find_backbone(model) is None:
        return
    if stage.name == "finetune":
        unfrozen = unfreeze_model(model, blocks=stage.unfreeze_blocks, num_layers=stage.unfreeze_layers)
        log.info("fine-tuning %d backbone layers with weights (BatchNormalization stays frozen)", len(unfrozen))
    elif config.train.freeze_backbone:
        freeze_backbone(model)


def early_stopping_start(config: Config, stage: Stage) -> int:
    """Epochs a stage runs before early stopping may end it: `train.early_stopping_start`, by default half of the
    stage. Early on the validation loss is noisy while the model still learns (measured: a 2,000-photo set stopped
    at epoch 7 of 30 with 0.615 test accuracy, 0.78 when left to run), and a decaying schedule does its best work last."""
    start = config.train.early_stopping_start
    return stage.epochs // 2 if start is None else start


def standard_callbacks(config: Config, stage: Stage, initial_epoch: int = 0) -> list[keras.callbacks.Callback]:
    """Early stopping (train.early_stopping_patience, after `early_stopping_start`) and, for schedule `plateau`, the
    reduction on plateaus. `initial_epoch`: where the stage starts in the epochs numbered across stages."""
    tc = config.train
    callbacks: list[keras.callbacks.Callback] = []
    if tc.early_stopping_patience > 0:
        start = initial_epoch + early_stopping_start(config, stage)
        callbacks.append(keras.callbacks.EarlyStopping(tc.monitor, patience=tc.early_stopping_patience, mode=monitor_mode(tc.monitor), start_from_epoch=start))
    if stage.schedule.name == "plateau":
        rate = stage.schedule.decay_rate if stage.schedule.decay_rate is not None else 0.1
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                tc.monitor, factor=rate, patience=stage.schedule.patience, min_lr=stage.schedule.min_lr, mode=monitor_mode(tc.monitor)
            )
        )
    return callbacks


def fit_stages(
    model: keras.Model,
    config: Config,
    stages: Sequence[Stage],
    datasets: Datasets,
    data: PreparedData,
    *,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    stage_callbacks: Callable[[Stage], list[keras.callbacks.Callback]] | None = None,
    restore_best: Callable[[], None] | None = None,
    finished: Callable[[Stage], int | None] | None = None,
    initial_epoch: int = 0,
    time_limit: TimeLimit | None = None,
) -> dict[str, int]:
    """One `model.fit` per stage on `datasets` (made from `data`, which gives the class weights and label type),
    epochs numbered across stages; returns the epochs each stage ran.

    `stage_callbacks(stage)` adds a caller's per-stage callbacks before `callbacks` and the standard ones (early
    stopping, plateau); `restore_best()` loads the best weights so far before stage 2; `finished(stage)` returns the
    last epoch of a stage that an interrupted run already finished (it is skipped), or None. `time_limit` stops
    the fit at the end of the epoch that passes it, and a later stage that would start after it does not. The training
    recipe of the config (MixUp, CutMix, weight EMA, progressive resizing) is applied here, to every caller's fit."""
    strategy = strategy or tf.distribute.get_strategy()
    epoch, stage_epochs = initial_epoch, {}
    for stage in stages:
        last = finished(stage) if finished else None
        if last is not None:
            stage_epochs[stage.name], epoch = last - epoch, last
            continue
        if time_limit is not None and time_limit.passed() and stage_epochs:  # a later stage; the first always trains
            stage_epochs[stage.name] = 0
            continue
        set_trainable(model, stage, config)
        if stage.name != "train" and restore_best is not None:
            restore_best()  # stage 2 starts from the best weights of stage 1
        fitted, train_data, val_data, recipe = _stage_inputs(model, config, stage, datasets, data, epoch, strategy.num_replicas_in_sync)
        with strategy.scope():
            compile_model(fitted, config, stage.lr, data.multilabel)
        stage_cbs = _ordered([*(stage_callbacks(stage) if stage_callbacks else []), *callbacks, *standard_callbacks(config, stage, epoch)], config, recipe)
        stage_cbs += [time_limit] if time_limit is not None else []
        check_plateau_callbacks(stage_cbs, fitted.optimizer, stage.schedule.name)
        keras_compat.reset_initial_epoch(fitted)  # a restore in an earlier stage's fit must not carry over
        history = fitted.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=epoch,
            epochs=epoch + stage.epochs,
            class_weight=data.class_weight,
            callbacks=stage_cbs,
            verbose=config.train.verbose,
            shuffle=False,  # the dataset shuffles
        )
        restored = keras_compat.resumed_epoch(fitted)  # where BackupAndRestore resumed this stage, if it did
        if history.epoch:
            last = history.epoch[-1] + 1
        else:  # resumed after its last epoch was saved but before the stage was marked done: nothing left to run
            last = restored if restored is not None else epoch
        stage_epochs[stage.name], epoch = last - epoch, last
    return stage_epochs


def _stage_inputs(
    model: keras.Model, config: Config, stage: Stage, datasets: Datasets, data: PreparedData, first_epoch: int, replicas: int
) -> tuple[keras.Model, tf.data.Dataset, tf.data.Dataset | None, list[keras.callbacks.Callback]]:
    """(model fitted, training batches, validation batches, the recipe's callbacks) of a stage: the head alone on
    features computed once (a frozen backbone's stage 1), or the model on images with the training recipe."""
    if uses_cached_features(model, config, stage.name, replicas):
        return (*head_on_features(model, config, data, datasets), [])
    train_data, recipe = _with_recipe(datasets.train, config, data, stage, first_epoch)
    return model, train_data, datasets.val, recipe


def _with_recipe(
    train_data: tf.data.Dataset, config: Config, data: PreparedData, stage: Stage, first_epoch: int
) -> tuple[tf.data.Dataset, list[keras.callbacks.Callback]]:
    """The training batches of a stage fitted on images, mixed (train.mixup, train.cutmix) and, in stage 1, resized
    progressively (train.progressive_from, with the callback that sets each epoch's size)."""
    tc = config.train
    train_data = mix_batches(train_data, data.num_classes, data.multilabel, tc.mixup, tc.cutmix, config.seed)
    if stage.name != "train" or tc.progressive_from is None:
        return train_data, []
    resizing = ProgressiveResizing(config, stage.epochs, first_epoch)
    return resizing.resize(train_data), [resizing]


def _ordered(callbacks: list[keras.callbacks.Callback], config: Config, recipe: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    """`callbacks` with the recipe's first and, with train.ema, Keras' SwapEMAWeights after BackupAndRestore (which
    then saves the raw weights and their average, as they are) and before everything else, so that validation,
    checkpoints and the best weights kept all see the averaged weights."""
    if config.train.ema is None:
        return [*recipe, *callbacks]
    backups = [cb for cb in callbacks if isinstance(cb, keras.callbacks.BackupAndRestore)]
    others = [cb for cb in callbacks if not isinstance(cb, keras.callbacks.BackupAndRestore)]
    return [*recipe, *backups, keras.callbacks.SwapEMAWeights(swap_on_epoch=True), *others]
