"""Stage 1 of a frozen pretrained backbone, trained on its features computed once (`train.cache_features`).

While the backbone is frozen (BatchNormalization in inference mode), it maps an image to the same pooled features
every epoch. So they are computed once, for the plain image and `train.feature_views` augmented views of each
training image (and for the plain validation images), and the head is fitted alone on them: a head epoch costs
milliseconds instead of a pass of the backbone. Each epoch shows every training image once, as one of its views
drawn at random. The head's layers are the model's own (`split_at_features`), so the model ends stage 1 with the
trained head, and stage 2 fine-tunes on images as before.

The features of the last set computed are kept in memory: the trials of a search that share the backbone, its
weights, the image size, the augmentation and the images (say, a search of the head's dropout, rate and label
smoothing) compute them once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app.config import Config
from app.data import Datasets, PreparedData, make_tf_dataset
from app.models.backbones import find_backbone, split_at_features
from pipelines.memory import check_room

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Features:
    """Pooled backbone features: `train` is (images, 1 + views, channels), the plain image first; `val` is
    (images, channels) or None."""

    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray | None
    val_labels: np.ndarray | None
    seconds: float  # what computing them took


def uses_cached_features(model: keras.Model, config: Config, stage_name: str, replicas: int = 1) -> bool:
    """Stage 1 of a frozen pretrained backbone with `train.cache_features`, in one replica (the features are
    computed by this process alone)."""
    tc = config.train
    return stage_name == "train" and tc.cache_features and tc.freeze_backbone and replicas == 1 and find_backbone(model) is not None


def head_on_features(model: keras.Model, config: Config, data: PreparedData, datasets: Datasets) -> tuple[keras.Model, tf.data.Dataset, tf.data.Dataset | None]:
    """(head model, training batches, validation batches) of features, for `fit` in place of the model and images."""
    extractor, head = split_at_features(model)
    features = compute_features(extractor, config, data, datasets.val)
    train, val = feature_datasets(features, config.data.batch_size, config.seed)
    return head, train, val


_memo: dict[str, Any] = {}  # the last features computed: {"key": ..., "data": PreparedData kept alive, "features": ...}


def _memo_key(config: Config) -> tuple | None:
    """What the features depend on besides the images; None when they cannot be reused (random backbone weights)."""
    if config.model.weights is None:
        return None
    dc, tc = config.data, config.train
    augment = config.augment
    return (config.model.name, str(config.model.weights), dc.image_size, dc.batch_size, augment.train, augment.eval, tc.feature_views, config.seed)


def compute_features(extractor: keras.Model, config: Config, data: PreparedData, val_dataset: tf.data.Dataset | None) -> Features:
    """The features of every training image (plain, then each augmented view) and validation image, or the
    last ones computed when they are the same."""
    key = _memo_key(config)
    if key is not None and _memo.get("key") == key and _memo.get("data") is data:
        log.info("backbone features: reused from the last fit")
        return _memo["features"]
    started = time.perf_counter()
    views = 1 + config.train.feature_views
    channels = int(extractor.output.shape[-1])
    check_room(
        4 * channels * (views * len(data.train) + (len(data.val) if data.val is not None else 0)),
        f"the backbone features ({len(data.train):,} images x {views} views x {channels} channels)",
        fix="fewer train.feature_views, or train.cache_features: false (the backbone then runs every epoch).",
    )
    train = np.empty((len(data.train), views, channels), dtype=np.float32)
    for view in range(views):
        augment = config.augment.eval if view == 0 else config.augment.train
        with make_tf_dataset(data.train, config.data, augment, training=False, seed=config.seed + view, cache=data.train_cache) as images:
            train[:, view] = extractor.predict(images.dataset, verbose=0)
        log.info("backbone features: view %d of %d of %d training images", view + 1, views, len(data.train))
    val = None if val_dataset is None else np.asarray(extractor.predict(val_dataset, verbose=0), dtype=np.float32)
    features = Features(train, data.train.labels, val, None if data.val is None else data.val.labels, time.perf_counter() - started)
    log.info("backbone features computed in %.1f s", features.seconds)
    _memo.clear()
    if key is not None:
        _memo.update(key=key, data=data, features=features)
    return features


def feature_datasets(features: Features, batch_size: int, seed: int) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """Training batches (shuffled; each image as one of its views, drawn at random each epoch) and validation
    batches (in order), both a function of `seed` and the epoch alone."""
    table = tf.constant(features.train)
    labels = tf.constant(features.train_labels)
    count, views = features.train.shape[:2]
    order = tf.data.Dataset.range(count).shuffle(count, seed=seed, reshuffle_each_iteration=True)
    pick = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(lambda r: tf.math.floormod(r, views))

    def gather(index: tf.Tensor, view: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather_nd(table, tf.stack([index, view], axis=1)), tf.gather(labels, index)

    train = tf.data.Dataset.zip(order, pick).batch(batch_size).map(gather).prefetch(tf.data.AUTOTUNE)
    val = None
    if features.val is not None:
        val = tf.data.Dataset.from_tensor_slices((features.val, features.val_labels)).batch(batch_size)
    return train, val


def clear_features() -> None:
    """Forget the features kept for reuse (their memory is freed)."""
    _memo.clear()
