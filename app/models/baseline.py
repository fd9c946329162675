"""The baseline CNN: blocks of conv -> BN -> ReLU (repeated) then pooling, global average pooling, dropout, dense head.

Each block's `filters`, `kernel_size`, `strides` (and `repeats`, `pool`) are exactly what the tuner searches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import layers

from app.config import DEFAULT_BLOCKS, ConfigError, ConvBlock
from app.models.geometry import POOL_SIZE

__all__ = ["ConvBlock", "make_baseline_cnn"]


def batch_norm(name: str) -> layers.BatchNormalization:
    """BatchNormalization for models trained from scratch: momentum 0.9, whose moving statistics settle within tens
    of steps (Keras' 0.99 leaves them near their start on short runs over small sets). Built for several replicas
    (inside a tf.distribute scope), it normalises with the statistics of the global batch, so that data-parallel
    training takes the steps one process would on the same batches."""
    return layers.BatchNormalization(momentum=0.9, synchronized=tf.distribute.get_strategy().num_replicas_in_sync > 1, name=name)


def make_baseline_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    multilabel: bool = False,
    blocks: Sequence[ConvBlock | Mapping[str, Any] | Sequence[int]] = DEFAULT_BLOCKS,
    dropout: float = 0.3,
    name: str = "baseline_cnn",
) -> keras.Model:
    """A conv-pool CNN over uint8 images; softmax head, or sigmoid for multi-label."""
    parsed = [ConvBlock.parse(b) for b in blocks]
    if not parsed:
        raise ConfigError("the baseline CNN needs at least one conv block")
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for b, block in enumerate(parsed, start=1):
        for r in range(1, block.repeats + 1):
            x = layers.Conv2D(
                block.filters, block.kernel_size, strides=block.strides if r == 1 else 1, padding="same", use_bias=False, name=f"block{b}_conv{r}"
            )(x)
            x = batch_norm(f"block{b}_bn{r}")(x)
            x = layers.ReLU(name=f"block{b}_relu{r}")(x)
        if block.pool != "none" and min(x.shape[1], x.shape[2]) >= POOL_SIZE:  # app.models.geometry mirrors this rule
            pool = layers.MaxPooling2D if block.pool == "max" else layers.AveragePooling2D
            x = pool(POOL_SIZE, name=f"block{b}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="sigmoid" if multilabel else "softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)
