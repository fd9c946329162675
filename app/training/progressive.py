"""Progressive resizing (`train.progressive_from`): stage 1 trains on small images first and full-size ones last.

The epochs of stage 1 are cut into `train.progressive_phases` equal shares whose image sizes are evenly spaced from
`train.progressive_from` to `data.image_size` (FixRes, EfficientNetV2, fast.ai): early epochs cost a fraction of a
full-size one, and the last share fits the network to the size it will see. The training batches are made at full
size and shrunk in tf.data (area filter) to the size a variable holds; a callback sets that variable at each
epoch's start, so a resumed run picks the right size up again. Validation stays at full size, so every epoch's score
is comparable and the best-epoch checkpoint is a full-size model; while the sizes vary, the model's (and a
backbone's) input-shape check is lifted, and put back at the end of the stage.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from app.config import Config


def phase_sizes(start: int, final: int, phases: int) -> list[int]:
    """Evenly spaced image sizes from `start` to `final` (multiples of 4 between the two ends)."""
    inner = [round((start + (final - start) * k / (phases - 1)) / 4) * 4 for k in range(1, phases - 1)]
    return [start, *inner, final]


def epoch_sizes(epochs: int, sizes: list[int]) -> list[int]:
    """The image size of each of a stage's `epochs`: about equal shares per size, counted from the last epoch (which
    is always at full size), so that later sizes take any remainder and a short stage drops the smallest sizes."""
    n = len(sizes)
    return [sizes[n - 1 - (epochs - 1 - epoch) * n // epochs] for epoch in range(epochs)]


def stage_sizes(config: Config, epochs: int) -> list[int]:
    """The training image size of each of stage 1's `epochs`: data.image_size throughout, or, with
    train.progressive_from, the sizes progressive resizing trains them at."""
    full = config.data.image_size
    if config.train.progressive_from is None:
        return [full] * epochs
    return epoch_sizes(epochs, phase_sizes(config.train.progressive_from, full, config.train.progressive_phases))


class ProgressiveResizing(keras.callbacks.Callback):
    """Holds the training image size of the current epoch; `resize(dataset)` shrinks batches to it."""

    def __init__(self, config: Config, stage_epochs: int, first_epoch: int = 0):
        super().__init__()
        self.full = config.data.image_size
        self.first_epoch = first_epoch
        self.sizes = stage_sizes(config, stage_epochs)
        self.size = tf.Variable(self.sizes[0], dtype=tf.int32, trainable=False, name="progressive_size")
        self.seen: list[int] = []  # the size of each epoch run, for tests and logs
        self._specs: dict[int, object] = {}

    def resize(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        full, size = self.full, self.size

        def shrink(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            smaller = tf.cast(tf.round(tf.image.resize(images, tf.stack([size, size]), method="area")), tf.uint8)
            return tf.cond(tf.equal(size, full), lambda: images, lambda: smaller), labels

        return dataset.map(shrink).prefetch(tf.data.AUTOTUNE)

    def on_train_begin(self, logs: dict | None = None) -> None:
        for layer in _functional(self.model):  # shapes vary: lift each Functional's input check while they do
            self._specs[id(layer)] = layer.input_spec
            layer.input_spec = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        index = min(max(0, epoch - self.first_epoch), len(self.sizes) - 1)
        self.size.assign(self.sizes[index])
        self.seen.append(self.sizes[index])

    def on_train_end(self, logs: dict | None = None) -> None:
        for layer in _functional(self.model):
            if id(layer) in self._specs:
                layer.input_spec = self._specs[id(layer)]
        self.size.assign(self.full)


def _functional(model: keras.Model) -> list[keras.Model]:
    """`model` and every model nested in it (a backbone), each of which checks its input shape."""
    found, pending = [], [model]
    while pending:
        layer = pending.pop()
        if isinstance(layer, keras.Model):
            found.append(layer)
            pending.extend(layer.layers)
    return found
