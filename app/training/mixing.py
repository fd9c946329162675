"""MixUp and CutMix of training batches (`train.mixup`, `train.cutmix`): Keras' own layers, in the tf.data pipeline.

Keras' layers rather than the same arithmetic in the NumPy batch function: they are kept by Keras, tested there,
and take the labels with the images (the batch function never sees labels). They run in a sequential tf.data map
after batching, from seeded generators, so the same seed gives the same batches. Labels become one-hot vectors
(multi-label rows are already vectors: a mixture of two is a soft multi-label target), and images go back to
uint8, as the model expects them. With both set, each batch gets one of the two, drawn at random (timm's switch).

Keras' parameters: MixUp's `alpha` is the Beta distribution's; CutMix's `factor` bounds it, each batch drawing its
alpha in [0, factor]. CutMix weighs the labels by the box's exact area, while the pasted pixels are those of the
grid inside it: the two differ by at most a row and a column of pixels (timm corrects this; Keras does not).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from app.config import Config


def mixes_labels(config: Config) -> bool:
    """Whether training labels are mixed (then the loss takes soft label vectors as well as class numbers)."""
    return config.train.mixup > 0 or config.train.cutmix > 0


def mix_batches(dataset: tf.data.Dataset, num_classes: int, multilabel: bool, mixup: float, cutmix: float, seed: int) -> tf.data.Dataset:
    """`dataset`'s (uint8 images, labels) batches, mixed by MixUp (alpha `mixup`) and/or CutMix (alpha `cutmix`),
    with float label vectors; `dataset` itself when both are 0."""
    layers = []
    if mixup > 0:
        layers.append(keras.layers.MixUp(alpha=mixup, seed=seed))
    if cutmix > 0:
        layers.append(keras.layers.CutMix(factor=cutmix, seed=seed + 1))  # alpha drawn in [0, cutmix] per batch
    if not layers:
        return dataset
    chooser = keras.random.SeedGenerator(seed + 2)

    def mix(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        targets = tf.cast(labels, tf.float32) if multilabel else tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), num_classes)
        data = {"images": images, "labels": targets}
        if len(layers) == 1:
            mixed = layers[0](data, training=True)
        else:
            use_first = keras.random.uniform((), seed=chooser) < 0.5
            mixed = tf.cond(use_first, lambda: layers[0](data, training=True), lambda: layers[1](data, training=True))
        pixels = tf.cast(tf.round(tf.clip_by_value(mixed["images"], 0.0, 255.0)), tf.uint8)
        return tf.ensure_shape(pixels, images.shape), tf.ensure_shape(tf.cast(mixed["labels"], tf.float32), targets.shape)

    return dataset.map(mix).prefetch(tf.data.AUTOTUNE)
