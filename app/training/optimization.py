"""What `model.compile` gets: the optimizer, the loss (with label smoothing) and metrics; and class weights for `fit`."""

from __future__ import annotations

import keras
from keras import ops

from app.config import ConfigError
from app.training.schedules import Schedule

OPTIMIZERS = ("adam", "adamw", "sgd")
NO_DECAY = ["bias", "gamma", "beta"]  # biases and BatchNorm scales/offsets are not weight-decayed (as in timm)


def make_optimizer(
    name: str, learning_rate: float | Schedule, weight_decay: float | None = None, momentum: float = 0.9, ema: float | None = None
) -> keras.optimizers.Optimizer:
    """Adam, AdamW (decoupled weight decay, 0.004 by default) or SGD with Nesterov momentum; with `ema`, keeping an
    exponential moving average of the weights at that momentum per step (Keras' use_ema)."""
    averaging = {"use_ema": True, "ema_momentum": ema} if ema is not None else {}
    if name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=weight_decay or None, **averaging)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=0.004 if weight_decay is None else weight_decay, **averaging)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay or None, **averaging)
    else:
        raise ConfigError(f"unknown optimizer {name!r}. Fix: set train.optimizer to one of {', '.join(OPTIMIZERS)}")
    if optimizer.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    return optimizer


def _as_vectors(y_true, y_pred):
    """Label vectors as they are; class numbers ([B] or [B, 1]) as one-hot vectors. Decided on static shapes."""
    classes = y_pred.shape[-1]
    if len(y_true.shape) == 2 and y_true.shape[-1] == classes and classes > 1:
        return ops.cast(y_true, y_pred.dtype)
    return ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1], dtype=y_pred.dtype)


@keras.saving.register_keras_serializable(package="imgclf")
class CrossentropyOfAnyLabels(keras.losses.Loss):
    """Softmax cross-entropy from label vectors (soft, mixed) or class numbers, with label smoothing."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "crossentropy_of_any_labels", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return keras.losses.categorical_crossentropy(_as_vectors(y_true, y_pred), y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="imgclf")
class SparseCategoricalCrossentropySmoothed(CrossentropyOfAnyLabels):
    """Cross-entropy from integer labels with label smoothing (Keras' sparse loss has no smoothing option): the same
    loss under the name runs have compiled and saved it with."""

    def __init__(self, label_smoothing: float = 0.1, name: str = "sparse_categorical_crossentropy_smoothed", **kwargs):
        super().__init__(label_smoothing=label_smoothing, name=name, **kwargs)


def accuracy_of_any_labels(y_true, y_pred):
    """Top-1 accuracy against the largest entry of a label vector, or against a class number."""
    return keras.metrics.categorical_accuracy(_as_vectors(y_true, y_pred), y_pred)


def make_loss_and_metrics(multilabel: bool, label_smoothing: float = 0.0, soft_labels: bool = False) -> tuple[keras.losses.Loss, list[keras.metrics.Metric]]:
    """Softmax cross-entropy with accuracy, or per-class binary cross-entropy with accuracy and AUC for multi-label.
    `soft_labels` (MixUp, CutMix): single-label batches may hold label vectors (mixed training batches) as well as
    class numbers (validation, a frozen backbone's features), and loss and accuracy take either."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {label_smoothing}")
    if soft_labels and not multilabel:
        return CrossentropyOfAnyLabels(label_smoothing), [keras.metrics.MeanMetricWrapper(accuracy_of_any_labels, name="accuracy")]
    if multilabel:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing), [
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(multi_label=True, name="auc"),
        ]
    loss = SparseCategoricalCrossentropySmoothed(label_smoothing) if label_smoothing else keras.losses.SparseCategoricalCrossentropy()
    return loss, [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
