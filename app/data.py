"""From a DataConfig to ImageSets and tf.data datasets: the one place that maps config options onto pipelines/."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from app.config import DataConfig
from pipelines.augment import build_transform
from pipelines.errors import DataError
from pipelines.images import check_images
from pipelines.sources import ImageSet, from_csv, from_folder, from_sample_submission, unlabeled_folder
from pipelines.split import train_val_split
from pipelines.tfdata import decode_all, make_dataset

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
    """Training and validation sets: the given validation set, or a seeded stratified split of the training set."""
    if not cfg.train:
        raise DataError("no training data configured. Fix: set data.train to a folder of class sub-folders or a CSV (see README).")
    train = load_labeled(cfg.train, cfg.train_images, cfg)
    if cfg.val:
        return train, load_labeled(cfg.val, cfg.val_images, cfg, class_names=train.class_names)
    train_idx, val_idx = train_val_split(train.labels, cfg.val_fraction, seed)
    return train.subset(train_idx), train.subset(val_idx)


def load_test(cfg: DataConfig, path: str | None = None, images: str | None = None) -> ImageSet:
    """The test set from `path` (default data.test)."""
    path = path or cfg.test
    if not path:
        raise DataError("no test set given. Fix: set data.test to a folder of images or a sample_submission.csv, or pass --test.")
    return load_unlabeled(path, images or cfg.test_images, cfg)


def prepare(images: ImageSet, cfg: DataConfig) -> tuple[ImageSet, np.ndarray | None]:
    """Decode every image once up front: build the cache (`data.cache`) or just check the files (`data.check_images`).

    An unreadable file stops with its name and the fix, or, with `data.skip_bad_images`, is left out and reported.
    """
    size = (cfg.image_size, cfg.image_size)
    if cfg.cache:
        cache, result = decode_all(images.paths, size)
    elif cfg.check_images:
        cache, result = None, check_images(images.paths, size_hint=2 * cfg.image_size)
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
    return images.without(result.ok, result.errors), None if cache is None else cache[result.ok]


AUTO_WORKERS_MIN_IMAGES = 2000  # below this, starting worker processes (about 2 s) costs more than it saves


def training_workers(cfg: DataConfig, num_images: int) -> int:
    """Worker processes for a training set: data.workers, or when unset one per usable core for large sets."""
    if cfg.workers is not None:
        if cfg.workers < 0:
            raise DataError(f"data.workers={cfg.workers}: expected 0 (threads in this process), a positive count, or null for automatic")
        return cfg.workers
    return len(os.sched_getaffinity(0)) if num_images >= AUTO_WORKERS_MIN_IMAGES else 0


def make_tf_dataset(
    images: ImageSet,
    cfg: DataConfig,
    augment: str,
    *,
    training: bool,
    seed: int,
    cache: np.ndarray | None = None,
    drop_remainder: bool = False,
    workers: int = 0,
) -> tf.data.Dataset:
    """Batches for `model.fit` / `predict`: augmented and shuffled when `training`, else in order.

    With `workers` > 0 the batches come from worker processes (same batches): close `dataset.worker_pool` when done."""
    size = (cfg.image_size, cfg.image_size)
    transform = build_transform(augment, size)
    return make_dataset(
        images, size, cfg.batch_size, transform=transform, shuffle=training, seed=seed, cache=cache, drop_remainder=drop_remainder, workers=workers
    )


def close_workers(dataset: tf.data.Dataset) -> None:
    """Stop the worker processes of a dataset made with workers > 0 (no-op otherwise)."""
    pool = getattr(dataset, "worker_pool", None)
    if pool is not None:
        pool.close()
