"""From a DataConfig to ImageSets and tf.data datasets: the one place that maps config options onto pipelines/."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import albumentations as A
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from app.config import Config, ConfigError, DataConfig
from pipelines.augment import build_transform
from pipelines.batches import decode_hint, keep_rows
from pipelines.errors import DataError
from pipelines.images import check_images
from pipelines.memory import check_room, shared_array
from pipelines.sources import ImageSet, from_csv, from_folder, from_sample_submission, unlabeled_folder
from pipelines.split import kfold_splits, train_val_split
from pipelines.tfdata import Pipeline, decode_all, make_dataset
from pipelines.workers import auto_workers

log = logging.getLogger(__name__)


def _default_images(csv: Path, folder_name: str) -> Path:
    """Kaggle layout: `train.csv` beside `train/`, `sample_submission.csv` beside `test/`; else the CSV's folder."""
    beside = csv.parent / folder_name
    return beside if beside.is_dir() else csv.parent


def load_labeled(path: str, images: str | None, cfg: DataConfig, class_names: Sequence[str] | None = None) -> ImageSet:
    """A labeled set from a folder-per-class tree or a CSV, per the config's column options."""
    source = Path(path)
    if source.suffix.lower() != ".csv":
        return from_folder(source, class_names=class_names)
    return from_csv(
        source,
        Path(images) if images else _default_images(source, "train"),
        id_column=cfg.id_column,
        label_column=None if cfg.label_columns else cfg.label_column,
        label_columns=cfg.label_columns or None,
        path_column=cfg.path_column,
        extension=cfg.extension,
        class_names=class_names,
        multilabel=cfg.multilabel,
        label_separator=cfg.label_separator,
    )


def load_unlabeled(path: str, images: str | None, cfg: DataConfig) -> ImageSet:
    """A test set: a folder of images, or the rows of a sample_submission.csv (images from `images` or `test/`)."""
    source = Path(path)
    if source.suffix.lower() != ".csv":
        return unlabeled_folder(source)
    return from_sample_submission(source, Path(images) if images else _default_images(source, "test"), extension=cfg.extension)


def load_train_val(cfg: DataConfig, seed: int) -> tuple[ImageSet, ImageSet]:
    """Training and validation sets: the given validation set, fold `data.fold` of `data.folds` seeded stratified
    folds, or a seeded stratified split of the training set."""
    if not cfg.train:
        raise DataError(
            "no training data configured. "
            "Fix: set data.train to a folder of class sub-folders or a CSV: imgclf train DATA, or --set data.train=DATA (docs/data.md)."
        )
    train = load_labeled(cfg.train, cfg.train_images, cfg)
    if cfg.val:
        return train, load_labeled(cfg.val, cfg.val_images, cfg, class_names=train.class_names)
    if cfg.folds:
        if cfg.fold is None:
            raise DataError(
                f"data.folds={cfg.folds} but no data.fold: which fold is this run's validation set? "
                f"Fix: set data.fold (1..{cfg.folds}), or run `imgclf cv` to train every fold"
            )
        train_idx, val_idx = kfold_splits(train.labels, cfg.folds, seed)[cfg.fold - 1]
        return train.subset(train_idx), train.subset(val_idx)
    train_idx, val_idx = train_val_split(train.labels, cfg.val_fraction, seed)
    return train.subset(train_idx), train.subset(val_idx)


def evaluation_set(config: Config, class_names: Sequence[str], data: str | None = None, images: str | None = None) -> ImageSet:
    """The labeled images a finished run is scored on: `data` (a folder or CSV; `images`, a CSV's image folder) in
    the run's class order, or else the run's own validation split, re-derived from its config and seed."""
    if data:
        return load_labeled(data, images, config.data, class_names=class_names)
    return load_train_val(config.data, config.seed)[1]


def load_test(cfg: DataConfig, path: str | None = None, images: str | None = None) -> ImageSet:
    """The test set from `path` (default data.test). Its images come from `images`; data.test_images belongs to
    data.test alone: another CSV reads the `test/` folder beside it (or its own folder)."""
    own = not path or path == cfg.test
    path = path or cfg.test
    if not path:
        raise DataError("no test set given. Fix: set data.test to a folder of images or a sample_submission.csv, or pass --test.")
    return load_unlabeled(path, images or (cfg.test_images if own else None), cfg)


def prepare(images: ImageSet, cfg: DataConfig, shared: bool = False) -> tuple[ImageSet, np.ndarray | None]:
    """Decode every image once up front: build the cache (`data.cache`) or just check the files (`data.check_images`).

    The cache is checked against the memory available first, and decoded straight into shared memory when worker
    processes will read it (`shared`), so that it is held once. An unreadable file stops with its name and the fix,
    or, with `data.skip_bad_images`, is left out and reported.
    """
    size = (cfg.image_size, cfg.image_size)
    if cfg.cache:
        shape = (len(images), *size, 3)
        check_room(
            int(np.prod(shape)), f"data.cache ({len(images):,} images at {cfg.image_size} px, decoded)",
            fix="data.cache: false (the files are decoded each epoch instead), or a smaller data.image_size.",
        )  # fmt: skip
        cache, result = decode_all(images.paths, size, out=shared_array(shape) if shared else None)
    elif cfg.check_images:
        cache, result = None, check_images(images.paths, size_hint=decode_hint(size))
    else:
        return images, None
    if result.num_bad == 0:
        return images, cache
    if not cfg.skip_bad_images:
        more = f" ({result.num_bad - 1} more unreadable file(s) in this set)" if result.num_bad > 1 else ""
        raise DataError(result.errors[0] + more)
    for message in result.errors:
        log.warning("skipped: %s", message)
    log.warning("skipped %d unreadable image(s) of %d", result.num_bad, len(images))
    return images.without(result.ok, result.errors), None if cache is None else keep_rows(cache, result.ok)


def training_workers(cfg: DataConfig, num_images: int) -> tuple[int, str]:
    """Worker processes for a training set (0: TensorFlow's threads) and why: data.workers, or when unset the faster
    way for this size, cache and machine (pipelines.workers.auto_workers)."""
    if cfg.workers is not None:  # >= 0: checked when the config loads
        return cfg.workers, f"{f'{cfg.workers} worker processes' if cfg.workers else 'threads'}: data.workers={cfg.workers}"
    return auto_workers(num_images, cfg.image_size, cfg.cache)


def make_tf_dataset(
    images: ImageSet,
    cfg: DataConfig,
    augment: str | A.BaseCompose,
    *,
    training: bool,
    seed: int,
    cache: np.ndarray | None = None,
    drop_remainder: bool = False,
    workers: int = 0,
) -> Pipeline:
    """Batches for `model.fit` / `predict` (the pipeline's `dataset`): augmented and shuffled when `training`, else in
    order. `augment` is a preset or file name (pipelines.augment.build_transform) or an Albumentations pipeline.
    Use it in a `with` block: worker processes (`workers` > 0) stop there, and an image that fails mid-way is one
    DataError."""
    size = (cfg.image_size, cfg.image_size)
    transform = build_transform(augment, size) if isinstance(augment, str) else augment
    return make_dataset(
        images, size, cfg.batch_size, transform=transform, shuffle=training, seed=seed, cache=cache, drop_remainder=drop_remainder, workers=workers
    )


def class_weights(labels: np.ndarray, class_names: Sequence[str], spec: str | Mapping[str, float] | None, multilabel: bool = False) -> dict[int, float] | None:
    """`model.fit(class_weight=...)` from the config: None, "balanced" (n / (k * count), scikit-learn's formula)
    or a {class name: weight} mapping (unlisted classes weigh 1). A statistic of the training labels, computed (and
    its class names checked) with them, before any image is decoded."""
    if spec is None:
        return None
    if multilabel:
        raise ConfigError("train.class_weight works for single-label data only. Fix: set train.class_weight=null for multi-label sets.")
    if isinstance(spec, str):
        if spec != "balanced":
            raise ConfigError(f"train.class_weight={spec!r}: expected balanced, a mapping {{class: weight}}, or null")
        present = np.unique(labels)
        weights = compute_class_weight("balanced", classes=present, y=labels)
        return {int(c): float(w) for c, w in zip(present, weights)}
    unknown = sorted(set(spec) - set(class_names))
    if unknown:
        raise ConfigError(f"train.class_weight names unknown class(es) {unknown}. Fix: use the class names {', '.join(class_names)}")
    bad = {k: v for k, v in spec.items() if not v > 0}
    if bad:
        raise ConfigError(f"train.class_weight: weights must be > 0, got {bad}")
    return {i: float(spec.get(name, 1.0)) for i, name in enumerate(class_names)}


@dataclass
class PreparedData:
    """The training and validation sets of a config, checked or decoded once, with their class weights: what every
    fit needs (train, the LR finder, each trial of a search). Datasets are made from it as often as needed."""

    train: ImageSet
    val: ImageSet | None
    train_cache: np.ndarray | None
    val_cache: np.ndarray | None
    class_weight: dict[int, float] | None

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def multilabel(self) -> bool:
        return self.train.multilabel

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.train) / batch_size)


def _require_every_class(images: ImageSet) -> None:
    """After unreadable images were skipped, every class must keep at least one training image: a class without
    any would be trained as if it never occurs, and reported with support 0."""
    if images.labels is None or not images.skipped:
        return
    labels = np.asarray(images.labels)
    counts = labels.sum(axis=0) if images.multilabel else np.bincount(labels, minlength=images.num_classes)
    empty = [name for name, count in zip(images.class_names, counts) if count == 0]
    if empty:
        shown = ", ".join(repr(n) for n in empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        raise DataError(
            f"class {shown} has no readable training image left ({len(images.skipped)} unreadable image(s) skipped: see the log). "
            "Fix: replace those images, or remove the class (its folder, or its rows and column)."
        )


def prepare_data(config: Config, with_val: bool = True) -> PreparedData:
    """Load and split the sets of `config`, decode (data.cache) or check every image once, compute class weights."""
    train_set, val_set = load_train_val(config.data, config.seed)
    shared = config.data.cache and training_workers(config.data, len(train_set))[0] > 0  # the workers will read the cache
    train_set, train_cache = prepare(train_set, config.data, shared=shared)
    _require_every_class(train_set)
    val_cache = None
    if with_val:
        val_set, val_cache = prepare(val_set, config.data)
    weights = class_weights(train_set.labels, train_set.class_names, config.train.class_weight, train_set.multilabel)
    return PreparedData(train_set, val_set if with_val else None, train_cache, val_cache, weights)


@dataclass
class Datasets:
    """The `tf.data` inputs of one fit, `train` and `val` as fed to `fit`, and the pipelines that make them: used as
    a `with` block, which stops worker processes and turns an image failing mid-fit into its DataError."""

    train: tf.data.Dataset
    val: tf.data.Dataset | None
    pipelines: contextlib.ExitStack  # each Pipeline entered: closed, or abandoned on an error, in reverse order

    def close(self) -> None:
        self.pipelines.close()

    def __enter__(self) -> Datasets:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        return self.pipelines.__exit__(kind, exc, tb)


def make_datasets(config: Config, data: PreparedData, strategy: tf.distribute.Strategy | None = None) -> Datasets:
    """Training batches (augmented, shuffled, from worker processes per data.workers) and validation batches.

    With several replicas only whole batches are made: Keras 3.15's fit/evaluate under MirroredStrategy fail on a
    short last batch that splits unevenly (AddN shape error); the final metrics (predict) still use every image."""
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    whole = replicas > 1
    val_set = data.val
    if whole and min(len(data.train), len(val_set) if val_set is not None else math.inf) < config.data.batch_size:
        raise ConfigError(
            f"with {replicas} replicas every batch must be whole, and the training or validation set "
            f"is smaller than one batch of {config.data.batch_size}. Fix: lower data.batch_size."
        )
    if whole and val_set is not None and len(val_set) % config.data.batch_size:
        left_out = len(val_set) % config.data.batch_size
        log.info("%d validation images are left out of the per-epoch scores (whole batches on %d replicas)", left_out, replicas)
    pipelines = contextlib.ExitStack()
    val_ds = None
    if val_set is not None:
        val_ds = pipelines.enter_context(
            make_tf_dataset(val_set, config.data, config.augment.eval, training=False, seed=config.seed, cache=data.val_cache, drop_remainder=whole)
        ).dataset
    workers, why = training_workers(config.data, len(data.train))
    log.info("training batches from %s", why)
    train_ds = pipelines.enter_context(
        make_tf_dataset(
            data.train, config.data, config.augment.train, training=True, seed=config.seed, cache=data.train_cache, drop_remainder=whole, workers=workers
        )
    ).dataset
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds = train_ds.with_options(options)
        val_ds = val_ds.with_options(options) if val_ds is not None else None
    return Datasets(train_ds, val_ds, pipelines)
