"""What `model.compile` gets: the optimizer, the loss (with label smoothing) and metrics; and class weights for `fit`."""

from __future__ import annotations

import keras
from keras import ops

from app.config import ConfigError
from app.training.schedules import Schedule

OPTIMIZERS = ("adam", "adamw", "sgd")
NO_DECAY = ["bias", "gamma", "beta"]  # biases and BatchNorm scales/offsets are not weight-decayed (as in timm)


def make_optimizer(name: str, learning_rate: float | Schedule, weight_decay: float | None = None, momentum: float = 0.9) -> keras.optimizers.Optimizer:
    """Adam, AdamW (decoupled weight decay, 0.004 by default) or SGD with Nesterov momentum."""
    if name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=weight_decay or None)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=0.004 if weight_decay is None else weight_decay)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay or None)
    else:
        raise ConfigError(f"unknown optimizer {name!r}. Fix: set train.optimizer to one of {', '.join(OPTIMIZERS)}")
    if optimizer.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    return optimizer


@keras.saving.register_keras_serializable(package="imgclf")
class SparseCategoricalCrossentropySmoothed(keras.losses.Loss):
    """Cross-entropy from integer labels with label smoothing (Keras' sparse loss has no smoothing option)."""

    def __init__(self, label_smoothing: float = 0.1, name: str = "sparse_categorical_crossentropy_smoothed", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(onehot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def make_loss_and_metrics(multilabel: bool, label_smoothing: float = 0.0) -> tuple[keras.losses.Loss, list[keras.metrics.Metric]]:
    """Softmax cross-entropy with accuracy, or per-class binary cross-entropy with accuracy and AUC for multi-label."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {label_smoothing}")
    if multilabel:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing), [
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(multi_label=True, name="auc"),
        ]
    loss = SparseCategoricalCrossentropySmoothed(label_smoothing) if label_smoothing else keras.losses.SparseCategoricalCrossentropy()
    return loss, [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
